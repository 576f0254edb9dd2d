"""Scaled dot-product attention with the kernel chosen by config.

`xla` is the reference (explicit einsums, f32 logits and softmax) and runs everywhere. `cudnn` routes
to jax.nn.dot_product_attention's cuDNN kernel on GPU. Shapes: q [B, T, H, D], k/v [B, S, K, D] with
H a multiple of K (grouped-query attention); mask broadcastable to [B, H, T, S] (True = attend);
bias additive, broadcastable to the same.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLS = ("xla", "cudnn")
_NEG = float(jnp.finfo(jnp.float32).min)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None = None,
                          bias: jax.Array | None = None, scale: float | None = None,
                          impl: str = "xla") -> jax.Array:
    if impl not in IMPLS:
        raise ValueError(f"model.attention={impl!r} not in {IMPLS}")
    b, t, h, d = q.shape
    kv = k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation="cudnn")
    g = h // kv
    qg = q.reshape(b, t, kv, g, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg * jnp.asarray(scale, q.dtype), k,
                        preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + _group(bias.astype(jnp.float32), kv, g)
    if mask is not None:
        logits = jnp.where(_group(mask, kv, g), logits, _NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, h, d).astype(q.dtype)


def _group(x: jax.Array, kv: int, g: int) -> jax.Array:
    """[B|1, H|1, T, S] -> [B|1, K|1, G|1, T, S] to broadcast against grouped logits."""
    bb, hh, tt, ss = x.shape
    if hh == 1:
        return x.reshape(bb, 1, 1, tt, ss)
    return x.reshape(bb, kv, g, tt, ss)
