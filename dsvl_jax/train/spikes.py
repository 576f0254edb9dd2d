"""Loss-spike rollback, the way large LLM runs recover from one (PaLM restarts from a checkpoint before the
spike and skips the batches that led to it): off unless `train.spike_patience` > 0.

A finite, not-skipped step is *suspect* when its loss exceeds `train.spike_factor` x the mean of the last
`train.spike_window` accepted (non-suspect) losses; the guard arms once that window is full. A step that is
not suspect ends the streak (a blip is forgiven: its loss never enters the mean). After
`train.spike_patience` suspect steps in a row the guard reports a `Spike`; the loop (train/loop.py) then
restores the newest checkpoint written before the streak's first step and goes on with the data iterator
where it is, so the batches between that checkpoint and the spike are skipped. While a streak is open no
periodic checkpoint is written (a diverging state never pushes good checkpoints out), and a checkpoint
written at or after the streak's first step (on a signal) is moved aside as `bad-spike` at the rollback.
More than `train.spike_max_rollbacks` rollbacks in one run stop it (RunError): the recipe, not one window
of data, is at fault.

The guard's state (recent losses, the open streak, the rollback count) travels in every checkpoint's meta,
so a resumed run judges the next steps exactly as the uninterrupted one would.
"""

from __future__ import annotations

import collections
import dataclasses
import math

from dsvl_jax.errors import ConfigError, Error


class SpikeError(Error, RuntimeError):
    """Too many rollbacks in one run."""


@dataclasses.dataclass(frozen=True)
class Spike:
    """`patience` suspect steps in a row: steps first..last, their losses and the mean they exceeded."""

    first: int
    last: int
    losses: tuple[float, ...]
    mean: float


def check_config(t) -> None:
    """The spike fields of a train section; ConfigError naming the field."""
    patience = t.spike_patience
    if not isinstance(patience, int) or patience < 0:
        raise ConfigError(f"train.spike_patience={patience!r} must be an int >= 0 (0 = off)")
    if not patience:
        return
    factor, window, most = t.spike_factor, t.spike_window, t.spike_max_rollbacks
    if not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 1:
        raise ConfigError(f"train.spike_factor={factor!r} must be a finite number > 1")
    if not isinstance(window, int) or window < 1:
        raise ConfigError(f"train.spike_window={window!r} must be an int >= 1")
    if not isinstance(most, int) or most < 0:
        raise ConfigError(f"train.spike_max_rollbacks={most!r} must be an int >= 0")


class SpikeGuard:
    """Watches step losses (module doc); `observe` -> a Spike when the loop must roll back."""

    def __init__(self, factor: float, patience: int, window: int, max_rollbacks: int):
        self.factor, self.patience, self.max_rollbacks = float(factor), int(patience), max_rollbacks
        self.recent: collections.deque[float] = collections.deque(maxlen=max(int(window), 1))
        self.streak: list[tuple[int, float]] = []
        self.rollbacks = 0

    @classmethod
    def from_config(cls, t) -> SpikeGuard:
        return cls(t.spike_factor, t.spike_patience, t.spike_window, t.spike_max_rollbacks)

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    @property
    def suspect(self) -> bool:
        """A streak is open: the state may be diverging (the loop defers its periodic checkpoint)."""
        return bool(self.streak)

    def mean(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else math.nan

    def observe(self, step: int, loss: float) -> Spike | None:
        """One finite, applied step's loss."""
        if not self.enabled or not math.isfinite(loss):
            return None
        armed = len(self.recent) == self.recent.maxlen
        if armed and loss > self.factor * self.mean():
            self.streak.append((step, loss))
            if len(self.streak) >= self.patience:
                return Spike(self.streak[0][0], step, tuple(x for _, x in self.streak), self.mean())
            return None
        self.streak.clear()
        self.recent.append(loss)
        return None

    def forgive(self) -> None:
        """No checkpoint to roll back to: the streak's losses become part of the mean (the new normal)."""
        self.recent.extend(x for _, x in self.streak)
        self.streak.clear()

    def rolled_back(self, restored: dict | None) -> None:
        """After a rollback: the guard as the restored checkpoint left it (its meta's "spike"), with this
        run's rollback count + 1. More than max_rollbacks: SpikeError."""
        count = self.rollbacks + 1
        self.load(restored or {})
        self.streak.clear()
        self.rollbacks = count
        if count > self.max_rollbacks:
            raise SpikeError(
                f"{count} loss-spike rollbacks in this run (train.spike_max_rollbacks="
                f"{self.max_rollbacks}): the spikes keep coming back, so the recipe rather than one "
                "window of data is at fault; lower train.lr, raise train.warmup_steps or check the "
                "data (rollbacks.jsonl in the workdir lists each spike)"
            )

    def state(self) -> dict:
        """For the checkpoint meta (JSON)."""
        return {
            "recent": list(self.recent),
            "streak": [[s, x] for s, x in self.streak],
            "rollbacks": self.rollbacks,
        }

    def load(self, state: dict) -> None:
        """From a checkpoint's meta (absent: a fresh guard)."""
        self.recent.clear()
        self.recent.extend(float(x) for x in state.get("recent", ()))
        self.streak = [(int(s), float(x)) for s, x in state.get("streak", ())]
        self.rollbacks = int(state.get("rollbacks", 0))
