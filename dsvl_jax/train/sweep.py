"""Sweeps: grid expansion, running the points (one `train` process each), and the results table.

A grid is `key=v1,v2 key2=v3,v4` (space-separated dimensions, comma-separated values; keys are config
paths such as `train.lr`). Its points are the cartesian product in the order given; each point runs in
its own workdir named `key=value,key2=value` and passes `--config.key=value` to the train command, so the
values are parsed by the config's own field types. Results come from each run's metrics.jsonl.

The points of a local sweep share one compilation cache (<workdir>/xla_cache, unless the base flags set
`parallel.compilation_cache_dir`): points whose train step is the same program (seeds, data mixes, step
counts) compile it once. Values XLA sees as constants (learning rate, schedule) still compile per point.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from dsvl_jax.errors import ConfigError
from dsvl_jax.train.logger import METRICS_FILE, read_metrics

Point = dict[str, str]

# Columns read from a run's metrics.jsonl: the last training record's fields ...
TRAIN_COLUMNS = ("step", "loss", "grad_norm", "tokens_per_s", "step_s", "mfu", "skipped_steps")
# ... and the last value of every field starting with this prefix (written by train/evaluate.py records).
EVAL_PREFIX = "eval"
CACHE_FLAG, CACHE_DIR = "parallel.compilation_cache_dir", "xla_cache"  # shared by a sweep's points


class GridError(ConfigError):
    """A malformed grid string or a key the config does not have."""


def parse_grid(grid: str) -> list[tuple[str, list[str]]]:
    """'train.lr=1e-3,3e-3 train.warmup_steps=5,10' -> [("train.lr", ["1e-3", "3e-3"]), ...]."""
    dims: list[tuple[str, list[str]]] = []
    for part in grid.split():
        key, sep, vals = part.partition("=")
        values = [v for v in vals.split(",") if v != ""]
        if not sep or not re.fullmatch(r"[A-Za-z_][\w.]*", key) or not values:
            raise GridError(f"--grid: {part!r} is not key=v1,v2 (e.g. train.lr=1e-3,3e-3)")
        if key in (k for k, _ in dims):
            raise GridError(f"--grid: key {key!r} appears twice")
        dims.append((key, values))
    if not dims:
        raise GridError("--grid is empty: give e.g. 'train.lr=1e-3,3e-3 train.warmup_steps=5,10'")
    return dims


def expand(dims: Sequence[tuple[str, Sequence[str]]]) -> list[Point]:
    """Cartesian product in grid order (the last dimension varies fastest)."""
    keys = [k for k, _ in dims]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in dims))]


def check_keys(dims: Sequence[tuple[str, Sequence[str]]], cfg) -> None:
    """Every grid key must name an existing config field (a typo would otherwise sweep nothing)."""
    for key, _ in dims:
        node = cfg
        for i, name in enumerate(key.split(".")):
            try:
                node = node[name]
            except (KeyError, TypeError, AttributeError):
                where = ".".join(key.split(".")[:i]) or "the config"
                raise GridError(f"--grid key {key!r}: {where} has no field {name!r}") from None


def point_name(point: Point) -> str:
    """Workdir name of a point: 'train.lr=1e-3,train.warmup_steps=5' (path separators replaced)."""
    return ",".join(f"{k}={v}" for k, v in point.items()).replace(os.sep, "_")


def train_command(
    config_args: Sequence[str], point: Point, workdir: str, python: str = sys.executable
) -> list[str]:
    """argv of one point: the base --config/--config.* flags, then the point's overrides (which win)."""
    return [
        python,
        "-m",
        "dsvl_jax.train",
        *config_args,
        *(f"--config.{k}={v}" for k, v in point.items()),
        f"--workdir={workdir}",
    ]


def read_results(workdir: str) -> dict:
    """Final metrics of one run: TRAIN_COLUMNS from the last training record, eval* fields from the last
    records that have them. Empty when the run wrote nothing."""
    path = os.path.join(workdir, METRICS_FILE)
    out: dict = {}
    if not os.path.exists(path):
        return out
    for rec in read_metrics(path):
        if "loss" in rec:
            out.update({k: rec[k] for k in TRAIN_COLUMNS if k in rec})
        out.update({k: v for k, v in rec.items() if k.startswith(EVAL_PREFIX)})
    return out


def columns(points: Sequence[Point], rows: Sequence[dict]) -> list[str]:
    keys = list(points[0]) if points else []
    seen = [c for c in ("status",) + TRAIN_COLUMNS if any(c in r for r in rows)]
    evals = sorted({k for r in rows for k in r if k.startswith(EVAL_PREFIX)})
    return keys + seen + evals


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def _table(points: Sequence[Point], rows: Sequence[dict]) -> tuple[list[str], list[dict]]:
    """Columns, and one merged record per point (the point's values win over its results)."""
    return columns(points, rows), [{**r, **p} for p, r in zip(points, rows)]


def to_csv(points: Sequence[Point], rows: Sequence[dict]) -> str:
    cols, merged = _table(points, rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    w.writerows([m.get(c, "") for c in cols] for m in merged)
    return buf.getvalue()


def to_markdown(points: Sequence[Point], rows: Sequence[dict]) -> str:
    cols, merged = _table(points, rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(m.get(c)) for c in cols) + " |" for m in merged]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class SweepResult:
    points: list[Point]
    rows: list[dict]  # per point: status ("ok", "done", "failed rc=N") + read_results
    csv: str
    markdown: str

    @property
    def ok(self) -> int:
        return sum(r["status"] in ("ok", "done") for r in self.rows)


def run_local(
    points: Sequence[Point],
    config_args: Sequence[str],
    workdir: str,
    *,
    rerun: bool = False,
    say: Callable[[str], None] = print,
) -> SweepResult:
    """Run the points one after another on this machine, each as `python -m dsvl_jax.train` with its
    output in <workdir>/<point>/train.log; a point whose workdir already has final/ is kept (a sweep
    resumes where it stopped) unless `rerun`. Writes commands.sh, results.csv and results.md."""
    root = os.path.abspath(workdir)
    os.makedirs(root, exist_ok=True)
    workdirs = [os.path.join(root, point_name(p)) for p in points]
    if not any(a.startswith(f"--config.{CACHE_FLAG}=") for a in config_args):
        config_args = [*config_args, f"--config.{CACHE_FLAG}={os.path.join(root, CACHE_DIR)}"]
    cmds = [train_command(config_args, p, wd) for p, wd in zip(points, workdirs)]
    with open(os.path.join(root, "commands.sh"), "w") as f:
        f.write("".join(shlex.join(c) + "\n" for c in cmds))
    rows = []
    for i, (p, wd, cmd) in enumerate(zip(points, workdirs, cmds)):
        name = point_name(p)
        if os.path.isdir(os.path.join(wd, "final")) and not rerun:
            say(f"[{i + 1}/{len(points)}] {name}: done before, skipped (--rerun to run again)")
            rows.append({"status": "done", **read_results(wd)})
            continue
        os.makedirs(wd, exist_ok=True)
        say(f"[{i + 1}/{len(points)}] {name}")
        start = time.perf_counter()
        with open(os.path.join(wd, "train.log"), "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        res = read_results(wd)
        status = "ok" if rc == 0 else f"failed rc={rc}"
        rows.append({"status": status, **res})
        where = "" if rc == 0 else f" (see {os.path.join(wd, 'train.log')})"
        say(
            f"    {status} in {time.perf_counter() - start:.0f} s: loss {res.get('loss')}, "
            f"step {res.get('step')}{where}"
        )
    csv_path, md_path = os.path.join(root, "results.csv"), os.path.join(root, "results.md")
    with open(csv_path, "w") as f:
        f.write(to_csv(points, rows))
    with open(md_path, "w") as f:
        f.write(to_markdown(points, rows))
    return SweepResult(list(points), rows, csv_path, md_path)
