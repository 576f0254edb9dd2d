"""Test-wide setup: 8 fake CPU devices (set before JAX is imported) and shared tiny fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The suite's programs are tiny: XLA's CPU compile (LLVM) dominates, not their run. Without backend
# optimisation they compile ~40% faster and still run faster overall; matmuls and convolutions call the
# same Eigen kernels. Every process of the suite (the commands it starts inherit XLA_FLAGS) uses the same
# flags, so bit-for-bit comparisons between runs still hold.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent XLA compilation cache for the suite and the commands it starts (inherited through the
# environment): the many tiny runs at the same shapes compile their step once. Keyed by program, options,
# devices and jax version, so a code change misses instead of loading a stale executable.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax"),
)
