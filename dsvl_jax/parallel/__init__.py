"""Device mesh, the logical-axis rule table, and sharding helpers. Imports nothing from model/."""

from dsvl_jax.parallel.mesh import MESH_AXES, MeshError, build_mesh
from dsvl_jax.parallel.rules import RULES, rules_from_config
from dsvl_jax.parallel.sharding import (
    ShardingError,
    batch_sharding,
    check_replication,
    logical_to_shardings,
    logical_to_specs,
    per_device_bytes,
    shard_host_batch,
)

__all__ = [
    "MESH_AXES",
    "RULES",
    "MeshError",
    "ShardingError",
    "batch_sharding",
    "build_mesh",
    "check_replication",
    "logical_to_shardings",
    "logical_to_specs",
    "per_device_bytes",
    "rules_from_config",
    "shard_host_batch",
]
