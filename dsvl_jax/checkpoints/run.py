"""A run's step checkpoints: orbax CheckpointManager (async) with three items per step:

  state     TrainState (params + optimizer state), sharded; restored through the abstract state with
            the *current* run's shardings, so a checkpoint restores onto another mesh shape
  data_iter the grain iterator state (JSON, one file per process)
  meta      JSON: step, config fingerprint, skipped-step count, data counters

Keeps the last `keep` checkpoints plus every `keep_period`-th step. A state with non-finite values
is never written.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from dsvl_jax import compat
from dsvl_jax.checkpoints.params import check_params, restore_target, shapes
from dsvl_jax.errors import CheckpointError, Error
from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.params import Params

STATE_ITEM = "state"


class CheckpointRefused(Error, RuntimeError):
    """A save that would write non-finite parameters."""


class _IterSnapshot:
    """The iterator state at the moment of `save`: orbax writes it from a background thread while the
    live iterator runs ahead. (grain's handler takes non-DatasetIterator states as JSON bytes.)"""

    def __init__(self, state: dict):
        self._state = json.dumps(state, indent=1).encode()

    def get_state(self) -> bytes:
        return self._state


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class RunCheckpoints:
    def __init__(
        self,
        directory: str,
        *,
        keep: int = 3,
        keep_period: int | None = None,
        async_save: bool = True,
    ):
        self.directory = os.path.abspath(directory)
        opts = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_period or None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.mngr = ocp.CheckpointManager(self.directory, options=opts)

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.mngr.all_steps())

    def save(self, step: int, state: Any, data_iter, meta: dict, *, force: bool = False) -> bool:
        if not bool(_all_finite(state)):
            raise CheckpointRefused(
                f"step {step}: the train state holds non-finite values; not saving"
            )
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(
                _IterSnapshot(data_iter.get_state())
            )
        return self.mngr.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, abstract_state: Any, data_iter) -> tuple[Any, dict]:
        """-> (state, meta); `data_iter` (if given) is positioned in place."""
        items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self.mngr.restore(step, args=ocp.args.Composite(**items))
        return out["state"], dict(out["meta"])

    def wait(self) -> None:
        self.mngr.wait_until_finished()

    def close(self) -> None:
        if self.mngr is not None:
            self.mngr.wait_until_finished()
            self.mngr.close()
            self.mngr = None


def step_of(path: str) -> int | None:
    """The step of a step-checkpoint folder (`.../checkpoints/<step>` holding a state item), else None."""
    name = os.path.basename(os.path.normpath(path))
    return int(name) if name.isdigit() and os.path.isdir(os.path.join(path, STATE_ITEM)) else None


def saved_steps(directory: str) -> list[int]:
    """The complete steps (holding a state item) under a run's checkpoints/ folder, ascending; read
    from the folder names, without an orbax manager (which would create the folder)."""
    if not os.path.isdir(directory):
        return []
    found = (step_of(os.path.join(directory, name)) for name in os.listdir(directory))
    return sorted(s for s in found if s is not None)


def load_step_params(path: str, cfg: ModelConfig, shardings=None) -> Params:
    """Only the params of a step checkpoint (the optimizer state is not read): for chat, eval, export
    of a run that is still going."""
    state_dir = os.path.join(path, STATE_ITEM)
    if not os.path.isdir(state_dir):
        raise CheckpointError(f"{path}: not a step checkpoint (no {STATE_ITEM}/ item)")
    with ocp.PyTreeCheckpointer() as ckptr:
        tree = compat.orbax_tree_metadata(ckptr, state_dir)
        if not isinstance(tree, dict) or "params" not in tree:
            raise CheckpointError(f"{path}: the state item holds no params")
        check_params(cfg, shapes(tree["params"]), path)
        target = {"params": restore_target(cfg, shardings)}
        restore_args = jax.tree.map(
            lambda a: ocp.ArrayRestoreArgs(
                sharding=a.sharding, global_shape=a.shape, dtype=a.dtype
            ),
            target,
        )
        out = ckptr.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True
            ),
        )
    return out["params"]
