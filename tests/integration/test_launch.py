"""`python -m dsvl_jax.launch_local`: N local CPU processes joined by jax.distributed run one training."""

import json
import os

from dsvl_jax.parallel.local_launch import process_env

import commands


def _corpus(out) -> str:
    return commands.make_corpus(out)


def test_process_env_sets_rank_and_device_count():
    env = process_env(
        {
            "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1",
            "DSVL_DISTRIBUTED": "auto",
        },
        1,
        2,
        1234,
        3,
    )
    assert (env["DSVL_COORDINATOR"], env["DSVL_NUM_PROCESSES"], env["DSVL_PROCESS_ID"]) == (
        "127.0.0.1:1234",
        "2",
        "1",
    )
    assert env["XLA_FLAGS"].split() == ["--xla_foo=1", "--xla_force_host_platform_device_count=3"]
    assert "DSVL_DISTRIBUTED" not in env and env["JAX_PLATFORMS"] == "cpu"


def test_two_processes_train_tiny_stage1_and_agree(tmp_path):
    data, wd = _corpus(tmp_path / "corpus"), tmp_path / "run"
    p = commands.run(
        "launch_local",
        "--procs=2",
        "--devices_per_proc=2",
        f"--log_dir={tmp_path / 'logs'}",
        "--",
        "train",
        "--config=experiments/stage1_aligner.py:tiny",
        f"--workdir={wd}",
        f"--config.data_root={data}",
        "--config.train.steps=3",
        "--config.log.every_steps=1",
        "--config.checkpoint.every_steps=2",
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-5000:]
    assert "[p0] " in p.stdout and "[p1] " in p.stdout
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["returncodes"] == [0, 0]
    r0, r1 = res["results"]
    print(f"losses p0 {r0['loss']} p1 {r1['loss']}")
    # one global step: both processes hold the same replicated metrics
    for k in ("step", "loss", "grad_norm", "loss_tokens"):
        assert r0[k] == r1[k], (k, r0[k], r1[k])
    assert r0["step"] == 3 and r0["compiles"] == 1
    # process 0 alone writes metrics.jsonl; its last record is the loss both processes reported
    recs = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines() if l.strip()]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3]
    assert recs[-1]["loss"] == r0["loss"]
    assert (wd / "final").is_dir() and (tmp_path / "logs" / "proc_1.log").exists()

    # a damaged file of process 1's shard in the latest step: process 0 checks every file against the
    # manifest, both processes learn the verdict, step 3 is moved aside once and both resume from 2
    ckpts = wd / "checkpoints"
    shard = max(
        (f for f in (ckpts / "3").rglob("*") if "process_1" in str(f) and f.is_file()),
        key=lambda f: f.stat().st_size,
    )
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    shard.write_bytes(bytes(raw))
    p = commands.run(
        "launch_local",
        "--procs=2",
        "--devices_per_proc=2",
        f"--log_dir={tmp_path / 'logs2'}",
        "--",
        "train",
        "--config=experiments/stage1_aligner.py:tiny",
        f"--workdir={wd}",
        f"--config.data_root={data}",
        "--config.train.steps=4",
        "--config.log.every_steps=1",
        "--config.checkpoint.every_steps=2",
        "--config.resume_overrides=train.steps",
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-5000:]
    r0, r1 = json.loads(p.stdout.strip().splitlines()[-1])["results"]
    assert r0["step"] == r1["step"] == 4 and r0["loss"] == r1["loss"]
    assert sorted(os.listdir(ckpts / "quarantine")) == ["3.bad-digest"]
    assert p.stdout.count("checkpoint step 3 is bad (digest") == 1  # process 0 says it, once
    recs = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines() if l.strip()]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4]  # step 3 trained again


def test_a_failing_process_stops_the_launch(tmp_path):
    p = commands.run(
        "launch_local",
        "--procs=2",
        "--",
        "train",
        "--config=experiments/stage1_aligner.py:tiny",
        f"--workdir={tmp_path}",
        "--config.train.steps=0",
        timeout=300,
    )
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert p.returncode == 2 and res["returncodes"] == [2, 2], p.stdout[-3000:]
    assert "no prepared data for source" in p.stdout  # the first error a data-less config meets
