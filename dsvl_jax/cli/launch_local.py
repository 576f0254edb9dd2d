"""Run a dsvl_jax command as N local CPU processes joined by jax.distributed over 127.0.0.1.

The multi-host code path (per-host data shards, global arrays, checkpoints written by every process)
on one machine: each process gets its own fake CPU devices. Give the command after `--`. Output
lines are prefixed with `[pI]`; if one process fails the others are stopped. The last stdout line is
one JSON object {"procs", "returncodes", "results"} (results[i]: the last JSON line process i
printed); the exit code is the first non-zero return code.
"""

from __future__ import annotations

import json

from absl import app, flags

from dsvl_jax.cli import command

FLAGS = flags.FLAGS
EXAMPLE = (
    "python -m dsvl_jax.launch_local --procs=2 -- train --config=experiments/stage1_aligner.py:tiny "
    "--workdir=runs/mp"
)


def define_flags() -> None:
    flags.DEFINE_integer("procs", None, "Number of processes.", lower_bound=1)
    flags.DEFINE_integer("devices_per_proc", 4, "Fake CPU devices per process.", lower_bound=1)
    flags.DEFINE_integer("port", 0, "Coordinator port on 127.0.0.1 (0: a free one).")
    flags.DEFINE_float("timeout_s", None, "Stop every process after this long.")


def main(argv: list[str]) -> int:
    """--log_dir (absl's own flag, reused): also write each process's output to LOG_DIR/proc_I.log."""
    if not FLAGS.procs:
        raise app.UsageError("--procs is required")
    if not argv:
        raise app.UsageError(
            "nothing to run: give the command after --, e.g. -- train --config=..."
        )
    from dsvl_jax.parallel.local_launch import launch

    res = launch(
        argv, FLAGS.procs, FLAGS.devices_per_proc, FLAGS.port, FLAGS.log_dir, FLAGS.timeout_s
    )
    print(json.dumps(res), flush=True)
    return next((rc for rc in res["returncodes"] if rc), 0)


def entry() -> None:
    command.run("launch_local", main, doc=__doc__, example=EXAMPLE, define_flags=define_flags)
