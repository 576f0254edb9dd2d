"""Per-step bookkeeping of the training loop: host-side counts and timers, one-step-late metrics,
skipped (non-finite) steps, and the log records.

The loop hands every dispatched step to `StepTracker.dispatched`; the tracker reads the *previous*
step's device metrics then (so the host never waits on the step in flight), counts a skipped update,
stops the run after `train.max_bad_steps` of them in a row, and writes a record every
`log.every_steps` (or when forced: before a checkpoint, at the end) with loss, learning rate, step
time, tokens/s (text and image apart), MFU and the share of time spent waiting for data.

Losses in a record are means over the steps since the previous record, weighted by loss tokens
(`loss`; `loss_step` is the last step's alone), also on text-only and multimodal sources
(`loss_text`, `loss_multimodal`) and per source (`loss/<name>`): the modality competition of
stage 2 shows as these curves moving apart. The data counters (`samples_*`, `text_chunks`) are the
input pipeline's totals so far.

Each applied step's loss also goes to the loss-spike guard (train/spikes.py, when enabled): `spike` is
set once it calls for a rollback, which the loop carries out and reports back with `rewind`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from dsvl_jax.errors import Error
from dsvl_jax.train import metrics as M
from dsvl_jax.train.logger import TEXT_KEYS, MetricsLogger
from dsvl_jax.train.spikes import Spike, SpikeGuard

log = logging.getLogger(__name__)


class RunError(Error, RuntimeError):
    """The run cannot go on (too many non-finite steps, a refused checkpoint)."""


@dataclasses.dataclass(frozen=True)
class BatchCounts:
    """What one host batch holds: text and image tokens (scaled to the global batch: hosts feed equal
    shares), the share of row positions holding tokens and of image slots holding images."""

    text_tokens: int
    image_tokens: int
    row_fill: float
    image_slot_fill: float | None  # None: no image slots (a text-only batch)


def batch_counts(batch: dict, image_token_id: int, num_image_tokens: int) -> BatchCounts:
    seg = batch["segments"] > 0
    img = int(((batch["ids"] == image_token_id) & seg).sum())
    n = jax.process_count()
    slots = batch["pixels"].shape[0] * batch["pixels"].shape[1] if "pixels" in batch else 0
    # an image block's last token is a target only, not an input: count blocks by their first token
    images = int(np.ceil(img / num_image_tokens))
    return BatchCounts(
        n * (int(seg.sum()) - img),
        n * img,
        float(seg.mean()),
        min(1.0, images / slots) if slots else None,
    )


def chips() -> int:
    """Devices that each reach the peak: on CPU the fake devices share one machine per process."""
    return jax.process_count() if jax.devices()[0].platform == "cpu" else jax.device_count()


@dataclasses.dataclass
class _Window:
    """Host totals since the last log record."""

    data_s: float = 0.0
    wall_s: float = 0.0
    text_tokens: int = 0
    image_tokens: int = 0
    steps: int = 0
    row_fill: float = 0.0
    slot_fill: float = 0.0
    slot_batches: int = 0
    ce: float = 0.0  # loss x loss tokens of the finite steps
    loss_tokens: float = 0.0
    source_ce: np.ndarray | None = None
    source_tokens: np.ndarray | None = None


@dataclasses.dataclass
class StepTracker:
    logger: MetricsLogger
    log_every: int
    max_bad_steps: int
    flops_per_step: float
    peak_flops: float  # per chip; 0 = unknown (no MFU)
    skipped_total: int = 0  # restored from the checkpoint's meta on resume
    # (name, group) of each data source, in source-index order: the per-source losses' labels
    sources: Sequence[tuple[str, str]] = ()
    # the input pipeline's per-source counters (pipeline.iterator_stats), read when a record is written
    data_stats: Callable[[], dict] | None = None
    # the loss-spike guard (train/spikes.py); its state is restored from the checkpoint's meta
    spikes: SpikeGuard = dataclasses.field(default_factory=lambda: SpikeGuard(2.0, 0, 1, 0))
    # the latest logged values (the run's result)
    last: dict = dataclasses.field(default_factory=dict)
    # set by settle when the spike guard calls for a rollback; cleared by rewind
    spike: Spike | None = dataclasses.field(default=None, init=False)
    _bad_run: int = dataclasses.field(default=0, init=False)
    _pending: tuple[int, dict] | None = dataclasses.field(default=None, init=False)
    _window: _Window = dataclasses.field(default_factory=_Window, init=False)
    _tick: float = dataclasses.field(default_factory=time.perf_counter, init=False)

    def dispatched(self, step: int, metrics: dict, data_s: float, counts: BatchCounts) -> None:
        """Step `step` was dispatched (its metrics still on device); settle the one before it."""
        self.settle()
        now = time.perf_counter()
        w = self._window
        w.data_s += data_s
        w.wall_s += now - self._tick
        self._tick = now
        w.text_tokens += counts.text_tokens
        w.image_tokens += counts.image_tokens
        w.row_fill += counts.row_fill
        if counts.image_slot_fill is not None:
            w.slot_fill += counts.image_slot_fill
            w.slot_batches += 1
        w.steps += 1
        self._pending = (step, metrics)

    def settle(self, force: bool = False) -> None:
        """Read the pending step's metrics (blocks until it ran), count a skip, log if it is time."""
        if self._pending is None:
            return
        step, metrics = self._pending
        self._pending = None
        host = jax.device_get(metrics)
        m = {k: float(v) for k, v in host.items() if np.ndim(v) == 0}
        self._count_skip(step, m)
        w = self._window
        if not m["skipped"] and np.isfinite(m["loss"]):
            self.spike = self.spikes.observe(step, m["loss"]) or self.spike
            w.ce += m["loss"] * m["tokens"]
            w.loss_tokens += m["tokens"]
            if "source_ce" in host:
                ce, tok = (
                    np.asarray(host["source_ce"], np.float64),
                    np.asarray(host["source_tokens"]),
                )
                w.source_ce = ce if w.source_ce is None else w.source_ce + ce
                w.source_tokens = tok if w.source_tokens is None else w.source_tokens + tok
        if force or step % self.log_every == 0:
            self._write(step, m)

    def rewind(self, step: int) -> None:
        """The loop rolled back to `step`: the step in flight and the interval so far are dropped,
        the log goes back to `step` (MetricsLogger.rewind), and a record notes the rollback."""
        self._pending, self.spike, self._bad_run = None, None, 0
        self._window, self._tick = _Window(), time.perf_counter()
        self.logger.rewind(step)
        self.record({"step": step, "rollbacks": self.spikes.rollbacks})

    def record(self, values: dict) -> None:
        """A record computed outside the step (eval): written as is and kept in `last`."""
        self.logger.write(values)
        self.last.update({k: v for k, v in values.items() if k not in TEXT_KEYS})

    def _count_skip(self, step: int, m: dict) -> None:
        if not m["skipped"]:
            self._bad_run = 0
            return
        self.skipped_total += 1
        self._bad_run += 1
        # the step skips on a non-finite loss or gradient, or on an update that would make a parameter
        # non-finite (train/step.py); with a finite loss and gradient it was the update
        grad_ok = np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])
        cause = "update (learning rate or optimizer state)" if grad_ok else "loss/gradient"
        log.warning(
            "step %d: non-finite %s (loss=%s grad_norm=%s): update skipped",
            step,
            cause,
            m["loss"],
            m["grad_norm"],
        )
        if self._bad_run >= self.max_bad_steps:
            raise RunError(
                f"{self._bad_run} non-finite steps in a row (last: step {step}, non-finite {cause}); "
                "stopping. Skipped steps leave the parameters as they were, and the latest saved "
                "checkpoint (if any) predates these steps; lower train.lr or check the data (and, "
                "resuming, the optimizer state of that checkpoint)."
            )

    def _write(self, step: int, m: dict) -> None:
        w = self._window
        wall = max(w.wall_s, 1e-9)
        step_s = w.wall_s / max(w.steps, 1)
        rec = {
            "step": step,
            "loss": w.ce / w.loss_tokens if w.loss_tokens else m["loss"],
            "loss_step": m["loss"],
            **self._source_losses(w),
            "learning_rate": m["learning_rate"],
            "grad_norm": m["grad_norm"],
            "z_loss": m["z_loss"],
            "loss_tokens": int(m["tokens"]) if np.isfinite(m["tokens"]) else 0,
            "skipped_steps": self.skipped_total,
            **({"rollbacks": self.spikes.rollbacks} if self.spikes.enabled else {}),
            "step_s": step_s,
            "tokens_per_s": (w.text_tokens + w.image_tokens) / wall,
            "text_tokens_per_s": w.text_tokens / wall,
            "image_tokens_per_s": w.image_tokens / wall,
            "mfu": M.mfu(self.flops_per_step, step_s, chips(), self.peak_flops)
            if self.peak_flops
            else float("nan"),
            "data_wait_fraction": w.data_s / wall,
            "row_fill": w.row_fill / max(w.steps, 1),
        }
        if w.slot_batches:
            rec["image_slot_fill"] = w.slot_fill / w.slot_batches
        if self.data_stats is not None:
            rec.update(data_totals(self.data_stats()))
        self.logger.write(rec)
        self.logger.progress(step, loss=m["loss"], tok_s=rec["tokens_per_s"])
        self.last.update(rec)
        self._window = _Window()

    def _source_losses(self, w: _Window) -> dict:
        """Interval means of the loss per modality group and per source (sources without loss tokens
        in the interval are left out)."""
        if w.source_ce is None or not self.sources:
            return {}
        out, groups = {}, {}
        for k, (name, group) in enumerate(self.sources):
            ce, n = float(w.source_ce[k]), float(w.source_tokens[k])
            g = groups.setdefault(group, [0.0, 0.0])
            g[0], g[1] = g[0] + ce, g[1] + n
            if n:
                out[f"loss/{name}"] = ce / n
        for group, (ce, n) in groups.items():
            if n:
                out[f"loss_{group}"] = ce / n
        return out


def data_totals(stats: dict) -> dict:
    """Per-source pipeline counters -> run totals: samples seen / used / dropped (skipped or not
    placeable) / split at image or turn boundaries, long text samples chunked and their windows."""
    keys = {"seen": "samples_seen", "used": "samples_used", "split": "samples_split"}
    keys |= {"chunked": "text_chunked", "chunks": "text_chunks"}
    tot = dict.fromkeys([*keys.values(), "samples_dropped"], 0)
    for c in stats.values():
        for k, out in keys.items():
            tot[out] += c[k]
        tot["samples_dropped"] += sum(c["skipped"].values())
    return tot
