"""Train state and its sharded, abstract-first creation.

The state holds all parameters plus optimizer state for the trainable subset only (a flat
{path: array} dict, so frozen parameters cost no optimizer memory). `jax.eval_shape` of the init gives
the abstract state; its logical axis names (carried by flax's LogicallyPartitioned boxes through
optax's init) become NamedShardings by parallel/rules.py; init then runs under jit with those
out_shardings, so no host ever materialises the full state. The same abstract state is the restore
target for checkpoints and the input of AOT compiles.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.params import abstract_params, flatten, init_boxed
from dsvl_jax.parallel.sharding import check_replication, logical_to_shardings
from dsvl_jax.train.optim import make_optimizer, trainable_paths
from dsvl_jax.train.schedules import make_schedule


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # nested dict, all parameters
    opt_state: Any  # optax state over the trainable flat dict


def split_trainable(params: Any, trainable: set[str]) -> tuple[dict, dict]:
    flat = flatten(params)
    return (
        {k: v for k, v in flat.items() if k in trainable},
        {k: v for k, v in flat.items() if k not in trainable},
    )


class StateFactory:
    """Everything derived once per run from (model cfg, train cfg, mesh, rules)."""

    def __init__(self, cfg: ModelConfig, t, mesh: Mesh, rules, replicate_max_elems: int = 1 << 20):
        self.cfg, self.t, self.mesh, self.rules = cfg, t, mesh, rules
        self.tx = make_optimizer(t)
        self.schedule = make_schedule(t)
        self.trainable = trainable_paths(flatten(abstract_params(cfg)).keys(), tuple(t.trainable))
        abstract_boxed = jax.eval_shape(self._init_boxed, jax.random.key(0))
        self.abstract = nn.meta.unbox(abstract_boxed)
        logical = nn.get_partition_spec(abstract_boxed)
        self.shardings = logical_to_shardings(logical, self.abstract, mesh, rules)
        check_replication(
            jax.tree.map(lambda s: s.spec, self.shardings.params),
            self.abstract.params,
            mesh,
            replicate_max_elems,
        )

    def abstract_sharded(self) -> TrainState:
        """The state as ShapeDtypeStructs carrying their shardings (restore targets, AOT compiles)."""
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            self.abstract,
            self.shardings,
        )

    def _init_boxed(self, rng) -> TrainState:
        params = init_boxed(self.cfg, rng)
        train = {k: v for k, v in flatten(params).items() if k in self.trainable}
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(train)
        )

    def init(self, rng: jax.Array) -> TrainState:
        """Random init, created directly sharded."""
        fn = jax.jit(lambda r: nn.meta.unbox(self._init_boxed(r)), out_shardings=self.shardings)
        with jax.set_mesh(self.mesh):
            return fn(rng)
