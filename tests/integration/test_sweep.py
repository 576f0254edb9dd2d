"""`python -m dsvl_jax.sweep`: a grid of tiny stage-1 runs, one workdir each, and the results table."""

import csv
import json
from pathlib import Path

import pytest

from dsvl_jax.train import sweep as S

import commands

GRID = "train.lr=1e-3,3e-3 train.warmup_steps=1,2"
# the local run sweeps values the train step does not compile in: one compile, shared by the 4 points
SEEDS = "train.seed=0,1 data.seed=0,1"


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
        f"--grid={SEEDS}",
        f"--workdir={sw}",
        f"--config.data_root={data}",
        "--config.train.steps=3",
        "--config.log.every_steps=1",
    ]
    p = _sweep(*args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["points"] == 4 and res["ok"] == 4
    points = S.expand(S.parse_grid(SEEDS))
    names = sorted(d.name for d in sw.iterdir() if d.is_dir() and d.name != S.CACHE_DIR)
    assert names == sorted(S.point_name(pt) for pt in points)
    for pt in points:
        # each run got its point's values, and the sweep's compilation cache
        cfg = json.loads((sw / S.point_name(pt) / "config.json").read_text())
        assert cfg["train"]["seed"] == int(pt["train.seed"])
        assert cfg["data"]["seed"] == int(pt["data.seed"])
        assert cfg["parallel"]["compilation_cache_dir"] == str(sw / S.CACHE_DIR)
    # the four points' step is one program: compiled by the first, loaded by the others
    assert len(list((sw / S.CACHE_DIR).glob("jit_step-*"))) == 1
    rows = list(csv.DictReader(Path(sw / "results.csv").read_text().splitlines()))
    assert [(r["train.seed"], r["data.seed"]) for r in rows] == [
        ("0", "0"),
        ("0", "1"),
        ("1", "0"),
        ("1", "1"),
    ]
    for r in rows:
        assert (
            r["status"] == "ok"
            and r["step"] == "3"
            and float(r["loss"]) > 0
            and float(r["tokens_per_s"]) > 0
        )
    md = (sw / "results.md").read_text().splitlines()
    assert md[0].startswith("| train.seed | data.seed | status | step | loss") and len(md) == 6
    # another data order at the same init, another init on the same data: the step-3 losses differ
    assert len({r["loss"] for r in rows}) == 4
    # a second call finds every point done and only rebuilds the table
    p2 = _sweep(*args)
    assert p2.returncode == 0 and p2.stdout.count("done before, skipped") == 4
