"""PNG curves from runs' metrics.jsonl: one figure per quantity, one line per run.

Stage 1 -> 2 -> 3 of a pipeline read side by side. A folder without metrics.jsonl stands for the run
folders right below it (e.g. `runs/demo` -> its stage1/, stage2/, stage3/).
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


def run_dirs(paths: list[str]) -> list[str]:
    """The run folders (holding metrics.jsonl) named by `paths`, or found one level below them."""
    out = []
    for p in paths:
        if os.path.isfile(os.path.join(p, METRICS_FILE)):
            out.append(p)
            continue
        below = sorted(
            os.path.join(p, d)
            for d in (os.listdir(p) if os.path.isdir(p) else ())
            if os.path.isfile(os.path.join(p, d, METRICS_FILE))
        )
        if not below:
            raise ConfigError(
                f"{p}: no {METRICS_FILE} in it or in its sub-folders (not a run folder)"
            )
        out += below
    return out


def plot(runs: list[str], out: str) -> list[str]:
    """Write one PNG per panel that has data into `out`; -> the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {r: read_metrics(os.path.join(r, METRICS_FILE)) for r in run_dirs(runs)}
    os.makedirs(out, exist_ok=True)
    written = []
    for name, keys, title in PANELS:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = 0
        for run, recs in data.items():
            label = os.path.basename(os.path.normpath(run))
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
