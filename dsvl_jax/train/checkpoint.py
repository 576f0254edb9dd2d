"""Orbax checkpoints of (model config, params).

Layout of a params checkpoint CKPT/:
  model_config.json   the ModelConfig as JSON (the source of truth for shapes)
  params/             orbax StandardCheckpointer tree
Restores go through the abstract params of the stored config, so a checkpoint whose tensors do not
match its config is reported (paths and shapes), not silently reshaped.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from dsvl_jax.model.config import ModelConfig, model_config_from_dict
from dsvl_jax.model.params import Params, abstract_params, flatten

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


class CheckpointError(ValueError):
    """A checkpoint is missing, or its tensors disagree with its model config."""


def save_params(path: str, cfg: ModelConfig, params: Params) -> None:
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, PARAMS_DIR), params, force=True)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)


def read_config(path: str) -> ModelConfig:
    f = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(f):
        raise CheckpointError(f"{path}: not a dsvl_jax checkpoint (no {CONFIG_FILE})")
    return model_config_from_dict(json.load(open(f)))


def _tree_shapes(meta) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in flatten(meta).items()}


def check_against(cfg: ModelConfig, stored: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise CheckpointError listing missing / unexpected / mis-shaped parameters."""
    want = _tree_shapes(abstract_params(cfg))
    missing = sorted(set(want) - set(stored))
    extra = sorted(set(stored) - set(want))
    shapes = [f"{k}: stored {stored[k]} vs config {want[k]}" for k in sorted(set(want) & set(stored))
              if stored[k] != want[k]]
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected {extra}")
    if shapes:
        problems.append(f"shape mismatch {shapes}")
    if problems:
        raise CheckpointError(f"{source}: params do not match the model config: " + "; ".join(problems))


def load_params(path: str, cfg: ModelConfig | None = None, shardings=None) -> tuple[ModelConfig, Params]:
    """Restore (cfg, params). `cfg` overrides the stored config for non-shape fields (dtype, remat…)."""
    path = os.path.abspath(path)
    stored_cfg = read_config(path)
    cfg = cfg or stored_cfg
    pdir = os.path.join(path, PARAMS_DIR)
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(pdir)
        tree = getattr(meta, "item_metadata", None) or getattr(meta, "tree", None) or meta
        check_against(cfg, _tree_shapes(tree), path)
        target = abstract_params(cfg)
        if shardings is not None:
            target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, shardings)
        else:
            dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), target)
        params = ckptr.restore(pdir, target)
    return cfg, params


def params_equal(a: Params, b: Params) -> bool:
    fa, fb = flatten(a), flatten(b)
    return fa.keys() == fb.keys() and all(np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa)
