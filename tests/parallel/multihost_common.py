"""The run both the 2-process test and its single-process reference execute."""

import jax
from conftest import make_config

from dsvl_jax.data.synthetic import synthetic_batch
from dsvl_jax.model.config import model_config_from_dict
from dsvl_jax.parallel import build_mesh, rules_from_config, shard_host_batch
from dsvl_jax.train.state import StateFactory
from dsvl_jax.train.step import CompiledStep

STEPS = 3


def run_steps(rows_fn=None) -> list[float]:
    """3 steps of the tiny model on a (2,2,2) mesh over all global devices; each process feeds its rows."""
    c = make_config(ici=(2, 2, 2), warmup_steps=0)
    cfg = model_config_from_dict(c.model)
    f = StateFactory(cfg, c.train, build_mesh(c.parallel), rules_from_config(None))
    state = f.init(jax.random.key(0))
    step = CompiledStep(f)
    losses = []
    for i in range(STEPS):
        rows = rows_fn(c.train.batch_size) if rows_fn else None
        local = synthetic_batch(cfg, c.train.batch_size, c.train.seq_len, seed=10 + i, rows=rows)
        state, m = step(state, shard_host_batch(local, f.mesh, f.rules))
        losses.append(float(m["loss"]))
    return losses
