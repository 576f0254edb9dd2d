"""Greedy decoding with the KV cache, as one jitted function (prefill + lax.scan over new tokens).

Prompts are left-padded [B, T]; the cache has T + max_new_tokens slots. Positions of real tokens count
from 0 in each row (cumsum of the mask), as HF `generate` does, so padding never shifts RoPE phases.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.llm import init_cache
from dsvl_jax.model.vlm import DeepseekVL


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """[B, T] 0/1 -> positions [B, T]: 0-based index among real tokens (0 on padding)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"))
def greedy_generate(cfg: ModelConfig, params, ids: jax.Array, mask: jax.Array, pixels=None, high_pixels=None, *,
                    max_new_tokens: int, eos_id: jax.Array | int = -1, pad_id: jax.Array | int = 0) -> jax.Array:
    """-> new token ids [B, max_new_tokens]; after EOS a row emits pad_id. eos_id < 0 disables EOS."""
    model = DeepseekVL(cfg)
    b, t = ids.shape
    mask = mask.astype(jnp.int32)
    segments = jnp.concatenate([mask, jnp.ones((b, max_new_tokens), jnp.int32)], axis=1)
    pos = positions_from_mask(mask)
    cache = init_cache(cfg, b, t + max_new_tokens)
    logits, cache = model.apply({"params": params}, ids, pos, segments, pixels=pixels, high_pixels=high_pixels,
                                cache=cache, cache_index=0)
    first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    done = first == eos_id

    def step(carry, i):
        tok, p, cache, done = carry
        lg, cache = model.apply({"params": params}, tok[:, None], p[:, None], segments, cache=cache,
                                cache_index=t + i)
        nxt = jnp.argmax(lg[:, 0], axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, pad_id, nxt)
        return (nxt, p + 1, cache, done | (nxt == eos_id)), nxt

    _, rest = jax.lax.scan(step, (first, pos[:, -1] + 1, cache, done), jnp.arange(max_new_tokens - 1))
    return jnp.concatenate([first[:, None], rest.T], axis=1)
