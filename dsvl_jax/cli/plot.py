"""`python -m dsvl_jax.plot DIR [DIR ...] [--out PNG_DIR]`: PNG curves from runs' metrics.jsonl.

One figure per quantity (loss, learning rate, tokens/s, eval accuracy/loss), one line per run dir,
so stage 1 -> 2 -> 3 of a pipeline read side by side. Written next to the first run's metrics
unless --out is given.
"""
from __future__ import annotations

import os
import sys

from dsvl_jax.train.logger import read_metrics

PANELS = (("loss", ("loss",), "training loss"), ("learning_rate", ("learning_rate",), "learning rate"),
          ("tokens_per_s", ("tokens_per_s",), "tokens / s"),
          ("eval", ("eval_accuracy", "eval_accuracy_swapped_images", "eval_chance"), "held-out exact match"))


def read(run: str) -> list[dict]:
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run}: no metrics.jsonl")
    return read_metrics(path)


def plot(runs: list[str], out: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {r: read(r) for r in runs}
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
                    ax.plot(xs, ys, marker="o" if len(pts) < 10 else None, label=f"{label} {k}" if len(keys) > 1
                            or len(data) > 1 else k)
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


def main(argv: list[str] | None = None) -> None:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m dsvl_jax.plot", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories holding metrics.jsonl")
    ap.add_argument("--out", default=None, help="folder for the PNGs (default: <first run>/plots)")
    a = ap.parse_args(argv)
    try:
        files = plot(a.runs, a.out or os.path.join(a.runs[0], "plots"))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(files))


def entry() -> None:
    main()
