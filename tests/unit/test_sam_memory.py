"""SAM's query-chunked global attention (`model.sam.global_attn_q_chunk`) is the dense path, cheaper in memory.

The chunked path is what makes 7B stage 2 fit v5p-256 at one micro-batch (launch/POD.md): the dense global
blocks hold [images, heads, 4096, 4096] logits. Here, on the `tiny` size in float32 (8x8 grid, one global
block feeding neck_hd), every chunking (1, 2 and 4 grid rows of 8 tokens) must give the dense path's
forward outputs and gradients within atol = rtol = 1e-5 (float32 rounding; observed: <= 8.4e-7 on SAM
features of magnitude 2.6, <= 3e-7 on gradients of magnitude 16). Compiled for a compile-only TPU device,
the chunked program must also need a fraction of the dense one's temporaries, which is the point of it.
"""

import dataclasses
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsvl_jax.errors import ConfigError
from dsvl_jax.model import params as P
from dsvl_jax.model.config import model_config_from_dict
from dsvl_jax.model.sam import rel_pos_attention, rel_pos_rows
from dsvl_jax.model.sizes import model_config, model_config_dict
from dsvl_jax.model.vlm import DeepseekVL
from dsvl_jax.train.optim import group_of

TOL = dict(atol=1e-5, rtol=1e-5)
CHUNKS = (8, 16, 32)  # 1, 2 and 4 grid rows of the tiny 8x8 grid (8, 4 and 2 chunks)


def _cfg(chunk: int, remat: str = "none"):
    cfg = model_config("tiny")
    return dataclasses.replace(
        cfg, remat_policy=remat, sam=dataclasses.replace(cfg.sam, global_attn_q_chunk=chunk)
    )


@pytest.fixture(scope="module")
def setup():
    cfg = _cfg(0)
    assert cfg.sam.grid**2 == 64 and cfg.dtype == "float32"
    flat = P.flatten(P.init_params(cfg, 0))
    # hd_alpha starts at 0, which would hide neck_hd (and its gradients) from every check
    flat["sam/hd_alpha"] = jnp.full_like(flat["sam/hd_alpha"], 0.7)
    r = np.random.default_rng(0)
    px = r.uniform(-1, 1, (3, cfg.siglip.image_size, cfg.siglip.image_size, 3)).astype(np.float32)
    hp = r.normal(size=(3, cfg.sam.image_size, cfg.sam.image_size, 3)).astype(np.float32)
    return flat, jnp.asarray(px), jnp.asarray(hp)


def _encode(cfg, flat, px, hp, method=DeepseekVL.encode_images):
    """Image embeddings [N, 16, 64] through both towers and the adaptor (or `method`'s output)."""
    return DeepseekVL(cfg).apply({"params": P.unflatten(flat)}, px, hp, method=method)


def _sam_grads(cfg, flat, px, hp, groups):
    """Loss and gradients of the parameters in `groups` (the rest closed over, as in the train step)."""
    train = {k: v for k, v in flat.items() if group_of(k) in groups}
    frozen = {k: v for k, v in flat.items() if k not in train}
    w = jax.random.normal(jax.random.key(1), _encode(cfg, flat, px, hp).shape)

    def loss(t):
        return jnp.sum(jnp.sin(_encode(cfg, {**t, **frozen}, px, hp)) * w)

    return jax.jit(jax.value_and_grad(loss))(train)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_rel_pos_attention_chunks_match_dense(chunk):
    b, g, h, d = 2, 8, 2, 16
    ks = jax.random.split(jax.random.key(0), 5)
    q, k, v = (jax.random.normal(ks[i], (b, g, g, h, d)) for i in range(3))
    rh = rel_pos_rows(jax.random.normal(ks[3], (2 * g - 1, d)), g)
    rw = rel_pos_rows(jax.random.normal(ks[4], (2 * g - 1, d)), g)

    def loss(q, k, v, rh, rw, c):
        out = rel_pos_attention(q, k, v, rh, rw, q_chunk=c)
        return jnp.sum(jnp.sin(out)), out

    grad = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4), has_aux=True), static_argnums=5
    )
    (_, dense), gd = grad(q, k, v, rh, rw, 0)
    (_, chunked), gc = grad(q, k, v, rh, rw, chunk)
    assert dense.shape == (b, g * g, h, d)
    np.testing.assert_allclose(chunked, dense, **TOL)
    for name, a, c in zip(("q", "k", "v", "rel_pos_h", "rel_pos_w"), gd, gc, strict=True):
        np.testing.assert_allclose(c, a, err_msg=name, **TOL)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_encoder_forward_matches_dense(setup, chunk):
    flat, px, hp = setup
    dense = _encode(_cfg(0), flat, px, hp, DeepseekVL.towers)["sam"]
    chunked = _encode(_cfg(chunk), flat, px, hp, DeepseekVL.towers)["sam"]
    assert dense.shape == (3, 16, 64) and np.abs(dense).max() > 0.1
    np.testing.assert_allclose(chunked, dense, **TOL)
    np.testing.assert_allclose(
        _encode(_cfg(chunk), flat, px, hp), _encode(_cfg(0), flat, px, hp), **TOL
    )


def test_sam_adaptor_gradients_match_dense(setup):
    """The stages' case: SAM trunk frozen, its adaptor part (neck, neck_hd, downsample, hd_alpha) trains;
    blocks rematerialised as in the real sizes' configs."""
    flat, px, hp = setup
    groups = ("sam_adaptor", "adaptor")
    ld, gd = _sam_grads(_cfg(0, "full"), flat, px, hp, groups)
    lc, gc = _sam_grads(_cfg(16, "full"), flat, px, hp, groups)
    assert any(k.startswith("sam/neck_hd/") for k in gd) and "sam/hd_alpha" in gd
    assert not any(group_of(k) == "sam_trunk" for k in gd)
    np.testing.assert_allclose(lc, ld, **TOL)
    for k in gd:
        assert np.abs(gd[k]).max() > 0, k  # every checked gradient is live
        np.testing.assert_allclose(gc[k], gd[k], err_msg=k, **TOL)


def test_trainable_trunk_gradients_match_dense(setup):
    """No stage trains the trunk, but the chunked path must still differentiate like the dense one."""
    flat, px, hp = setup
    _, gd = _sam_grads(_cfg(0), flat, px, hp, ("sam_trunk",))
    _, gc = _sam_grads(_cfg(8), flat, px, hp, ("sam_trunk",))
    assert "sam/blocks_1/rel_pos_h" in gd  # the global block's tables
    for k in gd:
        np.testing.assert_allclose(gc[k], gd[k], err_msg=k, **TOL)


def test_7b_uses_the_chunked_path_and_bad_chunks_are_refused():
    sam = model_config("7b").sam
    assert 0 < sam.global_attn_q_chunk < sam.grid**2  # 512 of 4096 tokens: 8 chunks
    assert model_config("tiny").sam.global_attn_q_chunk >= model_config("tiny").sam.grid ** 2
    for bad in (
        -1,
        12,
        24,
    ):  # negative, not whole rows of 8, whole rows that do not divide the grid
        d = model_config_dict("tiny")
        d.sam.global_attn_q_chunk = bad
        with pytest.raises(ConfigError, match="model.sam.global_attn_q_chunk"):
            model_config_from_dict(d)


def test_chunked_global_attention_needs_less_tpu_memory():
    """Compiled for a compile-only TPU (libtpu, no chip): SAM-B's global attention at 1024 px, 2 images."""
    assert importlib.util.find_spec("libtpu") is not None, (
        "libtpu not installed: pip install -e .[tpu]"
    )
    from dsvl_jax.parallel import topologies

    dev = topologies.devices(topologies.parse("v5e-4"))[0]
    sh = jax.sharding.SingleDeviceSharding(dev)
    g, h, d = 64, 12, 64
    x = jax.ShapeDtypeStruct((2, g, g, h, d), jnp.bfloat16, sharding=sh)
    t = jax.ShapeDtypeStruct((2 * g - 1, d), jnp.float32, sharding=sh)

    def temp(chunk):
        fn = lambda q, k, v, th, tw: rel_pos_attention(  # noqa: E731
            q, k, v, rel_pos_rows(th, g), rel_pos_rows(tw, g), q_chunk=chunk
        )
        return jax.jit(fn).lower(x, x, x, t, t).compile().memory_analysis().temp_size_in_bytes

    dense, chunked = temp(0), temp(512)
    logits = 2 * h * (g * g) ** 2 * 4  # one f32 [2, 12, 4096, 4096] buffer: 1.5 GiB
    assert dense >= logits
    assert chunked * 6 < dense  # 512 of 4096 query tokens: 4.5 GiB -> 0.6 GiB (libtpu 0.0.42)
