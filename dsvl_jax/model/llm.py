"""DeepSeek LLM decoder: LLaMA-style (RMSNorm, RoPE, SwiGLU, MHA/GQA), with a functional KV cache.

One code path serves training, prefill and decoding. Keys live in "slots": without a cache the slots
are the T input tokens; with a cache of S slots the T new tokens are written at
[cache_index, cache_index + T). `segments` [B, S] labels every slot (0 = padding, 1.. = packed
documents); query t (slot cache_index + t) attends to slot s iff s <= cache_index + t and the two
segments are equal and non-zero. Left padding, packing, prompts and generated tokens all use this one
rule, and shapes stay static (one compile for prefill, one for the decode step).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from dsvl_jax.model.attention import causal_attention
from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.layers import Embed, RMSNorm, dense, dtype_of, repeat_blocks


def head_kernel(params: dict, tied: bool) -> jax.Array:
    """The output head as a [D, V] matrix: `llm/lm_head/kernel`, or the token embedding
    `llm/embed/embedding` [V, D] transposed when the embeddings are tied. The one statement of the
    head's layout: `Decoder` creates these parameters, decoding (model/decode.py) and the chunked
    loss (train/loss.py) read them through this function."""
    llm = params["llm"]
    return llm["embed"]["embedding"].T if tied else llm["lm_head"]["kernel"]


def head_logits(params: dict, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Hidden states [B, T, D] -> f32 logits [B, T, V], the same maths as `Decoder`'s head."""
    dt = dtype_of(cfg.dtype)
    w = head_kernel(params, cfg.llm.tie_embeddings).astype(dt)
    logits = jax.lax.dot_general(
        x.astype(dt), w, (((2,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )
    logits = nn.with_logical_constraint(logits.astype(dt), ("act_batch", "act_len", "act_vocab"))
    return logits.astype(jnp.float32)


class KVCache(NamedTuple):
    """Per-layer keys and values, stacked: k, v [L, B, S, K, D]."""

    k: jax.Array
    v: jax.Array


def init_cache(cfg: ModelConfig, batch: int, slots: int) -> KVCache:
    l = cfg.llm
    shape = (l.layers, batch, slots, l.kv_heads, l.head_dim)
    z = jnp.zeros(shape, dtype_of(cfg.dtype))
    return KVCache(z, z)


@functools.lru_cache(maxsize=8)
def _rope_table(max_position: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [max_position, D/2] as host constants: the angle in f32 as HF computes it, cos/sin in f64."""
    inv = (
        1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    ).astype(np.float32)
    ang = (np.arange(max_position, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float64)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def rope_tables(
    positions: jax.Array, head_dim: int, theta: float, max_position: int, dtype
) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, T, 1, D/2] for `rope`: rows of a constant table, gathered once per forward.

    Computed from positions inside the step, XLA fused cos/sin into every layer's q and k rotation and
    evaluated them per head and per element (~45 ms of a 1.2 s CPU step); a gathered row costs a load.
    Positions past max_position clamp to the last row.
    """
    cos, sin = _rope_table(int(max_position), int(head_dim), float(theta))
    pick = lambda t: jnp.asarray(t, dtype)[positions][:, :, None, :]  # noqa: E731
    return pick(cos), pick(sin)


def rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE (HF LLaMA layout). x [B, T, H, D]; cos, sin from `rope_tables`.

    Written as two half-width products and one concat (not x*cos + rotate_half(x)*sin), which halves the
    concat/pad work in the backward pass.
    """
    d = x.shape[-1]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class DecoderBlock(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, layer_cache, rot, segments, cache_index):
        l, dt, pdt = self.cfg.llm, dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
        y = RMSNorm(l.rms_eps, dt, pdt, name="attn_norm")(x)
        q = dense(
            (l.heads, l.head_dim),
            ("embed", "heads", "head_dim"),
            use_bias=False,
            dtype=dt,
            param_dtype=pdt,
            name="q",
        )(y)
        k = dense(
            (l.kv_heads, l.head_dim),
            ("embed", "kv_heads", "head_dim"),
            use_bias=False,
            dtype=dt,
            param_dtype=pdt,
            name="k",
        )(y)
        v = dense(
            (l.kv_heads, l.head_dim),
            ("embed", "kv_heads", "head_dim"),
            use_bias=False,
            dtype=dt,
            param_dtype=pdt,
            name="v",
        )(y)
        q, k = rope(q, *rot), rope(k, *rot)
        t = x.shape[1]
        if layer_cache is not None:
            ck, cv = layer_cache
            k = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), cache_index, axis=1)
            new_cache = (k, v)
            q_segments = jax.lax.dynamic_slice_in_dim(segments, cache_index, t, axis=1)
            offset = cache_index
        else:
            new_cache, q_segments, offset = None, segments, 0
        a = causal_attention(
            q,
            k.astype(dt),
            v.astype(dt),
            q_segments=q_segments,
            kv_segments=segments,
            q_offset=offset,
            impl=self.cfg.attention,
        )
        a = checkpoint_name(a, "attn_out")
        x = x + dense(
            l.hidden,
            ("heads", "head_dim", "embed"),
            axis=(-2, -1),
            use_bias=False,
            dtype=dt,
            param_dtype=pdt,
            name="o",
        )(a)
        y = RMSNorm(l.rms_eps, dt, pdt, name="mlp_norm")(x)
        gate = dense(
            l.mlp_dim, ("embed", "mlp"), use_bias=False, dtype=dt, param_dtype=pdt, name="gate"
        )(y)
        up = dense(
            l.mlp_dim, ("embed", "mlp"), use_bias=False, dtype=dt, param_dtype=pdt, name="up"
        )(y)
        x = x + dense(
            l.hidden, ("mlp", "embed"), use_bias=False, dtype=dt, param_dtype=pdt, name="down"
        )(jax.nn.silu(gate) * up)
        return x, new_cache


class Decoder(nn.Module):
    """Token embedding (+ spliced image embeddings) -> decoder blocks -> final norm -> output head."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        ids: jax.Array,
        positions: jax.Array,
        segments: jax.Array,
        *,
        inject: jax.Array | None = None,
        inject_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        cache_index: jax.Array | int = 0,
        output: str = "logits",
    ) -> tuple[jax.Array, KVCache | None]:
        """ids [B, T]; positions [B, T]; segments [B, S] int, 0 = padding (S = T without a cache).

        inject [B, T, D] replaces the token embedding wherever inject_mask [B, T] is True (image
        tokens). Returns (logits [B, T, V] in f32, updated cache or None); with output="hidden" the
        final-normed hidden states [B, T, D] instead, for a loss that applies the head itself
        (train/loss.py: chunked head + cross-entropy, never materialising [B, T, V]).
        """
        l, dt, pdt = self.cfg.llm, dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        embedder = Embed(l.vocab_size, l.hidden, dtype=dt, param_dtype=pdt, name="embed")
        x = embedder(ids)
        if inject is not None:
            inject = nn.with_logical_constraint(
                inject.astype(dt), ("act_batch", "act_len", "act_embed")
            )
            x = jnp.where(inject_mask[..., None], inject, x)
        x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
        xs = None if cache is None else (cache.k, cache.v)
        x, new = repeat_blocks(
            DecoderBlock,
            l.layers,
            scan=self.cfg.scan_layers,
            remat_policy=self.cfg.remat_policy,
            name="blocks",
            num_broadcast=3,
            cfg=self.cfg,
        )(
            x,
            xs,
            rope_tables(positions, l.head_dim, l.rope_theta, l.max_position, dt),
            segments.astype(jnp.int32),
            None if cache is None else jnp.asarray(cache_index, jnp.int32),
        )
        x = RMSNorm(l.rms_eps, dt, pdt, name="final_norm")(x)
        x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
        if output == "hidden":
            return x, (None if new is None else KVCache(*new))
        if l.tie_embeddings:
            logits = embedder.attend(x)
        else:
            logits = dense(
                l.vocab_size,
                ("embed", "vocab"),
                use_bias=False,
                dtype=dt,
                param_dtype=pdt,
                name="lm_head",
            )(x)
        logits = nn.with_logical_constraint(logits, ("act_batch", "act_len", "act_vocab"))
        return logits.astype(jnp.float32), (None if new is None else KVCache(*new))
