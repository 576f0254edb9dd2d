"""Test-wide setup: 8 fake CPU devices (set before JAX is imported) and shared tiny fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent XLA compilation cache for the suite and the commands it starts (inherited through the
# environment): the many tiny runs at the same shapes compile their step once. Keyed by program, options,
# devices and jax version, so a code change misses instead of loading a stale executable.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax"),
)
