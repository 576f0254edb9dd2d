"""Decoding with the KV cache: greedy or temperature + nucleus (top-p) sampling, stop ids, fixed shapes.

Prompts are left-padded [B, T]; the cache has T + max_new_tokens slots. Positions of real tokens count
from 0 in each row (cumsum of the mask), as HF `generate` does, so padding never shifts RoPE phases.

Two layers:
- `decode` (jitted): prefill, then a `lax.while_loop` over new tokens that stops early once every row
  has emitted a stop id. After its stop id a row emits `pad_id`. Static: cfg and max_new_tokens only;
  temperature (0 = greedy, picked at run time), top_p, stop ids, pad id and the key are traced, so
  changing them never recompiles. `greedy_generate` is `decode` with temperature 0 at the caller's shapes.
- `generate` (host): left-pads prompts to a length bucket (next multiple of `length_bucket`) and the
  batch to `batch_size` rows, so prompts of any length within a bucket reuse one compiled program.

Sampling draws row r's step-i token with key fold_in(fold_in(rng, r), i): a row's tokens depend on the
seed, its row index and its own logits only, never on the batch padding or the bucket.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.llm import KVCache, head_logits, init_cache
from dsvl_jax.model.vlm import DeepseekVL

# stop ids are padded to this many (-1 never matches), so their number never recompiles
STOP_SLOTS = 8
DEFAULT_LENGTH_BUCKET = 64
# times `decode` was traced (= compiled, per shape/static signature); see trace_count()
_TRACES = [0]


def trace_count() -> int:
    """How many times the jitted decoder has been traced so far (each new shape signature compiles once)."""
    return _TRACES[0]


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """[B, T] 0/1 -> positions [B, T]: 0-based index among real tokens (0 on padding)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def _constrain_cache(cache: KVCache) -> KVCache:
    """Batch over the data axes, KV heads over `tensor` (a no-op outside nn.logical_axis_rules)."""
    names = ("layers", "act_batch", "act_len", "kv_heads", "head_dim")
    return KVCache(
        nn.with_logical_constraint(cache.k, names), nn.with_logical_constraint(cache.v, names)
    )


def nucleus_filter(logits: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """[B, V] logits -> logits / temperature with every token outside the top-p nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probability reaches top_p (HF's rule:
    a token is kept when the mass of the tokens above it is below top_p; the top token always is).
    """
    x = logits / temperature
    srt = -jnp.sort(-x, axis=-1)  # descending
    p = jax.nn.softmax(srt, axis=-1)
    keep = (jnp.cumsum(p, axis=-1) - p) < top_p
    last = jnp.maximum(jnp.sum(keep, axis=-1) - 1, 0)
    threshold = jnp.take_along_axis(srt, last[:, None], axis=-1)
    return jnp.where(x >= threshold, x, -jnp.inf)


def _pick(logits: jax.Array, keys: jax.Array, step, temperature, top_p) -> jax.Array:
    """[B, V] f32 logits -> next tokens [B] int32: argmax when temperature == 0, else a nucleus sample.

    The choice is made at run time (lax.cond runs one branch), so greedy and sampled requests share one
    compiled program.
    """

    def greedy(x):
        return jnp.argmax(x, axis=-1).astype(jnp.int32)

    def sample(x):
        x = nucleus_filter(x, jnp.maximum(temperature, 1e-30), top_p)
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, step)
        return jax.vmap(jax.random.categorical)(step_keys, x).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, sample, greedy, logits)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"))
def decode(
    cfg: ModelConfig,
    params,
    ids: jax.Array,
    mask: jax.Array,
    pixels=None,
    high_pixels=None,
    stop_ids: jax.Array | None = None,
    pad_id: jax.Array | int = 0,
    temperature: jax.Array | float = 0.0,
    top_p: jax.Array | float = 1.0,
    rng: jax.Array | None = None,
    live: jax.Array | None = None,
    vocab_limit: jax.Array | int | None = None,
    *,
    max_new_tokens: int,
) -> jax.Array:
    """Left-padded ids/mask [B, T] (+ pixels) -> new token ids [B, max_new_tokens].

    temperature 0: greedy, > 0: nucleus sampling with rng (a key). stop_ids [K] int (-1 entries never
    match); live [B] bool (False: a filler row, emits pad_id only and never holds up the early exit);
    vocab_limit: only ids below it are generated (a tokenizer smaller than the embedding).
    """
    _TRACES[0] += 1
    model = DeepseekVL(cfg)
    b, t = ids.shape
    stop_ids = (
        jnp.full((1,), -1, jnp.int32)
        if stop_ids is None
        else jnp.asarray(stop_ids, jnp.int32).reshape(-1)
    )
    live = jnp.ones((b,), bool) if live is None else jnp.asarray(live, bool)
    pad_id = jnp.asarray(pad_id, jnp.int32)
    temperature = jnp.asarray(temperature, jnp.float32)
    top_p = jnp.asarray(top_p, jnp.float32)
    rng = jax.random.key(0) if rng is None else rng
    vocab_limit = jnp.asarray(cfg.llm.vocab_size if vocab_limit is None else vocab_limit, jnp.int32)
    keys = jax.vmap(lambda r: jax.random.fold_in(rng, r))(jnp.arange(b))

    def is_stop(tok):
        return jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)

    mask = mask.astype(jnp.int32)
    segments = jnp.concatenate([mask, jnp.ones((b, max_new_tokens), jnp.int32)], axis=1)
    pos = positions_from_mask(mask)
    cache = _constrain_cache(init_cache(cfg, b, t + max_new_tokens))
    hidden, cache = model.apply(
        {"params": params},
        ids,
        pos,
        segments,
        pixels=pixels,
        high_pixels=high_pixels,
        cache=cache,
        cache_index=0,
        output="hidden",
    )

    def pick(logits, step):
        logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
        return _pick(logits, keys, step, temperature, top_p)

    first = pick(head_logits(params, cfg, hidden[:, -1:])[:, 0], 0)
    first = jnp.where(live, first, pad_id)
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    done = ~live | is_stop(first)

    def cond(c):
        i, _, _, _, done, _ = c
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(c):
        i, tok, p, cache, done, out = c
        lg, cache = model.apply(
            {"params": params},
            tok[:, None],
            p[:, None],
            segments,
            cache=cache,
            cache_index=t + i - 1,
        )
        nxt = jnp.where(done, pad_id, pick(lg[:, 0], i))
        out = jax.lax.dynamic_update_slice_in_dim(out, nxt[:, None], i, axis=1)
        return i + 1, nxt, p + 1, _constrain_cache(cache), done | is_stop(nxt), out

    init = (jnp.asarray(1, jnp.int32), first, pos[:, -1] + 1, cache, done, out)
    return jax.lax.while_loop(cond, body, init)[-1]


def greedy_generate(
    cfg: ModelConfig,
    params,
    ids: jax.Array,
    mask: jax.Array,
    pixels=None,
    high_pixels=None,
    *,
    max_new_tokens: int,
    eos_id: jax.Array | int = -1,
    pad_id: jax.Array | int = 0,
) -> jax.Array:
    """-> new token ids [B, max_new_tokens]; after EOS a row emits pad_id. eos_id < 0 disables EOS.

    Runs at the caller's shapes (no bucketing); see `generate` for the general entry point.
    """
    stop = jnp.full((STOP_SLOTS,), -1, jnp.int32).at[0].set(jnp.asarray(eos_id, jnp.int32))
    return decode(
        cfg,
        params,
        ids,
        mask,
        pixels,
        high_pixels,
        stop,
        jnp.asarray(pad_id, jnp.int32),
        jnp.float32(0),
        jnp.float32(1),
        jax.random.key(0),
        jnp.ones(ids.shape[:1], bool),
        jnp.int32(cfg.llm.vocab_size),
        max_new_tokens=max_new_tokens,
    )


def bucket_length(n: int, multiple: int = DEFAULT_LENGTH_BUCKET) -> int:
    """Prompt length n -> the padded length: the next multiple of `multiple` (at least one multiple)."""
    if multiple < 1:
        raise ValueError(f"length_bucket must be >= 1, got {multiple}")
    return max(multiple, -(-n // multiple) * multiple)


def _stop_array(stop_ids: int | Sequence[int] | None) -> np.ndarray:
    ids = (
        []
        if stop_ids is None
        else [stop_ids]
        if isinstance(stop_ids, (int, np.integer))
        else list(stop_ids)
    )
    ids = [int(i) for i in ids if int(i) >= 0]
    if len(ids) > STOP_SLOTS:
        raise ValueError(f"stop_ids: at most {STOP_SLOTS} ids, got {len(ids)}")
    return np.asarray(ids + [-1] * (STOP_SLOTS - len(ids)), np.int32)


def pad_to_bucket(
    ids, mask, pixels=None, high_pixels=None, *, length: int, batch: int, pad_id: int = 0
):
    """Left-pad [B, T] ids/mask to `length` and add filler rows up to `batch` -> (ids, mask, pixels, high, live).

    Filler rows hold one real token (pad_id) so attention stays well defined; `live` marks the real rows.
    Per-sample pixels [B, I, ...] get zero images for the filler rows; the flat layout [N, ...] is unchanged
    (filler rows hold no image tokens).
    """
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, np.int32)
    b, t = ids.shape
    if t > length or b > batch:
        raise ValueError(f"prompt batch [{b}, {t}] does not fit the bucket [{batch}, {length}]")
    out_ids = np.full((batch, length), pad_id, np.int32)
    out_mask = np.zeros((batch, length), np.int32)
    out_ids[:b, length - t :], out_mask[:b, length - t :] = ids, mask
    out_mask[b:, -1] = 1
    live = np.arange(batch) < b

    def rows(x):
        if x is None or x.ndim != 5 or batch == b:
            return x
        # numpy in, numpy out: no device op to compile
        xp = np if isinstance(x, np.ndarray) else jnp
        return xp.concatenate([x, xp.zeros((batch - b, *x.shape[1:]), x.dtype)], axis=0)

    return out_ids, out_mask, rows(pixels), rows(high_pixels), live


def generate(
    cfg: ModelConfig,
    params,
    ids,
    mask,
    pixels=None,
    high_pixels=None,
    *,
    max_new_tokens: int,
    stop_ids: int | Sequence[int] | None = None,
    pad_id: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    rng: jax.Array | int | None = None,
    length_bucket: int = DEFAULT_LENGTH_BUCKET,
    batch_size: int | None = None,
    vocab_limit: int | None = None,
) -> np.ndarray:
    """Left-padded prompts ids/mask [B, T] -> new token ids [B, max_new_tokens] (numpy int32).

    Greedy when temperature == 0, else temperature + nucleus (top_p) sampling with `rng` (a key or an
    int seed). A row that emits one of `stop_ids` (up to STOP_SLOTS) emits `pad_id` afterwards. Only ids
    below `vocab_limit` (default: the embedding size) are generated.
    Pixels: per sample [B, I, H, W, 3] or flat [N, H, W, 3] (NHWC, normalised). The prompt length is
    padded to a multiple of `length_bucket` and the batch to `batch_size` rows (default: B), so calls
    within one bucket, greedy or sampled, share one compiled program.
    """
    ids, mask = np.asarray(ids), np.asarray(mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(
            f"ids/mask: expected two [B, T] arrays of one shape, got {ids.shape} and {mask.shape}"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature >= 0.0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if (np.diff(mask, axis=1) < 0).any() or not mask[:, -1].all():
        bad = np.nonzero((np.diff(mask, axis=1) < 0).any(axis=1) | (mask[:, -1] == 0))[0].tolist()
        raise ValueError(
            f"mask rows {bad} are not left-padded prompts (each must end with a real token)"
        )
    b, t = ids.shape
    batch = b if batch_size is None else batch_size
    if batch < b:
        raise ValueError(f"batch_size={batch_size} is smaller than the {b} prompts given")
    length = bucket_length(t, length_bucket)
    pids, pmask, px, hp, live = pad_to_bucket(
        ids, mask, pixels, high_pixels, length=length, batch=batch, pad_id=pad_id
    )
    key = (
        jax.random.key(0 if rng is None else int(rng))
        if rng is None or isinstance(rng, (int, np.integer))
        else rng
    )
    out = decode(
        cfg,
        params,
        jnp.asarray(pids),
        jnp.asarray(pmask),
        px,
        hp,
        jnp.asarray(_stop_array(stop_ids)),
        jnp.asarray(pad_id, jnp.int32),
        jnp.float32(temperature),
        jnp.float32(top_p),
        key,
        jnp.asarray(live),
        jnp.int32(cfg.llm.vocab_size if vocab_limit is None else vocab_limit),
        max_new_tokens=max_new_tokens,
    )
    return np.asarray(out)[:b]
