"""PNG curves from runs' metrics.jsonl: one figure per quantity, one line per run.

Positional arguments are run folders; a folder without metrics.jsonl stands for every run below it, at
any depth (`plot runs/demo` draws its stage1/2/3, `plot runs/sweep` each point), labelled by relative
path. The PNGs go to --out (default: <first folder>/plots).
"""

from __future__ import annotations

import os

from absl import app, flags

from dsvl_jax.cli import command

FLAGS = flags.FLAGS
EXAMPLE = "python -m dsvl_jax.plot runs/demo --out=runs/demo/plots"


def define_flags() -> None:
    flags.DEFINE_string("out", None, "Folder for the PNGs (default: <first folder>/plots).")


def main(argv: list[str]) -> None:
    if not argv:
        raise app.UsageError("give one or more run folders, e.g. plot runs/demo")
    command.setup_logging()
    from dsvl_jax.train.plots import plot

    print("\n".join(plot(argv, FLAGS.out or os.path.join(argv[0], "plots"))), flush=True)


def entry() -> None:
    command.run("plot", main, doc=__doc__, example=EXAMPLE, define_flags=define_flags)
