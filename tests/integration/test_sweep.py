"""`python -m dsvl_jax.sweep`: a grid of tiny stage-1 runs, one workdir each, and the results table."""

import csv
import json
from pathlib import Path

import pytest

from dsvl_jax.train import sweep as S

import commands

GRID = "train.lr=1e-3,3e-3 train.warmup_steps=1,2"


def _sweep(*args):
    # one fake device per run: the 4 tiny runs compile faster (the sharded paths are tested elsewhere)
    return commands.run("sweep", *args, devices=1, timeout=1200)


def test_grid_parsing_and_names():
    dims = S.parse_grid(GRID)
    assert dims == [("train.lr", ["1e-3", "3e-3"]), ("train.warmup_steps", ["1", "2"])]
    pts = S.expand(dims)
    assert [S.point_name(p) for p in pts] == [
        f"train.lr={lr},train.warmup_steps={w}" for lr in ("1e-3", "3e-3") for w in (1, 2)
    ]
    cmd = S.train_command(
        ["--config=x.py:tiny", "--config.train.steps=3"], pts[1], "/w/p", python="python"
    )
    assert cmd == [
        "python",
        "-m",
        "dsvl_jax.train",
        "--config=x.py:tiny",
        "--config.train.steps=3",
        "--config.train.lr=1e-3",
        "--config.train.warmup_steps=2",
        "--workdir=/w/p",
    ]
    for bad in ("", "train.lr", "train.lr=", "train.lr=1 train.lr=2", "-x=1"):
        with pytest.raises(S.GridError):
            S.parse_grid(bad)


def test_check_keys_names_the_missing_field():
    from dsvl_jax.config import base_config

    S.check_keys([("train.lr", ["1"]), ("model.llm.layers", ["2"])], base_config("tiny"))
    with pytest.raises(S.GridError, match="train has no field 'lrr'"):
        S.check_keys([("train.lrr", ["1"])], base_config("tiny"))


def test_print_mode_lists_commands(tmp_path):
    p = _sweep(
        "--config=experiments/stage1_aligner.py:tiny",
        f"--grid={GRID}",
        f"--workdir={tmp_path / 'sw'}",
        "--mode=print",
        "--config.train.steps=3",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"points": 4, "mode": "print"}
    assert len(lines) == 5 and all(
        l.startswith(
            "python -m dsvl_jax.train --config=experiments/stage1_aligner.py:tiny "
            "--config.train.steps=3 --config.train.lr="
        )
        for l in lines[:4]
    )
    assert not (tmp_path / "sw").exists()  # nothing runs, nothing is written


def test_local_sweep_2x2_writes_workdirs_and_table(tmp_path):
    data = commands.make_corpus(tmp_path / "corpus")
    sw = tmp_path / "sw"
    args = [
        "--config=experiments/stage1_aligner.py:tiny",
        f"--grid={GRID}",
        f"--workdir={sw}",
        f"--config.data_root={data}",
        "--config.train.steps=3",
        "--config.log.every_steps=1",
    ]
    p = _sweep(*args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["points"] == 4 and res["ok"] == 4
    names = sorted(d.name for d in sw.iterdir() if d.is_dir())
    assert names == sorted(S.point_name(pt) for pt in S.expand(S.parse_grid(GRID)))
    for pt in S.expand(S.parse_grid(GRID)):
        # each run got its point's values
        cfg = json.loads((sw / S.point_name(pt) / "config.json").read_text())
        assert cfg["train"]["lr"] == float(pt["train.lr"])
        assert cfg["train"]["warmup_steps"] == int(pt["train.warmup_steps"])
    rows = list(csv.DictReader(Path(sw / "results.csv").read_text().splitlines()))
    assert [(r["train.lr"], r["train.warmup_steps"]) for r in rows] == [
        ("1e-3", "1"),
        ("1e-3", "2"),
        ("3e-3", "1"),
        ("3e-3", "2"),
    ]
    for r in rows:
        assert (
            r["status"] == "ok"
            and r["step"] == "3"
            and float(r["loss"]) > 0
            and float(r["tokens_per_s"]) > 0
        )
    md = (sw / "results.md").read_text().splitlines()
    assert (
        md[0].startswith("| train.lr | train.warmup_steps | status | step | loss") and len(md) == 6
    )
    # warm-up 1 vs 2 at the same lr: step 2 updates with lr vs lr/2, so the step-3 losses differ
    assert rows[0]["loss"] != rows[1]["loss"]
    # a second call finds every point done and only rebuilds the table
    p2 = _sweep(*args)
    assert p2.returncode == 0 and p2.stdout.count("done before, skipped") == 4
