"""The grain input pipeline: per-source readers -> decode/preprocess/tokenize -> mixture -> packing -> batches.

```
source k (ArrayRecord, random access) ─[host::hosts]─ shuffle(seed+k, reshuffled per epoch) ─ repeat
   ─ map(ToSample: decode both views, template + tokenize; bad record -> Skipped) ─ threads/prefetch
all sources ─ PackedBatches: Mixer picks the source of every sample (language ratio + warm-up by
   step), RowPacker packs first-fit into [rows, seq_len] with image slots, Skipped are counted
   per source (a cap on the skip rate raises) ─ numpy batch per host
```
The iterator is a grain `DatasetIterator`: `get_state()` is a small JSON dict (step, mixer
credits, per-source counters and reader positions), so `grain.checkpoint.CheckpointSave`
saves it with the model and a restored run continues with exactly the same batches.
Each host reads only rows `host::hosts` of every source (disjoint, together the whole source).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from dsvl_jax import compat
from dsvl_jax.data import preprocess, records, template, tokenizer
from dsvl_jax.data.mixture import GROUPS, MULTIMODAL, TEXT, Mixer, RatioSchedule
from dsvl_jax.data.packing import RowPacker, Sample
from dsvl_jax.data.shards import open_source
from dsvl_jax.errors import Error
from dsvl_jax.model.config import model_config_from_dict

log = logging.getLogger(__name__)
MAX_LOGGED_IDS = 100  # per source, kept in the iterator state (all skips are logged and counted)


class DataError(Error, RuntimeError):
    """The data cannot feed training as configured (skip-rate cap, empty source, bad config)."""


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
            ex.id, self.source, r.ids.astype(np.int32), r.loss_mask.astype(np.uint8), pixels, high
        )


def check_tokenizer(tok, model_cfg) -> None:
    if why := tokenizer.model_mismatch(tok, model_cfg.image_token_id, model_cfg.llm.vocab_size):
        raise DataError(
            why + " (set --config.model.image_token_id / model.llm.vocab_size to match)"
        )


def fit_to_row(
    s: Sample, seq_len: int, image_slots: int, image_token_id: int, num_image_tokens: int
) -> tuple[Sample | None, str]:
    """Fit a sample to one row: cut what is past `seq_len` positions ('truncated'), never inside an image
    block — the cut moves to the start of that block and the images from there on are dropped. A sample
    with more images than slots, or with no supervised target left, -> (None, why)."""
    if s.num_images > image_slots:
        return None, f"{s.num_images} images > {image_slots} image slots per row"
    if s.length <= seq_len:
        return s, ""
    keep = seq_len + 1
    is_img = s.ids == image_token_id
    # complete image blocks inside the cut
    whole, partial = divmod(int(is_img[:keep].sum()), num_image_tokens)
    if partial:
        # start of the block that would be split
        keep = int(np.flatnonzero(is_img)[whole * num_image_tokens])
    if keep < 2 or not s.target_mask[1:keep].any():
        return None, f"{s.length + 1} tokens: nothing supervised fits in {seq_len} positions"
    px = None if s.pixels is None else s.pixels[:whole]
    hp = None if s.high_pixels is None else s.high_pixels[:whole]
    return dataclasses.replace(
        s,
        ids=s.ids[:keep],
        target_mask=s.target_mask[:keep],
        pixels=px if whole else None,
        high_pixels=hp if whole else None,
    ), "truncated"


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
        # group key ("all" when batches mix modalities) -> (sample, source, reader state before it)
        self.pending: dict[str, tuple[Sample | None, int, Any]] = {}

    # -- drawing ---------------------------------------------------------------------------
    def _next_from(self, k: int) -> tuple[Sample, Any]:
        """Next usable sample of source k (skips counted) and the reader state just before it."""
        it, c, name = self._parents[k], self.counts[self.names[k]], self.names[k]
        while True:
            before = it.get_state()
            item = next(it)
            c["seen"] += 1
            if isinstance(item, Skipped):
                c["skipped"][item.reason] = c["skipped"].get(item.reason, 0) + 1
                if len(c["skipped_ids"]) < MAX_LOGGED_IDS:
                    c["skipped_ids"].append([item.id, item.reason])
                log.warning(
                    "source %s: skipped record %s (%s) %s", name, item.id, item.reason, item.detail
                )
                self._check_skip_rate(name, c)
                continue
            s, why = self._fit(item)
            if s is None:
                c["skipped"]["too_long"] = c["skipped"].get("too_long", 0) + 1
                if len(c["skipped_ids"]) < MAX_LOGGED_IDS:
                    c["skipped_ids"].append([item.id, "too_long"])
                log.warning("source %s: skipped record %s (too_long) %s", name, item.id, why)
                self._check_skip_rate(name, c)
                continue
            if why:
                c["truncated"] += 1
            c["used"] += 1
            c["tokens"] += s.length
            return s, before

    def _check_skip_rate(self, name: str, c: dict) -> None:
        skipped = sum(c["skipped"].values())
        if c["seen"] >= self.min_seen and skipped / c["seen"] > self.max_skip_rate:
            raise DataError(
                f"source {name!r}: {skipped} of {c['seen']} records skipped "
                f"({skipped / c['seen']:.1%}) > data.max_skip_rate={self.max_skip_rate:.1%}: "
                f"{dict(c['skipped'])}"
            )

    def _draw(self, key: str, group: str | None) -> tuple[Sample, int, Any]:
        held = self.pending.pop(key, None)
        if held is not None:
            s, k, before = held
            if s is None:  # restored from a checkpoint: the reader is positioned at the held sample
                s, before = self._next_from_restored(k)
            return s, k, before
        k = (
            self.mixer.choose(self.step * self.stride)
            if group is None
            else self.mixer.choose_source(group)
        )
        s, before = self._next_from(k)
        return s, k, before

    def _next_from_restored(self, k: int):
        before = self._parents[k].get_state()
        item = next(self._parents[k])
        s, _ = self._fit(item)
        return s, before

    def _fit(self, s: Sample):
        return fit_to_row(
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
        readers = [p.get_state() for p in self._parents]
        for _, k, before in self.pending.values():
            # None: restored and not yet re-read, the reader already sits there
            if before is not None:
                readers[k] = before
        return {
            "step": self.step,
            "mixer": self.mixer.get_state(),
            "counts": self.stats(),
            "pending": {key: k for key, (_, k, _) in self.pending.items()},
            "readers": readers,
        }

    def set_state(self, state: dict) -> None:
        for p, s in zip(self._parents, state["readers"], strict=True):
            p.set_state(s)
        self.step = int(state["step"])
        self.mixer.set_state(state["mixer"])
        self.counts = {n: _restore_counts(state["counts"][n]) for n in self.names}
        self.pending = {key: (None, int(k), None) for key, k in state["pending"].items()}

    def stats(self) -> dict:
        """Per-source counters (seen, used, skipped by reason, truncated, tokens) for logging."""
        # a copy
        return {
            n: {
                **c,
                "skipped": dict(c["skipped"]),
                "skipped_ids": [list(x) for x in c["skipped_ids"]],
            }
            for n, c in self.counts.items()
        }


def _new_counts() -> dict:
    return {"seen": 0, "used": 0, "truncated": 0, "tokens": 0, "skipped": {}, "skipped_ids": []}


def _restore_counts(c: Mapping) -> dict:
    return {
        "seen": int(c["seen"]),
        "used": int(c["used"]),
        "truncated": int(c["truncated"]),
        "tokens": int(c["tokens"]),
        "skipped": dict(c["skipped"]),
        "skipped_ids": [list(x) for x in c.get("skipped_ids", [])],
    }


def build(
    cfg, *, host: int = 0, hosts: int = 1, sources: Sequence[SourceSpec] | None = None
) -> PackedBatches:
    """The run's input pipeline from a full config (model / train / data sections) for one host.

    `sources` replaces `cfg.data.sources` (tests pass in-memory lists of Examples).
    Host batches have `train.batch_size / hosts` rows.
    """
    mcfg = model_config_from_dict(cfg.model)
    d, t = cfg.data, cfg.train
    if t.batch_size % hosts:
        raise DataError(f"train.batch_size={t.batch_size} is not divisible by {hosts} hosts")
    if sources is None:
        sources = open_configured_sources(d)
    if not sources:
        raise DataError("no data sources: set data.sources (name -> {path, weight, group})")
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
        end=d.text_ratio, start=d.text_ratio_start, warmup_steps=d.modality_warmup_steps
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
        one_modality_per_batch=d.one_modality_per_batch,
        max_skip_rate=d.max_skip_rate,
        min_seen=d.min_seen,
        step_stride=max(1, d.workers),
    )
    # worker processes, each with its own share of every source; state stays checkpointable
    if d.workers > 0:
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=d.workers, per_worker_buffer_size=max(1, d.prefetch_batches)
            )
        )
    elif d.prefetch_batches > 0:  # batches are assembled in a background thread, ahead of the step
        ds = compat.thread_prefetch(ds, d.prefetch_batches)
    return ds


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
            for k in ("seen", "used", "truncated", "tokens"):
                t[k] += c[k]
            for r, v in c["skipped"].items():
                t["skipped"][r] = t["skipped"].get(r, 0) + v
            t["skipped_ids"] += c.get("skipped_ids", [])[: MAX_LOGGED_IDS - len(t["skipped_ids"])]
    return total


def open_configured_sources(d) -> list[SourceSpec]:
    """`data.sources` entries -> SourceSpecs over prepared shard folders (see data/shards.py)."""
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
