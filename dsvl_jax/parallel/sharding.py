"""Sharding helpers: logical specs -> NamedShardings (with divisibility checks), batch placement."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dsvl_jax.errors import ConfigError
from dsvl_jax.parallel.rules import Rule


class ShardingError(ConfigError):
    """A dimension cannot be split over the mesh axes its logical name maps to."""


def _mesh_axes(name: str | None, rules: Sequence[Rule]):
    if name is None:
        return None
    for k, v in rules:
        if k == name:
            return v
    raise ShardingError(f"logical axis {name!r} has no rule in parallel/rules.py")


def spec_for(
    names: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Sequence[Rule],
    where: str = "",
) -> P:
    """Logical names of one array -> PartitionSpec, checking each dim divides its mesh axes."""
    out, used = [], set()
    for dim, name in zip(shape, names):
        axes = _mesh_axes(name, rules)
        if axes is None:
            out.append(None)
            continue
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
        axes_t = tuple(a for a in axes_t if a not in used)  # a mesh axis may shard one dim only
        size = math.prod(mesh.shape[a] for a in axes_t)
        if dim % size:
            raise ShardingError(
                f"{where}: dim {dim} (logical {name!r}) is not divisible by mesh axes "
                f"{axes_t} of size {size}"
            )
        used.update(axes_t)
        out.append(None if size == 1 else (axes_t[0] if len(axes_t) == 1 else axes_t))
    return P(*out)


def logical_to_specs(logical: Any, abstract: Any, mesh, rules: Sequence[Rule]) -> Any:
    """Tree of logical PartitionSpecs + matching abstract arrays -> tree of mesh PartitionSpecs.

    Works with an AbstractMesh too (golden sharding dumps of pod topologies on a CPU box)."""
    paths = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(abstract)}

    def one(path, names):
        where = jax.tree_util.keystr(path)
        return spec_for(tuple(names), paths[where].shape, mesh, rules, where)

    return jax.tree_util.tree_map_with_path(one, logical, is_leaf=lambda x: isinstance(x, P))


def logical_to_shardings(logical: Any, abstract: Any, mesh: Mesh, rules: Sequence[Rule]) -> Any:
    """Tree of logical PartitionSpecs + matching abstract arrays -> tree of NamedShardings."""
    specs = logical_to_specs(logical, abstract, mesh, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def check_replication(specs: Any, abstract: Any, mesh, max_elems: int) -> None:
    """Refuse a layout that fully replicates any parameter above `max_elems` elements while the mesh
    has model-parallel axes (fsdp/tensor > 1): that is a missing or wrong rule, not a choice."""
    if math.prod(mesh.shape[a] for a in ("fsdp", "tensor")) == 1:
        return
    big = []
    for (path, spec), leaf in zip(
        jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, P)),
        jax.tree.leaves(abstract),
    ):
        n = math.prod(leaf.shape)
        if n > max_elems and all(a is None for a in spec):
            big.append(f"{jax.tree_util.keystr(path)} {tuple(leaf.shape)}")
    if big:
        raise ShardingError(
            f"{len(big)} parameter(s) above parallel.replicate_max_elems={max_elems} would be "
            f"fully replicated on mesh {dict(mesh.shape)}: {big[:8]}; fix parallel/rules.py "
            f"or parallel.rules_override"
        )


def batch_sharding(mesh: Mesh, rules: Sequence[Rule], ndim: int) -> NamedSharding:
    """Leading (batch) axis over the act_batch mesh axes, the rest replicated."""
    axes = _mesh_axes("act_batch", rules)
    return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh, rules: Sequence[Rule]) -> int:
    """How many ways the batch axis is split (product of the act_batch mesh axes)."""
    axes = _mesh_axes("act_batch", rules)
    axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    return math.prod(mesh.shape[a] for a in axes)


def shard_host_batch(
    batch: dict[str, np.ndarray], mesh: Mesh, rules: Sequence[Rule]
) -> dict[str, jax.Array]:
    """This host's slice of the global batch -> global jax.Arrays sharded on the batch axis.

    Each process passes its local rows (global_batch / process_count of them, in process order);
    jax.make_array_from_process_local_data stitches them into one global array without copies.
    """
    out = {}
    for k, v in batch.items():
        if v is None:
            continue
        sh = batch_sharding(mesh, rules, np.ndim(v))
        out[k] = jax.make_array_from_process_local_data(sh, np.asarray(v))
    return out


def per_device_bytes(tree: Any) -> dict[Any, int]:
    """Bytes each device holds for the arrays of `tree` (read from the arrays' shards)."""
    out: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out
