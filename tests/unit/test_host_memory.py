"""parallel/host_memory.py: with freed memory retained, a jitted step stops page-faulting its temporaries.

Run in subprocesses: mallopt settings are process-wide and must not leak into the test process.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = """
import resource, jax, jax.numpy as jnp
from dsvl_jax.parallel.host_memory import allocator, retain_freed_memory
applied = retain_freed_memory()
f = jax.jit(lambda a, b: (lambda y: (y.sum(0), y.sum(1)))(a @ b))  # a 64 MB [4096, 4096] f32 temporary
a, b = jnp.ones((4096, 8)), jnp.ones((8, 4096))
for _ in range(10):  # warm up: the retained heap grows to the calls' peak (thread timing may raise it late)
    jax.block_until_ready(f(a, b))
per_call = []
for _ in range(5):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(f(a, b))
    per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(allocator(), applied, sorted(per_call)[2])  # median call
"""


def _faults(**env):
    e = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    e.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="", **env)
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=e, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-2000:]
    name, applied, faults = p.stdout.split()
    return name, applied == "True", float(faults)


def test_retained_memory_removes_per_call_page_faults():
    name, applied, retained = _faults()
    assert (name, applied) == ("glibc", True)
    _, applied_sys, system = _faults(DSVL_HOST_ALLOCATOR="system")
    assert not applied_sys
    print(
        f"minor page faults per call (median of 5): {system:.0f} with glibc defaults, {retained:.0f} retained"
    )
    assert system > 10_000  # the 64 MB temporary is fresh pages on every call (16k x 4 KiB)
    assert retained < 100
