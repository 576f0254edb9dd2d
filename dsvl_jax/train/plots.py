"""PNG curves from runs' metrics.jsonl: one figure per quantity, one line per run.

Stage 1 -> 2 -> 3 of a pipeline read side by side. A folder without metrics.jsonl stands for the run
folders at any depth below it (`runs/demo` -> its stage1/, stage2/, stage3/; a sweep -> its points),
each curve labelled by the run's path relative to the folder above them all.
"""

from __future__ import annotations

import os

from dsvl_jax.errors import ConfigError
from dsvl_jax.train.logger import METRICS_FILE, read_metrics

# (file name, metric keys, title)
PANELS = (
    ("loss", ("loss",), "training loss"),
    ("learning_rate", ("learning_rate",), "learning rate"),
    ("tokens_per_s", ("tokens_per_s",), "tokens / s"),
    (
        "eval",
        ("eval_accuracy", "eval_accuracy_swapped_images", "eval_chance"),
        "held-out exact match",
    ),
)


def run_dirs(paths: list[str]) -> dict[str, str]:
    """{label: run folder} of the runs (folders holding metrics.jsonl) that `paths` name or hold at any
    depth (a demo's stage folders, a sweep's points); labels are paths relative to the folder above
    them all (`stage1`, `sweep/lr=0.001`); a run's own sub-folders are not searched."""
    found = []
    for p in paths:
        if _is_run(p):
            found.append((os.path.dirname(os.path.abspath(p)), os.path.abspath(p)))
            continue
        below = []
        for root, dirs, _ in os.walk(p):
            dirs.sort()
            if root != p and _is_run(root):
                below.append(os.path.abspath(root))
                dirs[:] = []  # checkpoints/, tensorboard/, ...
            else:
                dirs[:] = [d for d in dirs if not d.startswith(".")]
        if not below:
            raise ConfigError(
                f"{p}: no {METRICS_FILE} in it or in any folder below it (not a run folder)"
            )
        found += [(os.path.abspath(p), r) for r in below]
    base = os.path.commonpath([b for b, _ in found])
    return {os.path.relpath(r, base): r for _, r in found}


def _is_run(path: str) -> bool:
    return os.path.isfile(os.path.join(path, METRICS_FILE))


def plot(runs: list[str], out: str) -> list[str]:
    """Write one PNG per panel that has data into `out`; -> the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {
        label: read_metrics(os.path.join(r, METRICS_FILE)) for label, r in run_dirs(runs).items()
    }
    os.makedirs(out, exist_ok=True)
    written = []
    for name, keys, title in PANELS:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = 0
        for label, recs in data.items():
            for k in keys:
                pts = [(r["step"], r[k]) for r in recs if isinstance(r.get(k), (int, float))]
                if pts:
                    xs, ys = zip(*pts)
                    many = len(keys) > 1 or len(data) > 1
                    ax.plot(
                        xs,
                        ys,
                        marker="o" if len(pts) < 10 else None,
                        label=f"{label} {k}" if many else k,
                    )
                    drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set_title(title)
        ax.set_xlabel("step")
        if name == "loss":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(out, f"{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
