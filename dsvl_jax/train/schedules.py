"""Learning-rate schedules by name: linear warm-up, then cosine | step | constant.

`step` follows DeepSeek-LLM's multi-step decay (x`step_factor` at each fraction in `step_milestones`
of the post-warm-up steps; defaults 0.316 at 80% and 90%), which the paper uses for stage 2.
"""

from __future__ import annotations

import optax

from dsvl_jax.errors import ConfigError

SCHEDULES = ("cosine", "step", "constant")


def make_schedule(t) -> optax.Schedule:
    """`t` is the `train` ConfigDict: lr, schedule, warmup_steps, steps, end_lr_frac, step_milestones, step_factor."""
    if t.schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule={t.schedule!r} not in {SCHEDULES}")
    warm = int(t.warmup_steps)
    rest = max(int(t.steps) - warm, 1)
    if t.schedule == "cosine":
        after = optax.cosine_decay_schedule(t.lr, rest, alpha=float(t.end_lr_frac))
    elif t.schedule == "step":
        after = optax.piecewise_constant_schedule(
            t.lr, {int(rest * m): float(t.step_factor) for m in t.step_milestones}
        )
    else:
        after = optax.constant_schedule(t.lr)
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, t.lr, warm), after], [warm])
