"""What pods do to a run's checkpoints: a flipped bit, a truncated or deleted file in the latest step, every
step damaged, a resume under a changed config. One module-scoped reference run (stage-2 tiny, 6 steps,
checkpoints at 2, 4, 6); each fault damages a copy of its workdir. The flipped bit goes through a real
resume (the losses after it equal the reference's bit for bit); the other faults are restore-only checks
(the restored state equals step 4's bit for bit), since every train compile costs ~30-60 s here."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from dsvl_jax.checkpoints.run import (
    CONFIG_HISTORY,
    MANIFEST,
    QUARANTINE_DIR,
    RunCheckpoints,
    verify_step,
)
from dsvl_jax.config import load_experiment
from dsvl_jax.errors import CheckpointError, ConfigError
from dsvl_jax.model.config import model_config_from_dict
from dsvl_jax.parallel.mesh import build_mesh
from dsvl_jax.parallel.rules import rules_from_config
from dsvl_jax.train.logger import read_metrics
from dsvl_jax.train.loop import train
from dsvl_jax.train.state import StateFactory

import commands

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# _cfg() as typed on the command line
FLAGS = [
    "--config=experiments/stage2_pretrain.py:tiny",
    "--config.train.steps=6",
    "--config.train.batch_size=8",
    "--config.train.seq_len=96",
    "--config.train.images_per_sample=1",
    "--config.data.modality_warmup_steps=4",
    "--config.checkpoint.every_steps=2",
    "--config.log.every_steps=1",
    "--config.log.progress=False",
    "--config.eval.every_steps=0",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return commands.tiny_corpus(tmp_path_factory.mktemp("data"))


def _cfg(data_root, **train):
    c = load_experiment(os.path.join(ROOT, "experiments", "stage2_pretrain.py"), "tiny").unlock()
    c.data_root = data_root
    c.train.update(dict(steps=6, batch_size=8, seq_len=96, images_per_sample=1), **train)
    c.data.modality_warmup_steps = 4
    c.checkpoint.every_steps, c.log.every_steps, c.log.progress, c.eval.every_steps = 2, 1, False, 0
    return c


def _losses(workdir):
    return {
        r["step"]: r["loss"]
        for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
        if "loss" in r
    }


@pytest.fixture(scope="module")
def ref(data_root, tmp_path_factory):
    """6 uninterrupted steps; every saved step carries a manifest vouching for its files and the config."""
    work = tmp_path_factory.mktemp("ref") / "run"
    res = train(_cfg(data_root), str(work))
    assert res.compiles == 1 and res.step == 6
    ckpts = work / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["2", "4", "6"]
    for s in (2, 4, 6):
        m = json.loads((ckpts / str(s) / MANIFEST).read_text())
        assert m["finite"] is True and m["step"] == s
        assert any(f.startswith("state/") for f in m["files"]) and "meta/metadata" in m["files"]
        assert verify_step(str(ckpts / str(s))) == (None, True)
    losses = _losses(work)
    assert sorted(losses) == list(range(1, 7))
    return work, losses


def _copy(ref, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(ref[0], dst)
    return dst


def _largest_state_file(step_dir):
    files = [os.path.join(r, n) for r, _, ns in os.walk(step_dir / "state") for n in ns]
    return max(files, key=os.path.getsize)


def _damage(step_dir, how):
    f = _largest_state_file(step_dir)
    if how == "flip":
        with open(f, "r+b") as fh:
            fh.seek(os.path.getsize(f) // 2)
            b = fh.read(1)[0]
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([b ^ 0x10]))
    elif how == "truncate":
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
    else:
        os.remove(f)


def _factory(cfg):
    return StateFactory(
        model_config_from_dict(cfg.model),
        cfg.train,
        build_mesh(cfg.parallel),
        rules_from_config(cfg.parallel.rules_override),
    )


def _quarantined(run):
    return sorted(os.listdir(run / "checkpoints" / QUARANTINE_DIR))


def test_a_flipped_bit_resumes_from_the_previous_step_bit_for_bit(data_root, ref, tmp_path, caplog):
    """One flipped bit in step 6 (it would restore without any error): the resume moves step 6 aside as
    bad, continues from step 4, and steps 5 and 6 give the reference run's losses bit for bit."""
    run = _copy(ref, tmp_path)
    _damage(run / "checkpoints" / "6", "flip")
    caplog.set_level(logging.INFO)
    res = train(_cfg(data_root), str(run))
    assert res.step == 6 and res.compiles == 1
    assert any(r.getMessage().endswith("step 4") for r in caplog.records if "resumed" in r.msg)
    bad = [r.getMessage() for r in caplog.records if "is bad" in r.getMessage()]
    assert len(bad) == 1 and "step 6 is bad (digest: state/" in bad[0]
    assert _quarantined(run) == ["6.bad-digest"]
    assert (
        "sha256 differs"
        in (run / "checkpoints" / QUARANTINE_DIR / "6.bad-digest" / "why.txt").read_text()
    )
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "4", "6", QUARANTINE_DIR]
    assert verify_step(str(run / "checkpoints" / "6")) == (None, True)  # the new step 6
    got = _losses(run)
    assert sorted(got) == list(range(1, 7))
    for s in range(1, 7):
        assert got[s] == ref[1][s], (s, got[s], ref[1][s])  # bit for bit (floats written with repr)
    assert not (run / CONFIG_HISTORY).exists()


@pytest.mark.parametrize(
    "how, manifest, step, reason",
    [
        ("truncate", True, 4, "6.bad-size"),
        ("delete", True, 4, "6.bad-missing"),
        # no manifest (a checkpoint from before manifests): orbax / tensorstore's error moves it aside
        ("truncate", False, 4, "6.bad-restore-error"),
        # no manifest, intact: restored unverified
        (None, False, 6, None),
    ],
)
def test_a_damaged_latest_step_restores_the_previous_one(
    data_root, ref, tmp_path, how, manifest, step, reason
):
    run = _copy(ref, tmp_path)
    last = run / "checkpoints" / "6"
    if not manifest:
        os.remove(last / MANIFEST)
    if how:
        _damage(last, how)
    cfg = _cfg(data_root)
    abstract = _factory(cfg).abstract_sharded()
    conf = json.loads(cfg.to_json_best_effort())
    got = RunCheckpoints(str(run / "checkpoints"), config=conf).restore_latest(abstract, None)
    assert (got.step, got.verified, got.accepted, got.unchecked) == (
        step,
        manifest or step != 6,
        {},
        {},
    )
    assert got.meta["loop_step"] == step
    want, _ = RunCheckpoints(str(ref[0] / "checkpoints")).restore(step, abstract, None)
    a, b = jax.tree.leaves(got.state), jax.tree.leaves(want)
    assert len(a) == len(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b)
    )
    if reason:
        assert _quarantined(run) == [reason]
        assert sorted(os.listdir(run / "checkpoints")) == ["2", "4", QUARANTINE_DIR]
    else:
        assert not (run / "checkpoints" / QUARANTINE_DIR).exists()


def test_every_step_bad_is_one_error_and_stays_one(data_root, ref, tmp_path):
    """Every step damaged: the train command stops with one line naming each step and why; all three are
    moved aside, and a rerun stops again instead of starting over."""
    run = _copy(ref, tmp_path)
    for s, how in ((2, "delete"), (4, "truncate"), (6, "flip")):
        _damage(run / "checkpoints" / str(s), how)
    p = commands.run(
        "train", *FLAGS, f"--workdir={run}", f"--config.data_root={data_root}", timeout=300
    )
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 1, p.stderr[-3000:]
    assert last.startswith("train: error: ") and "no usable checkpoint" in last, last
    assert "step 6 (digest" in last and "step 4 (size" in last and "step 2 (missing" in last, last
    assert _quarantined(run) == ["2.bad-missing", "4.bad-size", "6.bad-digest"]
    with pytest.raises(CheckpointError, match="every step was moved aside as bad"):
        train(_cfg(data_root), str(run))


def test_a_changed_config_is_refused_then_accepted_and_recorded(data_root, ref, tmp_path):
    """A resume under another lr stops with one line naming the key and the flag; config.json is not
    touched. With --config.resume_overrides=train.lr it resumes, records the change in
    config_history.jsonl (a logging change rides along, unchecked) and writes the new config.json."""
    run = _copy(ref, tmp_path)
    before = (run / "config.json").read_text()
    lr = json.loads(before)["train"]["lr"]
    with pytest.raises(ConfigError) as e:
        train(_cfg(data_root, lr=lr * 4), str(run))
    msg = str(e.value)
    assert "\n" not in msg and f"train.lr {lr} -> {lr * 4}" in msg, msg
    assert msg.endswith("--config.resume_overrides=train.lr (or start a new --workdir)"), msg
    assert (run / "config.json").read_text() == before and not (run / CONFIG_HISTORY).exists()
    c = _cfg(data_root, lr=lr * 4)
    c.resume_overrides, c.log.every_steps = "train.lr", 3
    res = train(c, str(run))  # step 6 of 6: nothing left to train, nothing compiles
    assert res.step == 6 and res.compiles == 0
    (rec,) = [json.loads(line) for line in (run / CONFIG_HISTORY).read_text().splitlines()]
    assert rec["step"] == 6 and rec["accepted"] == {"train.lr": [lr, lr * 4]}
    assert rec["unchecked"] == {"log.every_steps": [1, 3], "resume_overrides": ["", "train.lr"]}
    conf = json.loads((run / "config.json").read_text())
    assert conf["train"]["lr"] == lr * 4 and conf["resume_overrides"] == "train.lr"


def test_a_reader_of_a_running_run_passes_over_a_damaged_newest_step(ref, tmp_path, caplog):
    """chat / evaluate / export of a run still going (no final/ yet) read its newest *sound* step; the
    damaged one is named and left where it is (a reader never changes a run's folder)."""
    from dsvl_jax.checkpoints import open_model

    run = _copy(ref, tmp_path)
    shutil.rmtree(run / "final")
    _damage(run / "checkpoints" / "6", "flip")
    caplog.set_level(logging.WARNING)
    src = open_model(str(run))
    assert src.path == str(run / "checkpoints" / "4")
    assert any("newer steps are damaged: step 6 (digest" in r.getMessage() for r in caplog.records)
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "4", "6"]
    with pytest.raises(CheckpointError, match=r"checkpoints/6: a damaged step checkpoint \(digest"):
        open_model(str(run / "checkpoints" / "6"))
    for s in ("2", "4"):
        _damage(run / "checkpoints" / s, "delete")
    with pytest.raises(
        CheckpointError, match=r"every saved step is damaged: step 6 \(digest.*step 2"
    ):
        open_model(str(run))
