"""The only place a Mesh is built: axes (data, fsdp, tensor) from config, ICI x DCN for multi-slice.

Config (`parallel` section):
  ici: {data, fsdp, tensor}   in-slice sizes; one of them may be -1 = "the rest of the devices"
  dcn: {data, fsdp, tensor}   cross-slice sizes (product = number of slices); default all 1
Axis types are set to Auto on purpose (classic GSPMD: the partitioner propagates shardings from the
parameter/batch shardings and our logical constraints); jax.make_mesh would default to Explicit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from dsvl_jax import compat
from dsvl_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")


class MeshError(ConfigError):
    """The requested mesh does not fit the devices."""


def resolve_shape(sizes: Mapping[str, int], n: int, what: str) -> tuple[int, ...]:
    """Fill a single -1 so the product equals n; raise naming both numbers otherwise."""
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    free = [i for i, s in enumerate(shape) if s == -1]
    if len(free) > 1:
        raise MeshError(
            f"parallel.{what}: at most one axis may be -1, got {dict(zip(MESH_AXES, shape))}"
        )
    if any(s == 0 or s < -1 for s in shape):
        raise MeshError(
            f"parallel.{what}: sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}"
        )
    known = math.prod(s for s in shape if s != -1)
    if free:
        if n % known:
            raise MeshError(
                f"parallel.{what}: {n} devices are not divisible by the fixed axes' product {known} "
                f"({dict(zip(MESH_AXES, shape))})"
            )
        shape[free[0]] = n // known
    if math.prod(shape) != n:
        raise MeshError(
            f"parallel.{what}: mesh {'x'.join(map(str, shape))} = {math.prod(shape)} devices "
            f"does not match the {n} devices available ({dict(zip(MESH_AXES, shape))})"
        )
    return tuple(shape)


def num_slices(devices: Sequence[jax.Device]) -> int:
    return len({getattr(d, "slice_index", 0) for d in devices})


def build_mesh(parallel, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh over all global devices (or `devices`) with axes MESH_AXES."""
    devices = list(jax.devices() if devices is None else devices)
    dcn_cfg = dict(parallel.get("dcn", {}) or {})
    slices = num_slices(devices)
    dcn = resolve_shape(dcn_cfg, slices, "dcn")
    ici = resolve_shape(dict(parallel.get("ici", {}) or {}), len(devices) // slices, "ici")
    if slices > 1:
        arr = compat.device_mesh_array(ici, dcn, devices)
    elif devices[0].platform == "cpu":
        arr = np.asarray(devices).reshape(ici)  # CPU devices have no topology to optimise for
    else:
        arr = compat.device_mesh_array(ici, None, devices)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
