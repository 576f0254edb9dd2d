"""Keep freed host memory in the process instead of handing it back to the OS every step.

XLA:CPU allocates a step's temporaries afresh on every call. With glibc's defaults the large ones are
fresh pages each time (mmap'd, or per-thread arena heaps that are trimmed on free), and every first touch
page-faults: 250k minor faults (1 GB) per step on the benchmark's 'small' config, ~15% of the step
(benchmarks/train_step.py: 1.13 s -> 0.97 s on a 2-core CPU VM). With mmap off, one arena and no trimming,
step 2 onwards reuses step 1's pages: 0 faults per step. The process keeps its peak heap, which a
training or serving process reaches on its first step anyway.

Applied by the compute entry points (train, demo, chat, evaluate, benchmarks), never at import. Skipped
off glibc, when tcmalloc/jemalloc is preloaded (they keep freed memory themselves; tcmalloc is a further
~5% faster here), or with DSVL_HOST_ALLOCATOR=system.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>
_INT_MAX = 2**31 - 1

log = logging.getLogger(__name__)


def allocator() -> str:
    """Which host allocator serves this process: 'tcmalloc', 'jemalloc' (preloaded) or 'glibc'."""
    pre = os.environ.get("LD_PRELOAD", "")
    return next((name for name in ("tcmalloc", "jemalloc") if name in pre), "glibc")


def retain_freed_memory() -> bool:
    """Tell glibc malloc to keep freed memory for reuse; True when applied."""
    if os.environ.get("DSVL_HOST_ALLOCATOR", "retain") != "retain" or allocator() != "glibc":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # Order matters: one arena first (secondary arenas are mmap'd heaps that shrink on free).
    ok = all(
        mallopt(p, v) == 1
        for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX))
    )
    if not ok:
        log.warning("mallopt refused a setting; host allocations keep glibc's defaults")
    return ok
