"""Multi-host start-up: jax.distributed.initialize from config or the environment.

Order: explicit `parallel.coordinator_address/num_processes/process_id` > env DSVL_COORDINATOR /
DSVL_NUM_PROCESSES / DSVL_PROCESS_ID > auto-detection (TPU pods, SLURM: no arguments needed) when
DSVL_DISTRIBUTED=auto. A single process with nothing configured stays single-process.
"""

from __future__ import annotations

import os

import jax

from dsvl_jax.errors import ConfigError


def initialize(parallel=None) -> bool:
    """Initialise the JAX distributed runtime if configured. Returns True when multi-process."""
    p = parallel or {}
    addr = p.get("coordinator_address", "") or os.environ.get("DSVL_COORDINATOR", "")
    n = int(p.get("num_processes", 0) or os.environ.get("DSVL_NUM_PROCESSES", 0))
    pid = int(
        p.get("process_id", -1)
        if p.get("process_id", -1) >= 0
        else os.environ.get("DSVL_PROCESS_ID", -1)
    )
    if addr:
        if n < 1 or pid < 0:
            raise ConfigError(
                f"parallel.coordinator_address={addr!r} needs num_processes (got {n}) and "
                f"process_id (got {pid})"
            )
        jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)
        return True
    if os.environ.get("DSVL_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
        return jax.process_count() > 1
    return False


def host_rows(global_batch: int) -> slice:
    """The rows of the global batch this process feeds (contiguous, in process order)."""
    n, i = jax.process_count(), jax.process_index()
    if global_batch % n:
        raise ConfigError(f"train.batch_size={global_batch} is not divisible by the {n} processes")
    per = global_batch // n
    return slice(i * per, (i + 1) * per)
