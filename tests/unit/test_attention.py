"""The three attention kernels agree with the XLA reference, with padding and packing segments.

`splash` runs its real Pallas kernel in interpret mode on CPU; `cudnn` needs an NVIDIA GPU, so on CPU
we check the same jax.nn.dot_product_attention call (our mask/GQA conventions) with implementation="xla".
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsvl_jax import api
from dsvl_jax.model import attention as A
from dsvl_jax.model.params import init_params
from dsvl_jax.model.sizes import model_config

B, T, H, KV, D = 2, 128, 4, 2, 32


@pytest.fixture(scope="module")
def qkv_segments():
    r = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(r[0], (B, T, H, D))
    k = jax.random.normal(r[1], (B, T, KV, D))
    v = jax.random.normal(r[2], (B, T, KV, D))
    seg = np.ones((B, T), np.int32)
    seg[0, :10] = 0  # row 0: left padding
    seg[1, 50:] = 2  # row 1: two packed documents
    seg[1, 120:] = 0  # ... then right padding
    return q, k, v, jnp.asarray(seg)


def _loss(impl, q, k, v, seg):
    out = A.causal_attention(q, k, v, q_segments=seg, kv_segments=seg, impl=impl)
    w = (seg > 0)[..., None, None]
    return jnp.sum(jnp.where(w, out, 0.0) ** 2), out


def test_splash_matches_reference_values_and_grads(qkv_segments):
    q, k, v, seg = qkv_segments
    (l_ref, o_ref), g_ref = jax.value_and_grad(_loss, argnums=(1, 2, 3), has_aux=True)(
        "xla", q, k, v, seg
    )
    (l_spl, o_spl), g_spl = jax.value_and_grad(_loss, argnums=(1, 2, 3), has_aux=True)(
        "splash", q, k, v, seg
    )
    valid = np.asarray(seg > 0)
    np.testing.assert_allclose(np.asarray(o_spl)[valid], np.asarray(o_ref)[valid], atol=1e-5)
    np.testing.assert_allclose(float(l_spl), float(l_ref), rtol=1e-5)
    for a, b in zip(g_spl, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_packing_isolates_documents(qkv_segments):
    """Changing document 1 of row 1 leaves document 2's outputs unchanged (no cross-document attention)."""
    q, k, v, seg = qkv_segments
    a = A.causal_attention(q, k, v, q_segments=seg, kv_segments=seg)
    v2 = v.at[1, :50].set(0.0)
    b = A.causal_attention(q, k, v2, q_segments=seg, kv_segments=seg)
    np.testing.assert_allclose(np.asarray(a[1, 50:120]), np.asarray(b[1, 50:120]), atol=1e-6)
    assert np.abs(np.asarray(a[1, :50] - b[1, :50])).max() > 1e-3


def test_jax_nn_path_matches_reference(qkv_segments):
    q, k, v, seg = qkv_segments
    mask = A.segment_mask(seg, seg, 0)
    ref = A._xla(q, k, v, mask, None, D**-0.5)
    out = A.jax_nn_attention(q, k, v, mask, None, D**-0.5, "xla")
    valid = np.asarray(seg > 0)
    np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref)[valid], atol=1e-5)
    bias = jax.random.normal(jax.random.key(5), (B, H, T, T))
    np.testing.assert_allclose(
        np.asarray(A.jax_nn_attention(q, k, v, None, bias, 0.2, "xla")),
        np.asarray(A._xla(q, k, v, None, bias, 0.2)),
        atol=1e-5,
    )


def test_model_with_splash_attention_matches_xla():
    cfg = model_config("tiny")
    params = init_params(cfg, 0)
    rng = np.random.default_rng(0)
    ids = rng.integers(101, 256, (1, 128)).astype(np.int32)
    ids[0, 4 : 4 + cfg.num_image_tokens] = cfg.image_token_id
    mask = np.ones_like(ids)
    mask[0, :7] = 0
    px = rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    hp = rng.normal(size=(1, 3, 64, 64)).astype(np.float32)
    a = api.forward(cfg, params, ids, px, hp, mask)
    b = api.forward(dataclasses.replace(cfg, attention="splash"), params, ids, px, hp, mask)
    np.testing.assert_allclose(b[0, 7:], a[0, 7:], atol=1e-4)


def test_unknown_impl():
    with pytest.raises(ValueError, match="model.attention='flash' not in"):
        A.causal_attention(
            *[jnp.zeros((1, 4, 1, 8))] * 3,
            q_segments=jnp.ones((1, 4)),
            kv_segments=jnp.ones((1, 4)),
            impl="flash",
        )
