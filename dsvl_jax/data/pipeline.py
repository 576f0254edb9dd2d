"""The grain input pipeline: per-source readers -> decode/preprocess/tokenize -> mixture -> packing -> batches.

```
source k (ArrayRecord, random access) ─[host::hosts]─ shuffle(seed+k, reshuffled per epoch) ─ repeat
   ─ map(ToSample: decode both views, template + tokenize; bad record -> Skipped) ─ threads/prefetch
all sources ─ PackedBatches: Mixer picks the source of every sample (language ratio + warm-up by
   step), a sample too big for a row is cut into consecutive row-sized pieces (data/splitting.py:
   long text -> windows, many images -> at image boundaries, conversations -> between turns),
   RowPacker packs first-fit into [rows, seq_len] with image slots, Skipped records and what could
   not be placed are counted per source with their ids (a cap on the skip rate raises) ─ numpy
   batch per host
```
The iterator is a grain `DatasetIterator`: `get_state()` is a small JSON dict (step, mixer
credits, per-source counters, reader positions and how many pieces of a cut sample were used), so
`grain.checkpoint.CheckpointSave` saves it with the model and a restored run continues with
exactly the same batches.
Each host reads only rows `host::hosts` of every source (disjoint, together the whole source).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from dsvl_jax import compat
from dsvl_jax.data import preprocess, records, template, tokenizer
from dsvl_jax.data.mixture import GROUPS, MULTIMODAL, TEXT, Mixer, RatioSchedule
from dsvl_jax.data.packing import RowPacker, Sample
from dsvl_jax.data.shards import check_sources, open_source
from dsvl_jax.data.splitting import split_sample
from dsvl_jax.errors import Error
from dsvl_jax.model.config import model_config_from_dict

log = logging.getLogger(__name__)
MAX_LOGGED_IDS = 100  # per source, kept in the iterator state (all skips are logged and counted)
MAX_SOURCES = 16  # = train/step.py MAX_SOURCES: the step reports the loss of each source
PARENT_POLL_S = 1.0  # how often a worker process checks that the process that spawned it is alive


class DataError(Error, RuntimeError):
    """The data cannot feed training as configured (skip-rate cap, empty source, bad config)."""


class SkipRateError(DataError):
    """A source skipped more than data.max_skip_rate of its records; `stats` holds every source's counters."""

    def __init__(self, stats: dict, message: str):
        super().__init__(message)
        self.stats = stats


@dataclasses.dataclass
class Skipped:
    """A record the skip policy dropped; counted by `PackedBatches`, never silently lost."""

    id: str
    source: int
    reason: str
    detail: str = ""


class ToSample:
    """Example -> Sample (uint8 views + ids + target mask), or Skipped. Picklable: heavy state is lazy."""

    def __init__(
        self,
        source: int,
        tokenizer_path: str,
        model_cfg,
        max_pixels: int = records.DEFAULT_MAX_PIXELS,
        system_prompt: str = template.SYSTEM_DEFAULT,
    ):
        self.source, self.tokenizer_path, self.model_cfg, self.max_pixels = (
            source,
            tokenizer_path,
            model_cfg,
            max_pixels,
        )
        self.system_prompt = template.system_prompt(system_prompt)
        self._tok = self._spec = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_tok", "_spec")}

    def __setstate__(self, d):
        self.__dict__.update(d, _tok=None, _spec=None)

    def _ready(self):
        if self._tok is None:
            self._tok = tokenizer.load_tokenizer(self.tokenizer_path)
            self._spec = preprocess.image_spec(self.model_cfg)
            check_tokenizer(self._tok, self.model_cfg)
        return self._tok, self._spec

    def __call__(self, ex: records.Example | Mapping) -> Sample | Skipped:
        tok, spec = self._ready()
        if not isinstance(ex, records.Example):
            ex = records.from_features(ex)
        try:
            records.validate(ex)
            views = [
                preprocess.preprocess(records.decode_image(b, self.max_pixels, ex.id), spec)
                for b in ex.images
            ]
            r = template.render(
                ex, tok, self.model_cfg.num_image_tokens, default_system=self.system_prompt
            )
        except records.BadRecord as e:
            return Skipped(ex.id, self.source, e.reason, e.detail)
        pixels = np.stack([v["pixels"] for v in views]) if views else None
        high = np.stack([v["high_pixels"] for v in views]) if views and spec.high_size else None
        return Sample(
            ex.id,
            self.source,
            r.ids.astype(np.int32),
            r.loss_mask.astype(np.uint8),
            pixels,
            high,
            r.breaks,
        )


def check_tokenizer(tok, model_cfg) -> None:
    if why := tokenizer.model_mismatch(tok, model_cfg.image_token_id, model_cfg.llm.vocab_size):
        raise DataError(
            why + " (set --config.model.image_token_id / model.llm.vocab_size to match)"
        )


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    name: str
    data: Any  # random-access source of Examples (len + getitem)
    weight: float
    group: str  # TEXT | MULTIMODAL


def source_dataset(
    spec: SourceSpec,
    index: int,
    fn: Callable,
    *,
    seed: int,
    host: int,
    hosts: int,
    read: grain.ReadOptions,
) -> grain.IterDataset:
    """One source: this host's rows, shuffled (new order every epoch), repeated, mapped, prefetched."""
    n = len(spec.data)
    if n < hosts:
        raise DataError(f"source {spec.name!r} has {n} records, fewer than {hosts} hosts")
    ds = grain.MapDataset.source(spec.data)[host::hosts]
    ds = ds.shuffle(seed=(seed * 1000003 + index) % 2**32).repeat().map(fn)
    return ds.to_iter_dataset(read)


class PackedBatches(grain.IterDataset):
    """Mix the per-source datasets and pack them into fixed-shape host batches."""

    def __init__(
        self,
        parents: Sequence[grain.IterDataset],
        specs: Sequence[SourceSpec],
        *,
        schedule: RatioSchedule,
        rows: int,
        seq_len: int,
        image_slots: int,
        low_size: int,
        high_size: int | None,
        image_token_id: int,
        num_image_tokens: int,
        pack: bool = True,
        one_modality_per_batch: bool = False,
        max_skip_rate: float = 0.01,
        min_seen: int = 200,
        step_stride: int = 1,
    ):
        super().__init__(list(parents))
        self.specs, self.kw = (
            tuple(specs),
            dict(
                schedule=schedule,
                rows=rows,
                seq_len=seq_len,
                image_slots=image_slots,
                low_size=low_size,
                high_size=high_size,
                image_token_id=image_token_id,
                num_image_tokens=num_image_tokens,
                pack=pack,
                one_modality_per_batch=one_modality_per_batch,
                max_skip_rate=max_skip_rate,
                min_seen=min_seen,
                step_stride=step_stride,
            ),
        )

    def __iter__(self) -> PackedBatchIterator:
        return PackedBatchIterator([p.__iter__() for p in self._parents], self.specs, **self.kw)


class PackedBatchIterator(grain.DatasetIterator):
    def __init__(
        self,
        parents,
        specs,
        *,
        schedule,
        rows,
        seq_len,
        image_slots,
        low_size,
        high_size,
        image_token_id,
        num_image_tokens,
        pack,
        one_modality_per_batch,
        max_skip_rate,
        min_seen,
        step_stride=1,
    ):
        super().__init__(list(parents))
        self.image_token_id, self.num_image_tokens = image_token_id, num_image_tokens
        self.specs = specs
        self.names = [s.name for s in specs]
        self.mixer = Mixer([s.group for s in specs], [s.weight for s in specs], schedule)
        self.packer = RowPacker(rows, seq_len, image_slots, low_size, high_size, pack)
        self.one_modality = one_modality_per_batch
        self.max_skip_rate, self.min_seen = max_skip_rate, min_seen
        self.step = 0
        self.stride = step_stride  # with W worker processes each emits every W-th batch: global step ~ step * W
        self.counts = {n: _new_counts() for n in self.names}
        # per source: pieces of the sample last read that are still to be handed out (a sample too
        # big for a row is cut into several, data/splitting.py), with the reader state before that
        # sample and the index of the next piece
        self.queued: list[_Queue | None] = [None] * len(specs)
        # per source: after a restore, how many pieces of the next sample were already handed out
        self.resume: list[int | None] = [None] * len(specs)
        # group key ("all" when batches mix modalities) -> (piece, source, its position)
        self.pending: dict[str, tuple[Sample | None, int, tuple | None]] = {}

    # -- drawing ---------------------------------------------------------------------------
    def _next_from(self, k: int) -> tuple[Sample, tuple]:
        """Next row-sized piece of source k and its position (reader state before its sample, index)."""
        q = self.queued[k]
        while q is None or q.next >= len(q.pieces):
            q = self.queued[k] = self._read(k)
        q.next += 1
        return q.pieces[q.next - 1], (q.before, q.next - 1)

    def _read(self, k: int) -> _Queue:
        """Read source k's next usable sample and cut it into pieces (skips and losses counted)."""
        it, c, name = self._parents[k], self.counts[self.names[k]], self.names[k]
        if self.resume[k] is not None:  # restored: re-read the sample whose pieces were in flight
            before, skip = it.get_state(), self.resume[k]
            self.resume[k] = None
            return _Queue(self._split(next(it)).pieces, before, skip)
        while True:
            before = it.get_state()
            item = next(it)
            c["seen"] += 1
            if isinstance(item, Skipped):
                self._lost(name, c, item.id, item.reason, item.detail)
                continue
            sp = self._split(item)
            if sp.lost_reason:
                self._lost(name, c, item.id, sp.lost_reason, sp.lost_detail)
            if not sp.pieces:
                continue
            c["used"] += 1
            c["tokens"] += sum(p.length for p in sp.pieces)
            if sp.cut:
                text = item.num_images == 0 and item.breaks is None
                c["chunked" if text else "split"] += 1
                c["chunks" if text else "split_pieces"] += len(sp.pieces)
            return _Queue(sp.pieces, before, 0)

    def _lost(self, name: str, c: dict, rid: str, reason: str, detail: str) -> None:
        c["skipped"][reason] = c["skipped"].get(reason, 0) + 1
        if len(c["skipped_ids"]) < MAX_LOGGED_IDS:
            c["skipped_ids"].append([rid, reason])
        log.warning("source %s: skipped record %s (%s) %s", name, rid, reason, detail)
        self._check_skip_rate(name, c)

    def _check_skip_rate(self, name: str, c: dict) -> None:
        skipped = sum(c["skipped"].values())
        if c["seen"] >= self.min_seen and skipped / c["seen"] > self.max_skip_rate:
            raise SkipRateError(
                self.stats(),
                f"source {name!r}: {skipped} of {c['seen']} records skipped "
                f"({skipped / c['seen']:.1%}) > data.max_skip_rate={self.max_skip_rate:.1%}: "
                f"{dict(c['skipped'])}",
            )

    def _draw(self, key: str, group: str | None) -> tuple[Sample, int, tuple]:
        held = self.pending.pop(key, None)
        if held is not None and held[0] is not None:
            return held
        if held is not None:  # restored: the held piece is the next one of its source
            k = held[1]
        elif group is None:
            k = self.mixer.choose(self.step * self.stride)
        else:
            k = self.mixer.choose_source(group)
        s, pos = self._next_from(k)
        return s, k, pos

    def _split(self, s: Sample):
        return split_sample(
            s,
            self.packer.seq_len,
            self.packer.image_slots,
            self.image_token_id,
            self.num_image_tokens,
        )

    def __next__(self) -> dict[str, np.ndarray]:
        group = self.mixer.choose_group(self.step * self.stride) if self.one_modality else None
        key = group or "all"
        while True:
            s, k, before = self._draw(key, group)
            if not self.packer.add(s):
                self.pending[key] = (s, k, before)
                break
        with_images = not (self.one_modality and group == TEXT)
        batch = self.packer.emit(with_images=with_images)
        self.step += 1
        return batch

    # -- state -----------------------------------------------------------------------------
    def get_state(self) -> dict:
        """Each reader is saved before the sample whose pieces are not all consumed yet (a pending
        piece, or pieces still queued), with the number of its pieces already handed out."""
        readers = [p.get_state() for p in self._parents]
        skip = [0] * len(self._parents)
        for k, q in enumerate(self.queued):
            if q is not None and q.next < len(q.pieces):
                readers[k], skip[k] = q.before, q.next
            elif self.resume[k] is not None:  # restored, not re-read yet: the reader sits there
                skip[k] = self.resume[k]
        for _, k, pos in self.pending.values():
            if pos is not None:  # the pending piece comes before anything still queued
                readers[k], skip[k] = pos
        return {
            "step": self.step,
            "mixer": self.mixer.get_state(),
            "counts": self.stats(),
            "pending": {key: k for key, (_, k, _) in self.pending.items()},
            "readers": readers,
            "pieces_done": skip,
        }

    def set_state(self, state: dict) -> None:
        for p, s in zip(self._parents, state["readers"], strict=True):
            p.set_state(s)
        self.step = int(state["step"])
        self.mixer.set_state(state["mixer"])
        self.counts = {n: _restore_counts(state["counts"][n]) for n in self.names}
        self.pending = {key: (None, int(k), None) for key, k in state["pending"].items()}
        done = state.get("pieces_done", [0] * len(self._parents))
        self.queued = [None] * len(self._parents)
        self.resume = [
            int(done[k]) if (done[k] or k in {int(v) for v in state["pending"].values()}) else None
            for k in range(len(self._parents))
        ]

    def stats(self) -> dict:
        """Per-source counters for logging: records seen and used, skipped by reason (with ids), samples
        split at image/turn boundaries, text samples chunked, the pieces those became, tokens."""
        # a copy
        return {
            n: {
                **c,
                "skipped": dict(c["skipped"]),
                "skipped_ids": [list(x) for x in c["skipped_ids"]],
            }
            for n, c in self.counts.items()
        }


@dataclasses.dataclass
class _Queue:
    pieces: list[Sample]
    before: Any  # reader state before the sample the pieces come from
    next: int  # index of the next piece to hand out


# records seen and used; samples split at image/turn boundaries and the pieces they became; text
# samples chunked into windows and the windows; tokens (positions) handed to the packer
COUNTS = ("seen", "used", "split", "split_pieces", "chunked", "chunks", "tokens")


def _new_counts() -> dict:
    return {**dict.fromkeys(COUNTS, 0), "skipped": {}, "skipped_ids": []}


def _restore_counts(c: Mapping) -> dict:
    return {
        **{k: int(c.get(k, 0)) for k in COUNTS},
        "skipped": dict(c["skipped"]),
        "skipped_ids": [list(x) for x in c.get("skipped_ids", [])],
    }


def build(
    cfg,
    *,
    host: int = 0,
    hosts: int = 1,
    sources: Sequence[SourceSpec] | None = None,
    settled: bool = False,
) -> PackedBatches:
    """The run's input pipeline from a full config (model / train / data sections) for one host.

    `sources` replaces `cfg.data.sources` (tests pass in-memory lists of Examples).
    Host batches have `train.batch_size / hosts` rows. `settled` (held-out evaluation): the mix
    after the modality warm-up from the first batch, and every batch mixing both modalities.
    """
    mcfg = model_config_from_dict(cfg.model)
    d, t = cfg.data, cfg.train
    if t.batch_size % hosts:
        raise DataError(f"train.batch_size={t.batch_size} is not divisible by {hosts} hosts")
    if sources is None:
        sources = open_configured_sources(d)
    if not sources:
        raise DataError("no data sources: set data.sources (name -> {path, weight, group})")
    if len(sources) > MAX_SOURCES:
        raise DataError(
            f"{len(sources)} data sources: at most {MAX_SOURCES} (their losses are reported apart)"
        )
    read = grain.ReadOptions(num_threads=d.num_threads, prefetch_buffer_size=d.prefetch)
    parents = [
        source_dataset(
            s,
            k,
            ToSample(k, d.tokenizer, mcfg, d.max_pixels, d.system_prompt),
            seed=d.seed,
            host=host,
            hosts=hosts,
            read=read,
        )
        for k, s in enumerate(sources)
    ]
    schedule = RatioSchedule(
        end=d.text_ratio,
        start=d.text_ratio_start,
        warmup_steps=0 if settled else d.modality_warmup_steps,
    )
    ds = PackedBatches(
        parents,
        sources,
        schedule=schedule,
        rows=t.batch_size // hosts,
        seq_len=t.seq_len,
        image_slots=t.images_per_sample,
        low_size=mcfg.siglip.image_size,
        high_size=mcfg.sam.image_size if mcfg.hybrid else None,
        image_token_id=mcfg.image_token_id,
        num_image_tokens=mcfg.num_image_tokens,
        pack=d.pack,
        one_modality_per_batch=d.one_modality_per_batch and not settled,
        max_skip_rate=d.max_skip_rate,
        min_seen=d.min_seen,
        step_stride=max(1, d.workers),
    )
    # worker processes, each with its own share of every source; state stays checkpointable
    if d.workers > 0:
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=d.workers, per_worker_buffer_size=max(1, d.prefetch_batches)
            ),
            worker_init_fn=functools.partial(_exit_with_parent, os.getpid()),
        )
    elif d.prefetch_batches > 0:  # batches are assembled in a background thread, ahead of the step
        ds = compat.thread_prefetch(ds, d.prefetch_batches)
    return ds


def _exit_with_parent(parent: int, worker: int, workers: int) -> None:
    """grain's worker_init_fn: this worker ends with the process that built the pipeline, not on signals.

    grain's workers are daemon processes, which only their parent's orderly exit ends: a trainer killed
    with -9 (or by the OOM killer) left them running (~240 MB each). A daemon thread polls os.getppid()
    (the worker is re-parented when the trainer dies) every PARENT_POLL_S. Not prctl(PR_SET_PDEATHSIG):
    Linux sends that signal when the *thread* that started the child exits, and grain starts its
    workers from the threads of its interleave pool, so a pool thread ending would kill a live worker.
    """

    # Ctrl-C reaches the whole process group and some launchers (slurm, a VM's shutdown) SIGTERM every
    # process: the trainer decides (it saves a checkpoint, which needs its workers' state), then stops
    # its workers (grain: a stop event, join, kill)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name=f"exit-with-parent-{worker}", daemon=True).start()


def iterator_stats(it) -> dict:
    """Per-source counters of a pipeline iterator, summed over worker processes when there are any."""
    if hasattr(it, "stats"):
        return it.stats()
    state = it.get_state()
    if "counts" in state:  # a thread-prefetch iterator: the state of the batch last handed out
        return {n: _restore_counts(c) for n, c in state["counts"].items()}
    total: dict = {}
    for st in state.get("iterators_in_use_states", []):
        for name, c in st["counts"].items():
            t = total.setdefault(name, _new_counts())
            for k in COUNTS:
                t[k] += c.get(k, 0)
            for r, v in c["skipped"].items():
                t["skipped"][r] = t["skipped"].get(r, 0) + v
            t["skipped_ids"] += c.get("skipped_ids", [])[: MAX_LOGGED_IDS - len(t["skipped_ids"])]
    return total


def source_labels(d) -> list[tuple[str, str]]:
    """(name, group) of each configured source, in source-index order (the `source_ids` - 1 of a batch)."""
    return [(s.name, s.group) for s in open_configured_sources(d)]


def open_configured_sources(d) -> list[SourceSpec]:
    """`data.sources` entries -> SourceSpecs over prepared shard folders (see data/shards.py)."""
    check_sources(d.sources)  # every missing source in one error, with the commands that write it
    out = []
    for name, s in d.sources.items():
        group = s.get("group", "") or ""
        if group and group not in GROUPS:
            raise DataError(f"data.sources.{name}.group={group!r}: one of {GROUPS}")
        src = open_source(s.path)
        if not group:  # from the first record: text-only sources are the language share
            first = src[0] if isinstance(src[0], records.Example) else records.from_features(src[0])
            group = TEXT if first.kind == "text" else MULTIMODAL
        out.append(SourceSpec(name, src, float(s.get("weight", 1.0)), group))
    return out
