"""Decoding with the KV cache: greedy or sampled (temperature, top-k, top-p), repetition penalty, stop ids.

Prompts are left-padded [B, T]; the cache has T + max_new_tokens slots. Positions of real tokens count
from 0 in each row (cumsum of the mask), as HF `generate` does, so padding never shifts RoPE phases.

Three layers:
- two jitted programs: `prefill` (the prompt -> the cache and the first token) and `steps` (a
  `lax.while_loop` over new tokens up to a traced `until`, stopping early once every row has emitted a
  stop id; after its stop id a row emits `pad_id`). Static: cfg and max_new_tokens only; the `Sampler`
  values (temperature: 0 = greedy, picked at run time; top_k: 0 = off; top_p; repetition_penalty:
  1 = off; stop ids; pad id; the key) and `until` are traced, so changing them never recompiles. The
  loop state is donated from one `steps` call to the next, so the KV cache is updated in place.
  `decode` = prefill + one `steps` call to max_new_tokens; `greedy_generate` is `decode` with
  temperature 0 at the caller's shapes.
- `generate` (host): left-pads prompts to a length bucket (next multiple of `length_bucket`) and the
  batch to `batch_size` rows, so prompts of any length within a bucket reuse one compiled program.
- `generate_chunks` (host, streaming): the same two programs, `steps` called every `chunk_tokens`
  tokens. Call k + 1 is dispatched before call k's tokens are read, so the device always has the next
  chunk queued while the host detokenises; the host is off the critical path as long as its work per
  chunk takes less than the device's. The cost is one dispatch per chunk and at most one chunk computed
  past the point where the caller stops. The tokens equal `generate`'s bit for bit: the same executables
  run the same steps on the same inputs.

Token choice (`choose`), HF's order: logits of ids >= vocab_limit -> -inf; repetition penalty (CTRL /
HF: a token of the prompt or generated so far has a positive logit divided by the penalty, a negative
one multiplied); then argmax (temperature 0) or logits / temperature -> top-k (ties with the k-th kept)
-> top-p nucleus -> a categorical draw. With top_k 0 and penalty 1 every value is what it was without
them, so greedy and sampled tokens are unchanged bit for bit.

Sampling draws row r's step-i token with key fold_in(fold_in(rng, r), i): a row's tokens depend on the
seed, its row index and its own logits only, never on the batch padding, the bucket or the chunking.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

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
# times `prefill` or `steps` was traced (= compiled, per shape/static signature); see trace_count()
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


class Sampler(NamedTuple):
    """How the next token is chosen. Every field is traced: a new value never recompiles."""

    stop_ids: jax.Array  # [K] int32; -1 never matches
    pad_id: jax.Array  # int32: what a row emits after its stop id (and what filler rows emit)
    temperature: jax.Array  # f32; 0 = greedy
    top_p: jax.Array  # f32 in (0, 1]; 1 = off
    top_k: jax.Array  # int32; 0 = off
    repetition_penalty: jax.Array  # f32 > 0; 1 = off
    vocab_limit: jax.Array  # int32: only ids below it are generated
    rng: jax.Array  # a key


def make_sampler(
    cfg: ModelConfig,
    *,
    stop_ids=None,
    pad_id=0,
    temperature=0.0,
    top_p=1.0,
    top_k=0,
    repetition_penalty=1.0,
    vocab_limit=None,
    rng: jax.Array | None = None,
) -> Sampler:
    """Python or array values -> a Sampler of fixed dtypes (equal shapes share one program)."""
    stop = (
        jnp.full((1,), -1, jnp.int32)
        if stop_ids is None
        else jnp.asarray(stop_ids, jnp.int32).reshape(-1)
    )
    return Sampler(
        stop,
        jnp.asarray(pad_id, jnp.int32),
        jnp.asarray(temperature, jnp.float32),
        jnp.asarray(top_p, jnp.float32),
        jnp.asarray(top_k, jnp.int32),
        jnp.asarray(repetition_penalty, jnp.float32),
        jnp.asarray(cfg.llm.vocab_size if vocab_limit is None else vocab_limit, jnp.int32),
        jax.random.key(0) if rng is None else rng,
    )


class DecodeState(NamedTuple):
    """What one decoding call hands the next; donated, so the KV cache is updated in place."""

    cache: KVCache
    segments: jax.Array  # [B, T + N] int32: the prompt mask, then ones
    tok: jax.Array  # [B] int32: the last token, fed next
    pos: jax.Array  # [B] int32: its position
    seen: jax.Array  # [B, V] bool: ids in the prompt or generated so far (repetition penalty)


class Progress(NamedTuple):
    """The tokens so far. Not donated: the host reads it while the next call runs."""

    step: jax.Array  # int32: columns of `tokens` generated
    done: jax.Array  # [B] bool: the row emitted a stop id (or is a filler row)
    tokens: jax.Array  # [B, N] int32; pad_id past `step` and after a row's stop id


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: jax.Array) -> jax.Array:
    """[B, V] logits, [B, V] bool -> logits with seen tokens penalised (CTRL / HF rule).

    A seen token's logit is divided by the penalty when positive and multiplied by it when negative,
    so a penalty > 1 always makes it less likely. penalty 1 returns the logits unchanged, bit for bit.
    """
    penalised = jnp.where(logits > 0, logits / penalty, logits * penalty)
    return jnp.where(seen & (penalty != 1), penalised, logits)


def filter_logits(
    logits: jax.Array, temperature: jax.Array, top_p: jax.Array, top_k: jax.Array | int = 0
) -> jax.Array:
    """[B, V] logits -> logits / temperature, tokens outside the top k and then the top-p nucleus -inf.

    top_k 0 keeps all; ties with the k-th value are kept (HF's rule). The nucleus is the smallest set
    of most likely remaining tokens whose probability reaches top_p (HF's rule: a token is kept when
    the mass of the tokens above it is below top_p; the top token always is). One sort serves both.
    """
    x = logits / temperature
    srt = -jnp.sort(-x, axis=-1)  # descending
    v = x.shape[-1]
    top_k = jnp.asarray(top_k, jnp.int32)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
    kth = jax.lax.dynamic_index_in_dim(srt, k - 1, axis=-1)  # [B, 1]; the smallest value when off
    srt = jnp.where(srt >= kth, srt, -jnp.inf)
    p = jax.nn.softmax(srt, axis=-1)
    keep = (jnp.cumsum(p, axis=-1) - p) < top_p
    last = jnp.maximum(jnp.sum(keep, axis=-1) - 1, 0)
    threshold = jnp.maximum(jnp.take_along_axis(srt, last[:, None], axis=-1), kth)
    return jnp.where(x >= threshold, x, -jnp.inf)


def nucleus_filter(logits: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """`filter_logits` without top-k."""
    return filter_logits(logits, temperature, top_p, 0)


def choose(logits: jax.Array, seen: jax.Array, step, s: Sampler, keys: jax.Array) -> jax.Array:
    """[B, V] f32 logits -> next tokens [B] int32 (the module docstring's order).

    Greedy vs sampled is chosen at run time (lax.cond runs one branch), so both share one program.
    """
    logits = jnp.where(jnp.arange(logits.shape[-1]) < s.vocab_limit, logits, -jnp.inf)
    logits = apply_repetition_penalty(logits, seen, s.repetition_penalty)

    def greedy(x):
        return jnp.argmax(x, axis=-1).astype(jnp.int32)

    def sample(x):
        x = filter_logits(x, jnp.maximum(s.temperature, 1e-30), s.top_p, s.top_k)
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, step)
        return jax.vmap(jax.random.categorical)(step_keys, x).astype(jnp.int32)

    return jax.lax.cond(s.temperature > 0, sample, greedy, logits)


def _row_keys(rng: jax.Array, b: int) -> jax.Array:
    return jax.vmap(lambda r: jax.random.fold_in(rng, r))(jnp.arange(b))


def _is_stop(tok: jax.Array, stop_ids: jax.Array) -> jax.Array:
    return jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)


def _see(seen: jax.Array, tok: jax.Array) -> jax.Array:
    return seen.at[jnp.arange(tok.shape[0]), tok].set(True, mode="drop")


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"))
def prefill(
    cfg: ModelConfig,
    params,
    ids: jax.Array,
    mask: jax.Array,
    pixels,
    high_pixels,
    live: jax.Array,
    s: Sampler,
    *,
    max_new_tokens: int,
) -> tuple[DecodeState, Progress]:
    """Left-padded ids/mask [B, T] (+ pixels) -> the filled cache and the first new token.

    live [B] bool (False: a filler row, emits pad_id only and never holds up the early exit).
    """
    _TRACES[0] += 1
    model = DeepseekVL(cfg)
    b, t = ids.shape
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
    v = cfg.llm.vocab_size
    prompt = jnp.where(mask > 0, ids, v)  # padding -> out of range: dropped
    seen = jnp.zeros((b, v), bool).at[jnp.arange(b)[:, None], prompt].set(True, mode="drop")
    logits = head_logits(params, cfg, hidden[:, -1:])[:, 0]
    first = jnp.where(live, choose(logits, seen, 0, s, _row_keys(s.rng, b)), s.pad_id)
    tokens = jnp.full((b, max_new_tokens), s.pad_id, jnp.int32).at[:, 0].set(first)
    state = DecodeState(cache, segments, first, pos[:, -1] + 1, _see(seen, first))
    return state, Progress(jnp.asarray(1, jnp.int32), ~live | _is_stop(first, s.stop_ids), tokens)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("state",))
def steps(
    cfg: ModelConfig,
    params,
    state: DecodeState,
    progress: Progress,
    s: Sampler,
    until: jax.Array | int,
) -> tuple[DecodeState, Progress]:
    """Generate new tokens until `until` columns are filled (traced, clipped to N) or every row is done."""
    _TRACES[0] += 1
    model = DeepseekVL(cfg)
    b, n = progress.tokens.shape
    t = state.segments.shape[1] - n
    keys = _row_keys(s.rng, b)
    until = jnp.minimum(jnp.asarray(until, jnp.int32), n)

    def cond(c):
        _, pr = c
        return (pr.step < until) & ~jnp.all(pr.done)

    def body(c):
        st, pr = c
        i = pr.step
        lg, cache = model.apply(
            {"params": params},
            st.tok[:, None],
            st.pos[:, None],
            st.segments,
            cache=st.cache,
            cache_index=t + i - 1,
        )
        nxt = jnp.where(pr.done, s.pad_id, choose(lg[:, 0], st.seen, i, s, keys))
        tokens = jax.lax.dynamic_update_slice_in_dim(pr.tokens, nxt[:, None], i, axis=1)
        st = DecodeState(_constrain_cache(cache), st.segments, nxt, st.pos + 1, _see(st.seen, nxt))
        return st, Progress(i + 1, pr.done | _is_stop(nxt, s.stop_ids), tokens)

    return jax.lax.while_loop(cond, body, (state, progress))


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
    top_k: jax.Array | int = 0,
    repetition_penalty: jax.Array | float = 1.0,
) -> jax.Array:
    """Left-padded ids/mask [B, T] (+ pixels) -> new token ids [B, max_new_tokens]: prefill + steps.

    temperature 0: greedy, > 0: sampling with rng (a key). stop_ids [K] int (-1 entries never match);
    live [B] bool (False: a filler row); vocab_limit: only ids below it are generated (a tokenizer
    smaller than the embedding).
    """
    s = make_sampler(
        cfg,
        stop_ids=stop_ids,
        pad_id=pad_id,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        vocab_limit=vocab_limit,
        rng=rng,
    )
    live = jnp.ones(ids.shape[:1], bool) if live is None else jnp.asarray(live, bool)
    state, progress = prefill(
        cfg, params, ids, mask, pixels, high_pixels, live, s, max_new_tokens=max_new_tokens
    )
    return steps(cfg, params, state, progress, s, np.int32(max_new_tokens))[1].tokens


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
        pad_id,
        0.0,
        1.0,
        jax.random.key(0),
        jnp.ones(ids.shape[:1], bool),
        cfg.llm.vocab_size,
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


class Chunk(NamedTuple):
    """The tokens generated so far, on the host, as `generate_chunks` yields them."""

    tokens: np.ndarray  # [B, max_new_tokens] int32: columns < steps generated, pad_id past them
    steps: int  # columns generated so far (the last chunk: max_new_tokens, or every row done)
    done: np.ndarray  # [B] bool: the row emitted a stop id (pad_id after it)


def generate_chunks(
    cfg: ModelConfig,
    params,
    ids,
    mask,
    pixels=None,
    high_pixels=None,
    *,
    max_new_tokens: int,
    chunk_tokens: int,
    **options,
) -> Iterator[Chunk]:
    """`generate` (options: its keyword arguments), yielding the tokens so far after the first token
    and then every `chunk_tokens` tokens.

    The last chunk holds `generate`'s tokens exactly. Pipelined: the next call is dispatched before a
    chunk is read, so the device never waits on the host between chunks (module docstring). Stop
    iterating (e.g. on a stop string) to stop decoding; at most one more chunk was queued.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    b, args, s = _prepare(cfg, ids, mask, pixels, high_pixels, max_new_tokens, **options)
    state, progress = prefill(cfg, params, *args, s, max_new_tokens=max_new_tokens)
    until, queued = 1, [progress]
    while queued:
        if until < max_new_tokens:
            until = min(until + chunk_tokens, max_new_tokens)
            state, progress = steps(cfg, params, state, progress, s, np.int32(until))
            queued.append(progress)
        got = queued.pop(0)
        step, done = int(got.step), np.asarray(got.done)
        yield Chunk(np.asarray(got.tokens)[:b], step, done[:b])
        if step >= max_new_tokens or done.all():
            return


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
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    rng: jax.Array | int | None = None,
    length_bucket: int = DEFAULT_LENGTH_BUCKET,
    batch_size: int | None = None,
    vocab_limit: int | None = None,
) -> np.ndarray:
    """Left-padded prompts ids/mask [B, T] -> new token ids [B, max_new_tokens] (numpy int32).

    Greedy when temperature == 0, else temperature + top-k (0 = off) + nucleus (top_p) sampling with
    `rng` (a key or an int seed); repetition_penalty (1 = off, > 1 discourages repeats) applies to
    both. A row that emits one of `stop_ids` (up to STOP_SLOTS) emits `pad_id` afterwards. Only ids
    below `vocab_limit` (default: the embedding size) are generated.
    Pixels: per sample [B, I, H, W, 3] or flat [N, H, W, 3] (NHWC, normalised). The prompt length is
    padded to a multiple of `length_bucket` and the batch to `batch_size` rows (default: B), so calls
    within one bucket, whatever the sampling settings, share one compiled program.
    """
    b, args, s = _prepare(
        cfg,
        ids,
        mask,
        pixels,
        high_pixels,
        max_new_tokens,
        stop_ids=stop_ids,
        pad_id=pad_id,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        rng=rng,
        length_bucket=length_bucket,
        batch_size=batch_size,
        vocab_limit=vocab_limit,
    )
    state, progress = prefill(cfg, params, *args, s, max_new_tokens=max_new_tokens)
    _, progress = steps(cfg, params, state, progress, s, np.int32(max_new_tokens))
    return np.asarray(progress.tokens)[:b]


def _prepare(
    cfg: ModelConfig,
    ids,
    mask,
    pixels,
    high_pixels,
    max_new_tokens: int,
    *,
    stop_ids: int | Sequence[int] | None = None,
    pad_id: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    rng: jax.Array | int | None = None,
    length_bucket: int = DEFAULT_LENGTH_BUCKET,
    batch_size: int | None = None,
    vocab_limit: int | None = None,
) -> tuple[int, tuple, Sampler]:
    """Check a `generate` request, pad it to its bucket -> (B, prefill's array arguments, Sampler)."""
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
    if int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k}")
    if not 0.0 < repetition_penalty < np.inf:
        raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty}")
    if (np.diff(mask, axis=1) < 0).any() or not mask[:, -1].all():
        bad = np.nonzero((np.diff(mask, axis=1) < 0).any(axis=1) | (mask[:, -1] == 0))[0].tolist()
        raise ValueError(
            f"mask rows {bad} are not left-padded prompts (each must end with a real token)"
        )
    b, t = ids.shape
    batch = b if batch_size is None else batch_size
    if batch < b:
        raise ValueError(f"batch_size={batch_size} is smaller than the {b} prompts given")
    pids, pmask, px, hp, live = pad_to_bucket(
        ids,
        mask,
        pixels,
        high_pixels,
        length=bucket_length(t, length_bucket),
        batch=batch,
        pad_id=pad_id,
    )
    key = (
        jax.random.key(0 if rng is None else int(rng))
        if rng is None or isinstance(rng, (int, np.integer))
        else rng
    )
    s = make_sampler(
        cfg,
        stop_ids=_stop_array(stop_ids),
        pad_id=pad_id,
        temperature=temperature,
        top_p=top_p,
        top_k=int(top_k),
        repetition_penalty=repetition_penalty,
        vocab_limit=vocab_limit,
        rng=key,
    )
    return b, (jnp.asarray(pids), jnp.asarray(pmask), px, hp, jnp.asarray(live)), s
