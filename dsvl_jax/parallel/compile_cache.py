"""The persistent XLA compilation cache. A real-size train step compiles for minutes; with the cache a
resumed (preempted) run, the next sweep point or a rerun at the same shapes loads the executable
instead. The key is the program, the compile options, the devices and the jax version, so a changed
model or mesh simply misses.

`parallel.compilation_cache_dir` (a local folder, or a gs:// path shared by a pod's hosts) switches it
on for a run; "" leaves jax's own setting (the JAX_COMPILATION_CACHE_DIR environment variable, which
the test suite sets). Programs that compile in under `jax_persistent_cache_min_compile_time_secs`
(1 s by default) are not stored.
"""

from __future__ import annotations

import jax


def enable(path: str) -> None:
    """Use `path` as the cache (before the first compile of the process); "" changes nothing."""
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
