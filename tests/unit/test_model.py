"""Model behaviour that needs no HF oracle: layouts, padding, dtype policy, remat, logical axes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsvl_jax import api
from dsvl_jax.model import params as P
from dsvl_jax.model.sizes import model_config
from dsvl_jax.model.vlm import DeepseekVL


@pytest.fixture(scope="module")
def tiny():
    cfg = model_config("tiny")
    return cfg, P.init_params(cfg, 0)


def _batch(cfg, seed=0, pad=0):
    rng = np.random.default_rng(seed)
    n = cfg.num_image_tokens
    ids = rng.integers(101, cfg.llm.vocab_size, (1, 6 + n)).astype(np.int32)
    ids[0, 2 : 2 + n] = cfg.image_token_id
    mask = np.ones_like(ids)
    if pad:
        ids = np.concatenate([np.zeros((1, pad), np.int32), ids], 1)
        mask = np.concatenate([np.zeros((1, pad), np.int32), mask], 1)
    px = rng.uniform(-1, 1, (1, 3, cfg.siglip.image_size, cfg.siglip.image_size)).astype(np.float32)
    hp = (
        rng.normal(size=(1, 3, cfg.sam.image_size, cfg.sam.image_size)).astype(np.float32)
        if cfg.hybrid
        else None
    )
    return ids, mask, px, hp


def test_scan_and_unrolled_layouts_agree(tiny):
    cfg, params = tiny
    ucfg = dataclasses.replace(cfg, scan_layers=False)
    uparams = P.unflatten(
        P.unstack_layers({k: np.asarray(v) for k, v in P.flatten(params).items()})
    )
    assert jax.tree.structure(uparams) == jax.tree.structure(P.abstract_params(ucfg))
    ids, mask, px, hp = _batch(cfg)
    a = api.forward(cfg, params, ids, px, hp, mask)
    b = api.forward(ucfg, uparams, ids, px, hp, mask)
    np.testing.assert_allclose(a, b, atol=1e-5)
    restacked = P.stack_layers(P.flatten(uparams))
    assert all(np.array_equal(restacked[k], np.asarray(v)) for k, v in P.flatten(params).items())


def test_left_padding_does_not_change_logits(tiny):
    cfg, params = tiny
    ids, mask, px, hp = _batch(cfg)
    pids, pmask, _, _ = _batch(cfg, pad=5)
    a = api.forward(cfg, params, ids, px, hp, mask)
    b = api.forward(cfg, params, pids, px, hp, pmask)
    np.testing.assert_allclose(a[0], b[0, 5:], atol=1e-5)


def test_images_change_only_through_image_tokens(tiny):
    """Text before the first image token cannot see the image (causal); text after it can."""
    cfg, params = tiny
    ids, mask, px, hp = _batch(cfg)
    a = api.forward(cfg, params, ids, px, hp, mask)
    b = api.forward(cfg, params, ids, -px, None if hp is None else -hp, mask)
    np.testing.assert_allclose(a[0, :2], b[0, :2], atol=1e-6)
    assert np.abs(a[0, -1] - b[0, -1]).max() > 1e-3


def test_bf16_compute_keeps_f32_params_and_tracks_f32(tiny):
    cfg, params = tiny
    bcfg = dataclasses.replace(cfg, dtype="bfloat16")
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(P.abstract_params(bcfg)))
    ids, mask, px, hp = _batch(cfg)
    a = api.forward(cfg, params, ids, px, hp, mask)
    b = api.forward(bcfg, params, ids, px, hp, mask)
    assert b.dtype == np.float32
    # bf16 has 8 mantissa bits; tiny logits are O(1), so agreement to a few 1e-2 is the expectation.
    assert np.abs(a - b).max() < 0.1
    assert np.abs(a - b).max() > 0  # really computed in bf16


def test_remat_policies_leave_values_and_grads_unchanged(tiny):
    cfg, params = tiny
    ids, mask, px, hp = _batch(cfg)
    pos = jnp.arange(ids.shape[1])[None]

    def loss(p, c):
        logits, _ = DeepseekVL(c).apply(
            {"params": p},
            jnp.asarray(ids),
            pos,
            jnp.asarray(mask),
            pixels=jnp.asarray(px.transpose(0, 2, 3, 1)),
            high_pixels=jnp.asarray(hp.transpose(0, 2, 3, 1)),
        )
        return jnp.mean(jax.nn.logsumexp(logits, -1))

    vg = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    ref_l, ref_g = vg(params, cfg)
    for policy in ("full", "dots"):
        l, g = vg(params, dataclasses.replace(cfg, remat_policy=policy))
        np.testing.assert_allclose(l, ref_l, rtol=1e-6)
        for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)):
            np.testing.assert_allclose(x, y, atol=1e-6)
    assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(ref_g["sam"]))


@pytest.mark.parametrize("size", ["tiny", "tiny_siglip", "1.3b", "7b"])
def test_every_parameter_has_logical_axis_names(size):
    cfg = model_config(size)
    specs = P.flatten(
        jax.tree.map(
            lambda s: tuple(s),
            P.logical_axes(cfg),
            is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
        )
    )
    shapes = P.flatten(P.abstract_params(cfg))
    assert specs.keys() == shapes.keys()
    for path, names in specs.items():
        assert len(names) == len(shapes[path].shape), path
        assert all(isinstance(n, str) for n in names), (path, names)
        if cfg.scan_layers and "/blocks/" in path:
            assert names[0] == "layers", path
