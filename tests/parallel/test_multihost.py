"""Two local processes (4 CPU devices each) with jax.distributed on 127.0.0.1 reproduce the
single-process (8 devices) losses: global arrays are assembled from per-host rows."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from multihost_common import run_steps

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_single_process(tmp_path, devices):
    out, port = str(tmp_path / "losses.json"), _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE, os.path.join(ROOT, "tests")]))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(HERE, "multihost_worker.py"),
                str(i),
                "2",
                str(port),
                out,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(l[-3000:] for l in logs)
    multi = json.loads(Path(out).read_text())
    assert multi["processes"] == 2 and multi["devices"] == 8
    single = run_steps()
    print(f"2-process losses {multi['losses']} vs 1-process {single}")
    np.testing.assert_allclose(multi["losses"], single, rtol=1e-6)
