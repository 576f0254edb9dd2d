"""Params checkpoints: a model config plus its parameters, written with orbax.

Layout of a params checkpoint CKPT/:
  model_config.json   the ModelConfig as JSON (the source of truth for shapes)
  params/             orbax StandardCheckpointer tree
  tokenizer.*         optional: the tokenizer the model was trained with (see sources.py)
Restores go through the abstract params of the config, so tensors that disagree with it are reported
(CheckpointMismatch: paths and both shapes), never silently reshaped.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from dsvl_jax import compat, jsonfile
from dsvl_jax.errors import CheckpointError, CheckpointMismatch
from dsvl_jax.model.config import ModelConfig, model_config_from_dict
from dsvl_jax.model.params import Params, abstract_params, flatten

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


def is_params_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE))


def save_params(path: str, cfg: ModelConfig, params: Params) -> None:
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, PARAMS_DIR), params, force=True)
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)


def read_model_config(path: str) -> ModelConfig:
    f = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(f):
        raise CheckpointError(f"{path}: not a dsvl_jax params checkpoint (no {CONFIG_FILE})")
    return model_config_from_dict(jsonfile.read(f, CheckpointError, dict))


def shapes(tree) -> dict[str, tuple[int, ...]]:
    """{param path: shape} of a params tree (arrays, ShapeDtypeStructs or orbax metadata)."""
    return {k: tuple(v.shape) for k, v in flatten(tree).items()}


def check_params(cfg: ModelConfig, stored: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise CheckpointMismatch when `stored` shapes are not exactly the parameters `cfg` builds."""
    CheckpointMismatch.compare(source, shapes(abstract_params(cfg)), stored).raise_if_any()


def restore_target(cfg: ModelConfig, shardings=None) -> Params:
    """Abstract params carrying shardings: `shardings` (a matching tree) or the first device."""
    target = abstract_params(cfg)
    if shardings is None:
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), target)
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, shardings
    )


def load_params(path: str, cfg: ModelConfig, shardings=None) -> Params:
    """Restore the params of the checkpoint at `path` for `cfg` (which may differ from the stored
    config in non-shape fields: dtype, remat, attention kernel)."""
    path = os.path.abspath(path)
    pdir = os.path.join(path, PARAMS_DIR)
    if not os.path.isdir(pdir):
        raise CheckpointError(f"{path}: no {PARAMS_DIR}/ folder (an interrupted save?)")
    with ocp.StandardCheckpointer() as ckptr:
        check_params(cfg, shapes(compat.orbax_tree_metadata(ckptr, pdir)), path)
        return ckptr.restore(pdir, restore_target(cfg, shardings))


def params_equal(a: Params, b: Params) -> bool:
    fa, fb = flatten(a), flatten(b)
    return fa.keys() == fb.keys() and all(
        np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa
    )
