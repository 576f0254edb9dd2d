"""TPU slice names -> the arguments of `jax.experimental.topologies.get_topology_desc`, plus per-chip figures.

Names users type: `v5p-256`, `v5e-256`, `v4-128`, `v6e-256` (the Cloud TPU accelerator types; v4 and v5p
count TensorCores, two per chip, v5e and v6e count chips) or the `gen:shape` form libtpu uses
(`v5e:2x2`, `v5p:4x4x8`, `v4:2x2x1`). libtpu itself only takes `gen:shape` (with `v5` for v5p), so
this table is the one place that knows the slice shapes. One device per chip everywhere (v4/v5p in
"megacore" mode), so per-device compile figures are per-chip figures.

HBM is what the compiler lets one program use, as libtpu 0.0.42 reports it in RESOURCE_EXHAUSTED errors
(v5p 95.74 GiB, v4 30.75, v6e 31.25, v5e 15.75: a little under the chips' capacity); ICI bandwidth per chip (all
links) is the vendor figure from the Cloud TPU system-architecture pages. Peak FLOP/s live in
train/metrics.py:PEAK_FLOPS, keyed by the device kind the compile-only devices report.
"""

from __future__ import annotations

import dataclasses
import math
import re

from dsvl_jax import compat
from dsvl_jax.errors import ConfigError

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Generation:
    libtpu_name: str  # the `gen` of libtpu's `gen:shape`
    cores_per_chip: int  # in the accelerator-type name (v5p-256 = 256 cores = 128 chips)
    dims: int  # 2-D (v5e, v6e) or 3-D torus (v4, v5p)
    chip_config: str  # "megacore": one JAX device per chip
    hbm_bytes: int  # per chip, usable by a program ("available HBM" in libtpu 0.0.42's OOM errors)
    ici_bytes_per_s: float  # per chip, all links


GENERATIONS: dict[str, Generation] = {
    "v4": Generation("v4", 2, 3, "megacore", int(30.75 * GiB), 2400e9 / 8),
    "v5p": Generation("v5", 2, 3, "megacore", int(95.74 * GiB), 4800e9 / 8),
    "v5e": Generation("v5e", 1, 2, "default", int(15.75 * GiB), 1600e9 / 8),
    "v6e": Generation("v6e", 1, 2, "default", int(31.25 * GiB), 3584e9 / 8),
}
_ALIASES = {"v5": "v5p", "v5litepod": "v5e", "v6": "v6e"}

# Chips -> slice shape (the shapes Cloud TPU provisions).
_SHAPES_3D = {
    4: (2, 2, 1),
    8: (2, 2, 2),
    16: (2, 2, 4),
    32: (2, 4, 4),
    64: (4, 4, 4),
    128: (4, 4, 8),
    192: (4, 4, 12),
    256: (4, 8, 8),
    512: (8, 8, 8),
    768: (8, 8, 12),
    1024: (8, 8, 16),
    2048: (8, 16, 16),
    4096: (16, 16, 16),
    6144: (16, 16, 24),
}
_SHAPES_2D = {
    1: (1, 1),
    4: (2, 2),
    8: (2, 4),
    16: (4, 4),
    32: (4, 8),
    64: (8, 8),
    128: (8, 16),
    256: (16, 16),
}


class TopologyError(ConfigError):
    """An unknown or malformed slice name."""


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as given
    generation: str  # key of GENERATIONS
    shape: tuple[int, ...]  # chips per torus dimension
    num_slices: int = 1

    @property
    def gen(self) -> Generation:
        return GENERATIONS[self.generation]

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.shape)

    @property
    def chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def libtpu_name(self) -> str:
        return f"{self.gen.libtpu_name}:{'x'.join(map(str, self.shape))}"

    @property
    def wrap(self) -> tuple[bool, bool, bool]:
        """Torus wrap-around links: 3-D slices of 4x4x4 and up are full tori; 2-D slices wrap a
        dimension of 16 chips."""
        if self.gen.dims == 3:
            return (min(self.shape) >= 4,) * 3
        return (self.shape[0] == 16, self.shape[1] == 16, False)

    def desc_kwargs(self) -> dict:
        """Keyword arguments of jax.experimental.topologies.get_topology_desc."""
        host = (1, 1, 1) if self.chips_per_slice == 1 else (2, 2, 1)
        return dict(
            platform="tpu",
            topology_name=self.libtpu_name,
            chip_config_name=self.gen.chip_config,
            chips_per_host_bounds=host,
            num_slices=self.num_slices,
            wrap=self.wrap,
        )


def parse(name: str, num_slices: int = 1) -> Topology:
    """`v5p-256` | `v5e:2x2` | `v4:2x2x1` -> Topology. Raises TopologyError naming the known sizes."""
    if num_slices < 1:
        raise TopologyError(f"num_slices={num_slices} must be >= 1")
    m = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", name)
    if m:
        gen = _generation(m.group(1), name)
        shape = tuple(int(x) for x in m.group(2).split("x"))
        g = GENERATIONS[gen]
        if len(shape) == 3 and g.dims == 2 and shape[2] == 1:
            shape = shape[:2]
        if len(shape) == 2 and g.dims == 3:
            shape = (*shape, 1)
        if len(shape) != g.dims or min(shape) < 1:
            raise TopologyError(f"topology {name!r}: {gen} slices have {g.dims} dimensions")
        return Topology(name, gen, shape, num_slices)
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", name)
    if not m:
        raise TopologyError(
            f"topology {name!r}: expected e.g. v5p-256, v5e-256, v4-128, v6e-256 or v5e:2x2"
        )
    gen = _generation(m.group(1), name)
    g = GENERATIONS[gen]
    n = int(m.group(2))
    table = _SHAPES_3D if g.dims == 3 else _SHAPES_2D
    chips, rem = divmod(n, g.cores_per_chip)
    if rem or chips not in table:
        known = ", ".join(f"{gen}-{c * g.cores_per_chip}" for c in sorted(table))
        raise TopologyError(
            f"topology {name!r}: unknown {gen} size; known: {known} (or give gen:shape)"
        )
    return Topology(name, gen, table[chips], num_slices)


def _generation(prefix: str, name: str) -> str:
    gen = _ALIASES.get(prefix, prefix)
    if gen not in GENERATIONS:
        raise TopologyError(
            f"topology {name!r}: unknown TPU generation {prefix!r}; known: {sorted(GENERATIONS)}"
        )
    return gen


def devices(topo: Topology) -> list:
    """Compile-only devices of the slice(s) (needs libtpu; no TPU attached)."""
    return compat.topology_devices(**topo.desc_kwargs())
