"""What pods do to a running trainer: a second run on the same workdir (run.lock), a lock left behind by a
dead run, SIGTERM while the first step compiles, Ctrl-C during training, kill -9 with grain worker
processes. The lock's rules are checked in-process (no jax); the rest runs the command as users type it,
in subprocesses, on the tiny stage-2 config over a generated corpus (as tests/integration/test_train.py
does). Each train compile costs ~30-60 s here, so there are four such runs."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dsvl_jax.checkpoints.run import saved_steps
from dsvl_jax.train import workdir_lock
from dsvl_jax.train.logger import read_metrics
from dsvl_jax.train.workdir_lock import LOCK_FILE, WorkdirLocked

import commands

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGS = [
    "--config=experiments/stage2_pretrain.py:tiny",
    "--config.train.steps=6",
    "--config.train.batch_size=8",
    "--config.train.seq_len=96",
    "--config.train.images_per_sample=1",
    "--config.data.modality_warmup_steps=4",
    "--config.checkpoint.every_steps=50",  # the only step checkpoints: the signal's and the last
    "--config.log.every_steps=1",
    "--config.log.progress=False",
    "--config.eval.every_steps=0",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return commands.tiny_corpus(tmp_path_factory.mktemp("data"))


def _cmd(data_root, work, *extra):
    return [
        sys.executable,
        "-m",
        "dsvl_jax.train",
        FLAGS[0],
        f"--workdir={work}",
        f"--config.data_root={data_root}",
        *FLAGS[1:],
        *extra,
    ]


def _env(compile_cache: bool = True):
    """The test's environment; without the suite's compilation cache the first step really compiles
    (for the tests that signal during that compile)."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    if not compile_cache:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def _start(cmd, compile_cache: bool = True):
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=_env(compile_cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _steps(work):
    path = os.path.join(work, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return sorted(r["step"] for r in read_metrics(path) if "loss" in r)


def _wait_for_step(p, work, step):
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and max(_steps(work), default=0) < step:
        time.sleep(0.1)
    assert p.poll() is None, p.communicate()[0][-3000:]


def _stat(pid):
    """(state, ppid) of a process, None when there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])


def _held(workdir) -> dict:
    with open(os.path.join(workdir, LOCK_FILE), "rb") as f:
        return json.loads(f.read())


def _cmdline(pid) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def _write_lock(workdir, **fields):
    """A lock file as a holder would write it, with `fields` replacing the test process's own."""
    rec = {**workdir_lock._record(), **fields}
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, LOCK_FILE), "wb") as f:
        f.write(workdir_lock._encode(rec))
    return rec


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- the lock's rules, in-process -----------------------------------------------------------------


def test_lock_refuses_a_live_holder_takes_over_a_stale_one(tmp_path, monkeypatch, caplog):
    """Held: a second acquire refuses, naming host, pid and since; the heartbeat advances; release deletes
    the file. A lock from another host is live until its heartbeat is older than DSVL_LOCK_STALE_S; one on
    this host whose pid is gone is stale at once; both stale ones are taken over with a warning."""
    monkeypatch.setenv(workdir_lock.HEARTBEAT_ENV, "0.05")
    work = str(tmp_path / "w")
    lock = workdir_lock.acquire(work)
    rec = _held(work)
    assert rec["host"] == socket.gethostname() and rec["pid"] == os.getpid()
    with pytest.raises(WorkdirLocked) as e:
        workdir_lock.acquire(work)
    msg = str(e.value)
    assert (
        "\n" not in msg and f"host {rec['host']}, pid {os.getpid()}, since {rec['started']}" in msg
    )
    deadline = time.time() + 30
    while _held(work)["beats"] < 2:
        assert time.time() < deadline, "no heartbeat"
        time.sleep(0.05)
    lock.release()
    assert not os.path.exists(os.path.join(work, LOCK_FILE))

    monkeypatch.setenv(workdir_lock.STALE_ENV, "60")
    other = _write_lock(work, host="other-host", pid=4242, heartbeat_s=time.time())
    with pytest.raises(WorkdirLocked, match="host other-host, pid 4242"):
        workdir_lock.acquire(work)
    os.utime(os.path.join(work, LOCK_FILE), (time.time() - 120,) * 2)
    _write_lock(work, host="other-host", pid=4242, heartbeat_s=time.time() - 120)
    os.utime(os.path.join(work, LOCK_FILE), (time.time() - 120,) * 2)
    with caplog.at_level(logging.WARNING, logger=workdir_lock.__name__):
        lock = workdir_lock.acquire(work)
    assert "taking over the stale lock of host other-host, pid 4242" in caplog.text
    assert "last heartbeat 120 s ago > 60 s" in caplog.text
    # the lock it took over is not overwritten by the old holder's heartbeat, nor deleted on release
    theirs = workdir_lock.WorkdirLock(os.path.join(work, LOCK_FILE), dict(other), 0.05)
    time.sleep(0.3)
    theirs.release()
    assert _held(work)["pid"] == os.getpid()
    lock.release()

    caplog.clear()
    dead = _dead_pid()
    _write_lock(work, pid=dead, pid_start=None)
    with caplog.at_level(logging.WARNING, logger=workdir_lock.__name__):
        workdir_lock.acquire(work).release()
    assert f"pid {dead} is gone on this host" in caplog.text


# -- the command ----------------------------------------------------------------------------------


def test_a_second_run_on_a_locked_workdir_refuses_with_one_line(data_root, tmp_path):
    """The workdir is held by a live process (this test's): the run stops before anything compiles with
    one line naming the holder, and leaves the lock as it was."""
    work = tmp_path / "run"
    rec = _write_lock(str(work))
    p = subprocess.run(
        _cmd(data_root, work), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 1, p.stderr[-3000:]
    assert last.startswith(f"train: error: workdir {work} is in use by another run"), last
    assert f"host {rec['host']}, pid {os.getpid()}, since {rec['started']}" in last
    assert "another --workdir" in last and "Traceback" not in p.stderr
    assert json.loads((work / LOCK_FILE).read_bytes())["token"] == rec["token"]
    assert not saved_steps(str(work / "checkpoints"))


def test_sigterm_while_compiling_exits_at_once_after_taking_over_a_stale_lock(data_root, tmp_path):
    """A lock left by a dead process on this host is taken over (warning); SIGTERM once the first step
    is compiling: exit 143 with one line, no checkpoint, the lock released."""
    work = tmp_path / "run"
    dead = _dead_pid()
    _write_lock(str(work), pid=dead, pid_start=None)
    p = _start(_cmd(data_root, work), compile_cache=False)
    seen = []
    for line in p.stdout:
        seen.append(line)
        if "compiling the train step" in line:
            break
    assert p.poll() is None, "".join(seen)[-3000:]
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    out = "".join(seen) + p.communicate(timeout=300)[0]
    exited_s = time.time() - t0
    assert p.returncode == 143, out[-3000:]
    assert f"taking over the stale lock of host {socket.gethostname()}, pid {dead}" in out
    said = [ln for ln in out.splitlines() if ln.startswith("train: ")]
    assert said == [
        "train: SIGTERM during set-up (before the first step): nothing saved; rerunning the command "
        "starts again (from the workdir's latest checkpoint, if any)"
    ], (said, exited_s)
    assert not _steps(work) and not saved_steps(str(work / "checkpoints"))
    assert not (work / LOCK_FILE).exists()


def test_ctrl_c_during_training_saves_that_step_and_the_rerun_resumes(data_root, tmp_path):
    """SIGINT after step 2: a checkpoint of the step reached, exit 130 with one line; the rerun resumes
    from that step and completes the stage."""
    work = tmp_path / "run"
    p = _start(_cmd(data_root, work))
    _wait_for_step(p, work, 2)
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 130, out[-3000:]
    said = [ln for ln in out.splitlines() if ln.startswith("train: ")]
    assert len(said) == 1 and said[0].startswith("train: SIGINT at step "), said
    step = int(said[0].split("SIGINT at step ")[1].split(":")[0])
    assert 2 <= step < 6 and saved_steps(str(work / "checkpoints")) == [step]
    assert not (work / LOCK_FILE).exists()
    p = subprocess.run(
        _cmd(data_root, work), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"step {step}" in next(ln for ln in p.stderr.splitlines() if "resumed from" in ln)
    assert json.loads(p.stdout.strip().splitlines()[-1])["step"] == 6
    assert _steps(work) == [1, 2, 3, 4, 5, 6]  # the steps after the checkpoint are logged once


def test_kill_9_takes_the_data_workers_with_it(data_root, tmp_path):
    """data.workers=2: once training runs, kill -9 of the trainer; its grain worker processes (and any
    other child) are gone shortly after (they watch their parent)."""
    work = tmp_path / "run"
    p = _start(_cmd(data_root, work, "--config.data.workers=2"))
    _wait_for_step(p, work, 1)
    children = [d for d in os.listdir("/proc") if d.isdigit() and (_stat(d) or ("", 0))[1] == p.pid]
    assert sum(b"spawn_main" in _cmdline(c) for c in children) >= 2, children  # grain's workers
    p.kill()
    p.wait()
    deadline = time.time() + 120
    alive = children
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [c for c in children if (_stat(c) or ("Z", 0))[0] != "Z"]
    assert not alive, [_cmdline(c) for c in alive]
