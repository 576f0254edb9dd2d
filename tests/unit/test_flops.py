"""The analytic FLOP counter (MFU numerator) against XLA's own count of the compiled forward."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from dsvl_jax.model.params import abstract_params
from dsvl_jax.model.sizes import model_config
from dsvl_jax.model.vlm import DeepseekVL
from dsvl_jax.train.metrics import forward_flops, step_flops

B, T = 2, 128


@pytest.fixture(scope="module")
def cfg():
    c = model_config("tiny")
    # Matmul-dominated widths so elementwise work (which XLA also counts) stays small.
    return dataclasses.replace(
        c,
        scan_layers=False,  # cost_analysis counts a scan body once
        llm=dataclasses.replace(
            c.llm, hidden=256, heads=4, kv_heads=2, head_dim=64, mlp_dim=512, vocab_size=1024
        ),
        siglip=dataclasses.replace(c.siglip, width=512, heads=2, mlp_dim=2048),
        sam=dataclasses.replace(c.sam, width=512, heads=2, mlp_dim=2048),
    )


def _xla_flops(fn, *args) -> float:
    return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


def test_llm_forward_flops_match_xla(cfg):
    p = abstract_params(cfg)
    ids = jax.ShapeDtypeStruct((B, T), jnp.int32)

    def f(p, ids):
        pos = jnp.broadcast_to(jnp.arange(T), (B, T))
        return DeepseekVL(cfg).apply({"params": p}, ids, pos, jnp.ones((B, T), jnp.int32))[0]

    xla = _xla_flops(f, p, ids)
    ours = forward_flops(cfg, B, T, 1)["llm"]
    l = cfg.llm
    # XLA computes the masked half too
    masked_half = 2.0 * B * T * T * l.heads * l.head_dim * l.layers
    assert ours + masked_half == pytest.approx(xla, rel=0.02)


def test_tower_forward_flops_match_xla(cfg):
    p = abstract_params(cfg)
    px = jax.ShapeDtypeStruct((B, 32, 32, 3), jnp.float32)
    hp = jax.ShapeDtypeStruct((B, 64, 64, 3), jnp.float32)

    def f(p, px, hp):
        m = DeepseekVL(cfg)
        return m.apply({"params": p}, px, hp, method=m.encode_images)

    xla = _xla_flops(f, p, px, hp)
    fwd = forward_flops(cfg, B, 0, 1)
    ours = fwd["siglip"] + fwd["sam_trunk"] + fwd["sam_adaptor"] + fwd["adaptor"]
    # The analytic count is matmuls/convs only; LayerNorm, GELU, softmax and the bilinear resize are
    # ~2-3% of XLA's count at this width.
    assert ours == pytest.approx(xla, rel=0.04)
    assert ours < xla


def test_step_flops_follow_the_trainable_set():
    c = model_config("7b")
    fwd = forward_flops(c, 1, 4096, 1)
    s1 = step_flops(c, ("adaptor", "sam_adaptor"), 1, 4096)
    s2 = step_flops(c, ("llm", "adaptor", "sam_adaptor"), 1, 4096)
    # Stage 1: frozen towers forward only; the frozen LLM still back-propagates into the adaptor (2x).
    assert s1 == pytest.approx(
        fwd["siglip"]
        + fwd["sam_trunk"]
        + 3 * fwd["sam_adaptor"]
        + 3 * fwd["adaptor"]
        + 2 * fwd["llm"]
    )
    assert s2 - s1 == pytest.approx(fwd["llm"])
    # Stage 3 trains SigLIP: its own backward (3x) but no gradient through the parallel, frozen SAM trunk.
    s3 = step_flops(c, ("llm", "adaptor", "sam_adaptor", "siglip"), 1, 4096)
    assert s3 - s2 == pytest.approx(2 * fwd["siglip"])
    # The 7B LLM at 4096 tokens: ~6 * 6.9e9 params * 4096 plus attention.
    assert 6 * 6.9e9 * 4096 < 3 * fwd["llm"] < 6 * 6.9e9 * 4096 * 1.1
