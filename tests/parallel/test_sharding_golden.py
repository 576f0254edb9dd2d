"""Per-parameter mesh layouts of the tiny and 7B models on fixed topologies, kept as golden JSON.

A change to parallel/rules.py or to a model's logical names shows up as a diff of
tests/golden/sharding_<size>.json (regenerate with UPDATE_GOLDEN=1 and review it).
"""

import json
import os
from pathlib import Path

import jax
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

from dsvl_jax.model.params import abstract_params, flatten, logical_axes
from dsvl_jax.model.sizes import model_config
from dsvl_jax.parallel import (
    MESH_AXES,
    RULES,
    ShardingError,
    check_replication,
    logical_to_specs,
    rules_from_config,
)

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "golden")
TOPOLOGIES = {"tiny": (2, 2, 2), "7b": (1, 64, 4)}  # 7b: a v5p-256-like FSDP x tensor layout


def _specs(size, rules=RULES):
    cfg = model_config(size)
    mesh = AbstractMesh(TOPOLOGIES[size], MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    abstract = abstract_params(cfg)
    return mesh, abstract, logical_to_specs(logical_axes(cfg), abstract, mesh, rules)


@pytest.mark.parametrize("size", sorted(TOPOLOGIES))
def test_sharding_golden(size):
    mesh, abstract, specs = _specs(size)
    check_replication(specs, abstract, mesh, 1 << 20)
    dump = {
        k: [list(a) if isinstance(a, tuple) else a for a in v]
        for k, v in flatten(
            jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
        ).items()
    }
    text = json.dumps(
        {"mesh": dict(zip(MESH_AXES, TOPOLOGIES[size])), "params": dump}, indent=1, sort_keys=True
    )
    path = os.path.join(GOLDEN, f"sharding_{size}.json")
    if os.environ.get("UPDATE_GOLDEN"):
        with open(path, "w") as f:
            f.write(text + "\n")
    assert json.loads(Path(path).read_text()) == json.loads(text)


def test_7b_big_matrices_are_sharded_both_ways():
    _, _, specs = _specs("7b")
    flat = flatten(jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, PartitionSpec)))
    assert flat["llm/blocks/q/kernel"] == (None, "fsdp", "tensor", None)
    assert flat["llm/blocks/down/kernel"] == (None, "tensor", "fsdp")
    assert flat["llm/lm_head/kernel"] == ("fsdp", "tensor")


def test_a_rule_that_replicates_big_weights_is_refused():
    mesh, abstract, specs = _specs(
        "7b", rules_from_config({"embed": None, "mlp": None, "heads": None, "vocab": None})
    )
    with pytest.raises(ShardingError, match=r"fully replicated on mesh .*\['llm'\]"):
        check_replication(specs, abstract, mesh, 1 << 20)
