"""Which source the next sample comes from: weighted sources, a language:multimodal ratio and its warm-up.

The paper mixes text-only and multimodal data at a language ratio (7:3 in stage 2) and starts
with pure language data, lowering the ratio over the first steps ("modality warm-up"). The
ratio here is by samples (the paper does not say whether by sample, token or probability).

Choice is deterministic error diffusion ("smooth weighted round robin"): every draw adds each
candidate's weight to its credit, the largest credit wins and pays 1. Realised shares track the
(possibly step-varying) target within one sample, the whole state is a few floats, and a
restored iterator makes the same choices. Sources themselves are shuffled, so the regular order
costs no randomness where it matters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from dsvl_jax.errors import ConfigError

TEXT, MULTIMODAL = "text", "multimodal"
GROUPS = (TEXT, MULTIMODAL)


@dataclasses.dataclass(frozen=True)
class RatioSchedule:
    """Language share of samples at a step: `start` at step 0, linear to `end` at `warmup_steps`."""

    end: float
    start: float = 1.0
    warmup_steps: int = 0

    def __post_init__(self):
        for name in ("end", "start"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"data text ratio {name}={v} must be in [0, 1]")
        if self.warmup_steps < 0:
            raise ConfigError(f"data.modality_warmup_steps={self.warmup_steps} must be >= 0")

    def __call__(self, step: int) -> float:
        if self.warmup_steps <= 0 or step >= self.warmup_steps:
            return self.end
        return self.start + (self.end - self.start) * step / self.warmup_steps


class Credits:
    """Deterministic weighted choice among n candidates (error diffusion); state is JSON-able."""

    def __init__(self, n: int):
        self.credit = np.zeros(n, np.float64)

    def choose(self, weights: Sequence[float]) -> int:
        w = np.asarray(weights, np.float64)
        if w.shape != self.credit.shape or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"weights {list(weights)} must be {self.credit.size} non-negative numbers, not all 0"
            )
        self.credit += w / w.sum()
        k = int(np.argmax(np.where(w > 0, self.credit, -np.inf)))
        self.credit[k] -= 1.0
        return k

    def get_state(self) -> list[float]:
        return [float(c) for c in self.credit]

    def set_state(self, state: Sequence[float]) -> None:
        self.credit = np.asarray(state, np.float64)


class Mixer:
    """Two-level choice: the group (text / multimodal) by the ratio schedule, then a source within it."""

    def __init__(self, groups: Sequence[str], weights: Sequence[float], schedule: RatioSchedule):
        if len(groups) != len(weights) or not groups:
            raise ValueError("one group and one weight per source")
        bad = [g for g in groups if g not in GROUPS]
        if bad:
            raise ValueError(f"source groups {bad} must be one of {GROUPS}")
        self.groups, self.weights, self.schedule = (
            tuple(groups),
            tuple(float(w) for w in weights),
            schedule,
        )
        self.members = {g: [i for i, s in enumerate(groups) if s == g] for g in GROUPS}
        self.group_credits = Credits(2)
        self.source_credits = {g: Credits(len(m)) for g, m in self.members.items() if m}

    def group_weights(self, step: int) -> list[float]:
        r = self.schedule(step)
        w = [r if self.members[TEXT] else 0.0, (1.0 - r) if self.members[MULTIMODAL] else 0.0]
        if sum(w) == 0:  # e.g. ratio 1.0 with no text source: use what exists
            w = [float(bool(self.members[g])) for g in GROUPS]
        return w

    def choose_group(self, step: int) -> str:
        return GROUPS[self.group_credits.choose(self.group_weights(step))]

    def choose_source(self, group: str) -> int:
        m = self.members[group]
        return m[self.source_credits[group].choose([self.weights[i] for i in m])]

    def choose(self, step: int) -> int:
        return self.choose_source(self.choose_group(step))

    def get_state(self) -> dict:
        return {
            "group": self.group_credits.get_state(),
            "source": {g: c.get_state() for g, c in self.source_credits.items()},
        }

    def set_state(self, state: dict) -> None:
        self.group_credits.set_state(state["group"])
        for g, s in state["source"].items():
            self.source_credits[g].set_state(s)
