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

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dsvl_jax import compat

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
    """Head-major einsums with f32 logits; softmax normalised after the PV product.

    Two layouts matter on XLA:CPU (measured fwd+bwd, B4 T256 H8 D64: 24 -> 10 ms): both einsums write
    head-major [B, H, T, *] (a token-major PV output made XLA emit a strided dot and transposes in the
    backward), and the 1/sum(exp) scale is applied to the [T, D] output instead of the [T, S] probabilities
    (one pass over the logits fewer each way). Rows with no visible slot come out as the mean of V, finite.
    """
    b, t, h, d = q.shape
    kv = k.shape[2]
    g = h // kv
    qs = q * jnp.asarray(scale, q.dtype)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, S, D]
    if g == 1:  # no group axis at all: XLA:CPU runs the plain batched matmuls faster
        logits = jnp.einsum(
            "bhtd,bhsd->bhts", qs.transpose(0, 2, 1, 3), kh, preferred_element_type=jnp.float32
        )
        if bias is not None:
            logits = logits + bias.astype(jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, _NEG)
        out = _softmax_pv(logits, vh, "bhts,bhsd->bhtd")
        return out.transpose(0, 2, 1, 3).astype(q.dtype)
    qg = qs.reshape(b, t, kv, g, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, D]
    logits = jnp.einsum("bkgtd,bksd->bkgts", qg, kh, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + _group(bias.astype(jnp.float32), kv, g)
    if mask is not None:
        logits = jnp.where(_group(mask, kv, g), logits, _NEG)
    out = _softmax_pv(logits, vh, "bkgts,bksd->bkgtd")
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d).astype(q.dtype)


def _softmax_pv(logits: jax.Array, v: jax.Array, spec: str) -> jax.Array:
    """softmax(logits) @ v as (exp(logits - max) @ v) / sum(exp(logits - max)); f32 result."""
    m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))  # softmax is shift-invariant
    e = jnp.exp(logits - m)
    out = jnp.einsum(spec, e.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out / jnp.sum(e, axis=-1, keepdims=True)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    scale: float | None = None,
    impl: str = "xla",
) -> jax.Array:
    """Dense attention (vision towers). bias/mask broadcastable to [B, H, T, S]."""
    _check(impl)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if impl == "cudnn":
        return jax_nn_attention(q, k, v, mask, bias, scale, "cudnn")
    # Splash has no additive-bias input (SAM's rel-pos); vision attention falls back to XLA there.
    return _xla(q, k, v, mask, bias, scale)


def segment_mask(
    q_segments: jax.Array, kv_segments: jax.Array, q_offset: jax.Array | int
) -> jax.Array:
    """Causal + same-segment + non-padding mask [B, 1, T, S]."""
    t, s = q_segments.shape[1], kv_segments.shape[1]
    causal = jnp.arange(s)[None, :] <= (q_offset + jnp.arange(t))[:, None]
    same = (q_segments[:, :, None] == kv_segments[:, None, :]) & (kv_segments[:, None, :] != 0)
    return (causal[None] & same)[:, None]


def causal_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segments: jax.Array,
    kv_segments: jax.Array,
    q_offset: jax.Array | int = 0,
    impl: str = "xla",
) -> jax.Array:
    """Causal attention with packing/padding segments [B, T] / [B, S] (0 = padding)."""
    _check(impl)
    scale = q.shape[-1] ** -0.5
    if (
        impl == "splash"
        and q.shape[1] == k.shape[1]
        and isinstance(q_offset, int)
        and q_offset == 0
    ):
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
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=scale, implementation=implementation
    )


def _splash_kernel(heads: int, t: int, interpret: bool):
    """Built per trace, not cached: a kernel made inside one trace carries its mask arrays into the next
    (scan and remat trace a block several times), which fails with a leaked tracer."""
    sk, sm = compat.splash_attention()
    # The largest block up to 512 that tiles t (t % 128 == 0 here): 512 at 4096, 384 at stage 1's 1152.
    blk = max(b for b in (512, 384, 256, 128) if t % b == 0)
    sizes = sk.BlockSizes(
        block_q=blk,
        block_kv=blk,
        block_kv_compute=blk,
        block_q_dkv=blk,
        block_kv_dkv=blk,
        block_kv_dkv_compute=blk,
        block_q_dq=blk,
        block_kv_dq=blk,
    )
    mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(heads)])
    return sk.make_splash_mha(
        mask=mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    ), sk


def _target_is_tpu() -> bool:
    """The platform being compiled for: the mesh's devices when there is one (an AOT compile for a TPU slice
    from a CPU host has TPU devices in its mesh while jax.default_backend() is cpu), else the default backend."""
    mesh = compat.concrete_mesh()
    if mesh is not None:
        return mesh.devices.flat[0].platform == "tpu"
    return jax.default_backend() == "tpu"


def _splash(q, k, v, q_segments, kv_segments, scale):
    """Splash over [B, H, T, D] blocks, one kernel call per (batch, head) shard.

    Mosaic kernels are not auto-partitioned by GSPMD, so under a mesh the kernel runs inside shard_map over the
    act_batch and heads mesh axes (each device sees its own rows and heads, full sequence). Lengths that are not
    a multiple of 128 (the init trace's short dummies, odd eval lengths) take the XLA path: same maths.
    """
    _, t, h, _ = q.shape
    if t % 128:
        return _xla(q, k, v, segment_mask(q_segments, kv_segments, 0), None, scale)
    g = h // k.shape[2]
    interpret = not _target_is_tpu()
    # GQA: repeat K/V heads to the query heads (the kernel's MHA form); [B, T, H, D] -> [B, H, T, D].
    qh = (q * jnp.asarray(scale, q.dtype)).transpose(0, 2, 1, 3)
    kh = jnp.repeat(k, g, axis=2).transpose(0, 2, 1, 3)
    vh = jnp.repeat(v, g, axis=2).transpose(0, 2, 1, 3)

    def local(qh, kh, vh, sq, skv):
        kernel, sk = _splash_kernel(qh.shape[1], t, interpret)
        seg = sk.SegmentIds(q=sq.astype(jnp.int32), kv=skv.astype(jnp.int32))
        return jax.vmap(lambda a, b_, c, s: kernel(a, b_, c, segment_ids=s))(qh, kh, vh, seg)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        out = local(qh, kh, vh, q_segments, kv_segments)
    else:
        bax, hax = nn.logical_to_mesh_axes(("act_batch", "heads"))
        spec, sspec = P(bax, hax, None, None), P(bax, None)
        out = jax.shard_map(
            local, in_specs=(spec, spec, spec, sspec, sspec), out_specs=spec, check_vma=False
        )(qh, kh, vh, q_segments, kv_segments)
    return out.transpose(0, 2, 1, 3).astype(q.dtype)
