"""Per-step bookkeeping of the training loop: host-side counts and timers, one-step-late metrics,
skipped (non-finite) steps, and the log records.

The loop hands every dispatched step to `StepTracker.dispatched`; the tracker reads the *previous*
step's device metrics then (so the host never waits on the step in flight), counts a skipped update,
stops the run after `train.max_bad_steps` of them in a row, and writes a record every
`log.every_steps` (or when forced: before a checkpoint, at the end) with loss, learning rate, step
time, tokens/s (text and image apart), MFU and the share of time spent waiting for data.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import jax
import numpy as np

from dsvl_jax.errors import Error
from dsvl_jax.train import metrics as M
from dsvl_jax.train.logger import MetricsLogger

log = logging.getLogger(__name__)


class RunError(Error, RuntimeError):
    """The run cannot go on (too many non-finite steps, a refused checkpoint)."""


def host_token_counts(batch: dict, image_token_id: int) -> tuple[int, int]:
    """(text, image) tokens of this host's rows, scaled to the global batch (hosts feed equal shares)."""
    seg = batch["segments"] > 0
    img = int(((batch["ids"] == image_token_id) & seg).sum())
    n = jax.process_count()
    return n * (int(seg.sum()) - img), n * img


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


@dataclasses.dataclass
class StepTracker:
    logger: MetricsLogger
    log_every: int
    max_bad_steps: int
    flops_per_step: float
    peak_flops: float  # per chip; 0 = unknown (no MFU)
    skipped_total: int = 0  # restored from the checkpoint's meta on resume
    # the latest logged values (the run's result)
    last: dict = dataclasses.field(default_factory=dict)
    _bad_run: int = dataclasses.field(default=0, init=False)
    _pending: tuple[int, dict] | None = dataclasses.field(default=None, init=False)
    _window: _Window = dataclasses.field(default_factory=_Window, init=False)
    _tick: float = dataclasses.field(default_factory=time.perf_counter, init=False)

    def dispatched(self, step: int, metrics: dict, data_s: float, tokens: tuple[int, int]) -> None:
        """Step `step` was dispatched (its metrics still on device); settle the one before it."""
        self.settle()
        now = time.perf_counter()
        w = self._window
        w.data_s += data_s
        w.wall_s += now - self._tick
        self._tick = now
        w.text_tokens += tokens[0]
        w.image_tokens += tokens[1]
        w.steps += 1
        self._pending = (step, metrics)

    def settle(self, force: bool = False) -> None:
        """Read the pending step's metrics (blocks until it ran), count a skip, log if it is time."""
        if self._pending is None:
            return
        step, metrics = self._pending
        self._pending = None
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        self._count_skip(step, m)
        if force or step % self.log_every == 0:
            self._write(step, m)

    def record(self, values: dict) -> None:
        """A record computed outside the step (eval): written as is and kept in `last`."""
        self.logger.write(values)
        self.last.update(values)

    def _count_skip(self, step: int, m: dict) -> None:
        if not m["skipped"]:
            self._bad_run = 0
            return
        self.skipped_total += 1
        self._bad_run += 1
        log.warning(
            "step %d: non-finite loss/gradient (loss=%s grad_norm=%s): update skipped",
            step,
            m["loss"],
            m["grad_norm"],
        )
        if self._bad_run >= self.max_bad_steps:
            raise RunError(
                f"{self._bad_run} non-finite steps in a row (last: step {step}); stopping. "
                "The last checkpoint holds finite parameters; lower train.lr or check the data."
            )

    def _write(self, step: int, m: dict) -> None:
        w = self._window
        wall = max(w.wall_s, 1e-9)
        step_s = w.wall_s / max(w.steps, 1)
        rec = {
            "step": step,
            "loss": m["loss"],
            "learning_rate": m["learning_rate"],
            "grad_norm": m["grad_norm"],
            "z_loss": m["z_loss"],
            "loss_tokens": int(m["tokens"]) if np.isfinite(m["tokens"]) else 0,
            "skipped_steps": self.skipped_total,
            "step_s": step_s,
            "tokens_per_s": (w.text_tokens + w.image_tokens) / wall,
            "text_tokens_per_s": w.text_tokens / wall,
            "image_tokens_per_s": w.image_tokens / wall,
            "mfu": M.mfu(self.flops_per_step, step_s, chips(), self.peak_flops)
            if self.peak_flops
            else float("nan"),
            "data_wait_fraction": w.data_s / wall,
        }
        self.logger.write(rec)
        self.logger.progress(step, loss=m["loss"], tok_s=rec["tokens_per_s"])
        self.last.update(rec)
        self._window = _Window()
