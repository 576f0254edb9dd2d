"""Scaled dot-product attention with the kernel chosen by config (`model.attention`).

- `xla`:    the reference: explicit einsums, f32 logits and softmax; runs everywhere.
- `cudnn`:  jax.nn.dot_product_attention with implementation="cudnn" (NVIDIA GPUs).
- `splash`: the Pallas TPU splash-attention kernel (causal + segment ids, no dense mask in HBM).
            Runs in Pallas interpret mode off-TPU, which is how the CPU tests check it.

Shapes: q [B, T, H, D], k/v [B, S, K, D], H a multiple of K (grouped-query attention).
Vision towers use `dot_product_attention` (dense, optional additive bias, no mask); the LLM uses
`causal_attention` with segment ids: token t may see slot s iff s <= offset + t and the segments
match and are non-zero (0 = padding).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLS = ("xla", "cudnn", "splash")
_NEG = float(jnp.finfo(jnp.float32).min)


def _check(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"model.attention={impl!r} not in {IMPLS}")


def _group(x: jax.Array, kv: int, g: int) -> jax.Array:
    """[B|1, H|1, T, S] -> [B|1, K|1, G|1, T, S] to broadcast against grouped logits."""
    bb, hh, tt, ss = x.shape
    if hh == 1:
        return x.reshape(bb, 1, 1, tt, ss)
    return x.reshape(bb, kv, g, tt, ss)


def _xla(q, k, v, mask, bias, scale):
    b, t, h, d = q.shape
    kv = k.shape[2]
    g = h // kv
    # Head-major layouts make both einsums plain batched matmuls; the token-major form made XLA:CPU
    # insert transposes inside the softmax fusions (2x slower fwd+bwd). Without GQA (g == 1) the group
    # axis is dropped altogether, which XLA:CPU also runs faster.
    qs = q * jnp.asarray(scale, q.dtype)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, S, D]
    if g == 1:
        logits = jnp.einsum("bhtd,bhsd->bhts", qs.transpose(0, 2, 1, 3), kh, preferred_element_type=jnp.float32)
        if bias is not None:
            logits = logits + bias.astype(jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, _NEG)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhts,bhsd->bthd", probs, vh, preferred_element_type=jnp.float32)
        return out.astype(q.dtype)
    qg = qs.reshape(b, t, kv, g, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, D]
    logits = jnp.einsum("bkgtd,bksd->bkgts", qg, kh, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + _group(bias.astype(jnp.float32), kv, g)
    if mask is not None:
        logits = jnp.where(_group(mask, kv, g), logits, _NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksd->bkgtd", probs, vh, preferred_element_type=jnp.float32)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d).astype(q.dtype)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, bias: jax.Array | None = None,
                          mask: jax.Array | None = None, scale: float | None = None, impl: str = "xla") -> jax.Array:
    """Dense attention (vision towers). bias/mask broadcastable to [B, H, T, S]."""
    _check(impl)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if impl == "cudnn":
        return jax_nn_attention(q, k, v, mask, bias, scale, "cudnn")
    # Splash has no additive-bias input (SAM's rel-pos); vision attention falls back to XLA there.
    return _xla(q, k, v, mask, bias, scale)


def segment_mask(q_segments: jax.Array, kv_segments: jax.Array, q_offset: jax.Array | int) -> jax.Array:
    """Causal + same-segment + non-padding mask [B, 1, T, S]."""
    t, s = q_segments.shape[1], kv_segments.shape[1]
    causal = jnp.arange(s)[None, :] <= (q_offset + jnp.arange(t))[:, None]
    same = (q_segments[:, :, None] == kv_segments[:, None, :]) & (kv_segments[:, None, :] != 0)
    return (causal[None] & same)[:, None]


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, q_segments: jax.Array, kv_segments: jax.Array,
                     q_offset: jax.Array | int = 0, impl: str = "xla") -> jax.Array:
    """Causal attention with packing/padding segments [B, T] / [B, S] (0 = padding)."""
    _check(impl)
    scale = q.shape[-1] ** -0.5
    if impl == "splash" and q.shape[1] == k.shape[1] and isinstance(q_offset, int) and q_offset == 0:
        return _splash(q, k, v, q_segments, kv_segments, scale)
    mask = segment_mask(q_segments, kv_segments, q_offset)
    if impl == "cudnn":
        return jax_nn_attention(q, k, v, mask, None, scale, "cudnn")
    # xla, and splash while decoding with a cache (T != S): a kernel for 1-token queries buys nothing.
    return _xla(q, k, v, mask, None, scale)


def jax_nn_attention(q, k, v, mask, bias, scale, implementation: str | None):
    """jax.nn.dot_product_attention with our mask/bias conventions (GQA is native there).

    `implementation="cudnn"` on NVIDIA GPUs; tests call it with "xla" to check the conventions on CPU.
    """
    if mask is not None:
        mask = jnp.broadcast_to(mask, (q.shape[0], mask.shape[1], q.shape[1], k.shape[1]))
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation=implementation)


@functools.lru_cache(maxsize=None)
def _splash_kernel(heads: int, t: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
    blk = min(512, t)
    sizes = sk.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk, block_kv_dkv=blk,
                          block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk)
    mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(heads)])
    return sk.make_splash_mha(mask=mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret), sk


def _splash(q, k, v, q_segments, kv_segments, scale):
    b, t, h, d = q.shape
    g = h // k.shape[2]
    if t % 128:
        raise ValueError(f"model.attention='splash' needs a sequence length that is a multiple of 128, got {t}")
    kernel, sk = _splash_kernel(h, t, jax.default_backend() != "tpu")
    # GQA: repeat K/V heads to the query heads (the kernel's MHA form); [B, T, H, D] -> [B, H, T, D].
    qh = (q * jnp.asarray(scale, q.dtype)).transpose(0, 2, 1, 3)
    kh = jnp.repeat(k, g, axis=2).transpose(0, 2, 1, 3)
    vh = jnp.repeat(v, g, axis=2).transpose(0, 2, 1, 3)
    seg = sk.SegmentIds(q=q_segments.astype(jnp.int32), kv=kv_segments.astype(jnp.int32))
    out = jax.vmap(lambda a, b_, c, s: kernel(a, b_, c, segment_ids=s))(qh, kh, vh, seg)
    return out.transpose(0, 2, 1, 3).astype(q.dtype)
