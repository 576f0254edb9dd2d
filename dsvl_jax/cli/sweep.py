"""A grid of training runs and a table of their results.

--grid='train.lr=1e-3,3e-3 train.warmup_steps=5,10' (space-separated dimensions, comma-separated
values; keys are config fields). Each point runs `python -m dsvl_jax.train` with the --config /
--config.* flags given here plus --config.<key>=<value>, in its own workdir DIR/<key=value,...>:
  --mode=local  one point after another on this machine (output in DIR/<point>/train.log); a point whose
                workdir already has final/ is skipped unless --rerun (a sweep resumes where it stopped);
                the points share one compilation cache, DIR/xla_cache (points whose step is the same
                program, e.g. seeds, compile it once; the learning rate is compiled in)
  --mode=print  only print the commands, one per line, for a cluster launcher (see launch/README.md)
Then writes DIR/results.csv and DIR/results.md (each run's last loss, eval metrics, tokens/s, steps).
The last stdout line is one JSON object; exit 1 when a point failed.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

from absl import flags
from ml_collections import config_flags

from dsvl_jax.cli import command

FLAGS = flags.FLAGS
EXAMPLE = (
    "python -m dsvl_jax.sweep --config=experiments/stage1_aligner.py:tiny "
    "--grid='train.lr=1e-3,3e-3' --workdir=runs/sweep"
)


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Stage config: experiments/<file>.py:<size>.", lock_config=True
    )
    flags.DEFINE_string(
        "grid", None, "Space-separated dimensions key=v1,v2 (e.g. 'train.lr=1e-3,3e-3')."
    )
    flags.DEFINE_string(
        "workdir", None, "Sweep directory: one sub-directory per point, results.csv/.md."
    )
    flags.DEFINE_enum(
        "mode", "local", ["local", "print"], "Run the points here, or print their commands."
    )
    flags.DEFINE_bool("rerun", False, "local: run points whose workdir already has final/ again.")


def config_args(argv: list[str]) -> list[str]:
    """The --config and --config.* arguments of argv, in order (with a separate value when not `=`-joined):
    what every point's train command repeats."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" or (a.startswith("--config.") and "=" not in a):
            out += argv[i : i + 2]
            i += 2
            continue
        if a.startswith(("--config=", "--config.")):
            out.append(a)
        i += 1
    return out


def main(argv: list[str]) -> int:
    command.check_usage(argv, required=("config", "grid", "workdir"))
    command.setup_logging()
    from dsvl_jax.train import sweep as S

    dims = S.parse_grid(FLAGS.grid)
    S.check_keys(dims, FLAGS.config)
    points = S.expand(dims)
    base = config_args(sys.argv[1:])
    if FLAGS.mode == "print":  # for another machine: its `python`, the workdir as given
        for p in points:
            print(
                shlex.join(
                    S.train_command(
                        base, p, os.path.join(FLAGS.workdir, S.point_name(p)), python="python"
                    )
                )
            )
        print(json.dumps({"points": len(points), "mode": "print"}), flush=True)
        return 0
    res = S.run_local(
        points, base, FLAGS.workdir, rerun=FLAGS.rerun, say=lambda line: print(line, flush=True)
    )
    with open(res.markdown) as f:
        print(f.read(), end="")
    print(
        json.dumps({"points": len(points), "ok": res.ok, "csv": res.csv, "markdown": res.markdown}),
        flush=True,
    )
    return 0 if res.ok == len(points) else 1


def entry() -> None:
    command.run(
        "sweep",
        main,
        doc=__doc__,
        example=EXAMPLE,
        define_flags=define_flags,
        config_flags=("config",),
    )
