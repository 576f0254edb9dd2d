"""One process of the 2-process test: 4 local CPU devices, jax.distributed over 127.0.0.1.

Usage: python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON
"""

import json
import os
import sys

from commands import xla_flags  # tests/ is on the worker's PYTHONPATH; imports no jax

# the parent's compile options (tests/conftest.py), 4 devices per process
os.environ["XLA_FLAGS"] = xla_flags(4)
os.environ["JAX_PLATFORMS"] = "cpu"


def main(pid: int, n: int, port: int, out: str) -> None:
    import jax

    from dsvl_jax.parallel.distributed import host_rows, initialize

    from multihost_common import run_steps

    c = {"coordinator_address": f"127.0.0.1:{port}", "num_processes": n, "process_id": pid}
    assert initialize(c)
    assert (
        jax.process_count() == n and jax.device_count() == 4 * n and jax.local_device_count() == 4
    )
    losses = run_steps(rows_fn=host_rows)
    if pid == 0:
        with open(out, "w") as f:
            json.dump(
                {"losses": losses, "devices": jax.device_count(), "processes": jax.process_count()},
                f,
            )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
