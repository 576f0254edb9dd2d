"""N local CPU processes joined by jax.distributed over 127.0.0.1: the multi-host code path (per-host
data shards, global arrays, checkpoints written by every process) on one machine.

`launch(["train", "--config=...", ...], procs=2)` starts `python -m dsvl_jax.<command> ...` N times.
Each process gets DSVL_COORDINATOR / DSVL_NUM_PROCESSES / DSVL_PROCESS_ID (read by
parallel/distributed.py) and its own fake CPU devices through XLA_FLAGS. Output lines are prefixed
with `[pI]` (and kept whole in log_dir/proc_I.log); if one process fails the others are stopped,
since they would wait in a collective forever. Returns {"procs", "port", "returncodes", "results"},
where results[i] is the last JSON line process i printed (train prints its final metrics on every
process) or None.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

from dsvl_jax.errors import ConfigError

GRACE_S = 10.0  # after one process fails, the others get this long to exit before being terminated


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict, i: int, n: int, port: int, devices: int) -> dict:
    """The environment of local process i of n: coordinator, rank, and its own fake CPU device count."""
    flags = re.sub(
        r"--xla_force_host_platform_device_count=\S+", "", base.get("XLA_FLAGS", "")
    ).split()
    env = dict(
        base,
        DSVL_COORDINATOR=f"127.0.0.1:{port}",
        DSVL_NUM_PROCESSES=str(n),
        DSVL_PROCESS_ID=str(i),
        XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
        JAX_PLATFORMS="cpu",
    )
    env.pop("DSVL_DISTRIBUTED", None)
    return env


def _last_json(lines: list[str]):
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def launch(
    command: list[str],
    procs: int,
    devices_per_proc: int = 4,
    port: int = 0,
    log_dir: str = "",
    timeout_s: float | None = None,
    out=sys.stdout,
) -> dict:
    """Start `python -m dsvl_jax.<command[0]> command[1:]` N times, stream output, wait; see module doc."""
    if procs < 1 or devices_per_proc < 1:
        raise ConfigError(f"--procs={procs} and --devices_per_proc={devices_per_proc} must be >= 1")
    if not command:
        raise ConfigError("nothing to run: give the command after --, e.g. -- train --config=...")
    port = port or free_port()
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
    argv = [sys.executable, "-m", f"dsvl_jax.{command[0]}", *command[1:]]
    lines: list[list[str]] = [[] for _ in range(procs)]
    lock = threading.Lock()
    ps = [
        subprocess.Popen(
            argv,
            env=process_env(dict(os.environ), i, procs, port, devices_per_proc),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        for i in range(procs)
    ]

    def pump(i: int, p: subprocess.Popen) -> None:
        log = open(os.path.join(log_dir, f"proc_{i}.log"), "w") if log_dir else None  # noqa: SIM115
        for line in p.stdout:
            lines[i].append(line)
            if log:
                log.write(line)
            with lock:
                out.write(f"[p{i}] {line}")
                out.flush()
        if log:
            log.close()

    threads = [threading.Thread(target=pump, args=(i, p), daemon=True) for i, p in enumerate(ps)]
    for th in threads:
        th.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    failed_at = None
    while any(p.poll() is None for p in ps):
        now = time.monotonic()
        if failed_at is None and any(p.poll() not in (None, 0) for p in ps):
            failed_at = now
        if (failed_at is not None and now - failed_at > GRACE_S) or (
            deadline is not None and now > deadline
        ):
            for p in ps:
                if p.poll() is None:
                    p.terminate()
            break
        time.sleep(0.2)
    for p in ps:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for th in threads:
        th.join(timeout=10)
    return {
        "procs": procs,
        "port": port,
        "returncodes": [p.returncode for p in ps],
        "results": [_last_json(ls) for ls in lines],
    }
