"""Shared bits of the command-line entry points."""
from __future__ import annotations

import logging
import os


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("DSVL_LOG", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def setup_process() -> None:
    """Logging, plus host-allocator settings for the entry points that run XLA computations
    (parallel/host_memory.py: no per-step page faults on CPU)."""
    from dsvl_jax.parallel.host_memory import retain_freed_memory

    setup_logging()
    retain_freed_memory()
