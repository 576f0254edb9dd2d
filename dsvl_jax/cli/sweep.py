"""`python -m dsvl_jax.sweep --config=experiments/<stage>.py:<size> --grid='train.lr=1e-3,3e-3 train.warmup_steps=5,10'
--workdir=DIR [--mode=local|print] [--config.key=value ...]`.

Expands the grid (dsvl_jax/train/sweep.py) and, per point, runs `python -m dsvl_jax.train --config=...
[--config.key=value ...] --config.<grid key>=<value> --workdir=DIR/<key=value,...>`:
  --mode=local  one point after another on this machine (output in DIR/<point>/train.log); a point whose
                workdir already has final/ is skipped unless --rerun (a sweep resumes where it stopped)
  --mode=print  only print the commands, one per line, to hand to a cluster launcher (see launch/README.md)
Then writes DIR/results.csv and DIR/results.md: the grid values and each run's final metrics (last loss,
eval metrics, tokens/s, steps) read from its metrics.jsonl. The last stdout line is one JSON object.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
_CONFIG_ARGS: list[str] = []  # the --config / --config.* arguments as typed, forwarded to every run


def _define_flags() -> None:
    """Defined on entry, not at import, so this module imports next to other CLIs' `--config` flags."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Stage config: experiments/<file>.py:<arg>.", lock_config=True)
    flags.DEFINE_string("grid", None, "Space-separated dimensions key=v1,v2 (e.g. 'train.lr=1e-3,3e-3').")
    flags.DEFINE_string("workdir", None, "Sweep directory: one sub-directory per point, results.csv/.md.")
    flags.DEFINE_enum("mode", "local", ["local", "print"], "Run the points here, or print their commands.")
    flags.DEFINE_bool("rerun", False, "local: run points whose workdir already has final/ again.")


def config_args(argv: list[str]) -> list[str]:
    """The --config and --config.* arguments of argv, in order (with a separate value when not `=`-joined)."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" or (a.startswith("--config.") and "=" not in a):
            out += argv[i:i + 2]
            i += 2
            continue
        if a.startswith("--config=") or a.startswith("--config."):
            out.append(a)
        i += 1
    return out


def main(argv) -> None:
    del argv
    from dsvl_jax.cli.common import setup_logging
    from dsvl_jax.train import sweep as S

    setup_logging()
    if not FLAGS.grid or not FLAGS.workdir:
        raise app.UsageError("--grid and --workdir are required")
    try:
        dims = S.parse_grid(FLAGS.grid)
        S.check_keys(dims, FLAGS.config)
    except S.GridError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    points = S.expand(dims)
    if FLAGS.mode == "print":  # for another machine: its `python`, the workdir as given
        for p in points:
            print(shlex.join(S.train_command(_CONFIG_ARGS, p, os.path.join(FLAGS.workdir, S.point_name(p)),
                                             python="python")))
        print(json.dumps({"points": len(points), "mode": "print"}))
        return
    root = os.path.abspath(FLAGS.workdir)
    os.makedirs(root, exist_ok=True)
    workdirs = [os.path.join(root, S.point_name(p)) for p in points]
    cmds = [S.train_command(_CONFIG_ARGS, p, wd) for p, wd in zip(points, workdirs)]
    with open(os.path.join(root, "commands.sh"), "w") as f:
        f.write("".join(shlex.join(c) + "\n" for c in cmds))

    rows = []
    for i, (p, wd, cmd) in enumerate(zip(points, workdirs, cmds)):
        name = S.point_name(p)
        if os.path.isdir(os.path.join(wd, "final")) and not FLAGS.rerun:
            print(f"[{i + 1}/{len(points)}] {name}: done before, skipped (--rerun to run again)", flush=True)
            rows.append({"status": "done", **S.read_results(wd)})
            continue
        os.makedirs(wd, exist_ok=True)
        print(f"[{i + 1}/{len(points)}] {name}", flush=True)
        start = time.perf_counter()
        with open(os.path.join(wd, "train.log"), "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        res = S.read_results(wd)
        status = "ok" if rc == 0 else f"failed rc={rc}"
        rows.append({"status": status, **res})
        print(f"    {status} in {time.perf_counter() - start:.0f} s: loss {res.get('loss')}, step {res.get('step')}"
              + ("" if rc == 0 else f" (see {os.path.join(wd, 'train.log')})"), flush=True)
    csv_path, md_path = os.path.join(root, "results.csv"), os.path.join(root, "results.md")
    with open(csv_path, "w") as f:
        f.write(S.to_csv(points, rows))
    md = S.to_markdown(points, rows)
    with open(md_path, "w") as f:
        f.write(md)
    print(md, end="")
    ok = sum(r["status"] in ("ok", "done") for r in rows)
    print(json.dumps({"points": len(points), "ok": ok, "csv": csv_path, "markdown": md_path}))
    sys.exit(0 if ok == len(points) else 1)


def entry() -> None:
    _CONFIG_ARGS[:] = config_args(sys.argv[1:])
    _define_flags()
    app.run(main)
