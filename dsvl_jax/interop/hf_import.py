"""HF DeepseekVL(Hybrid) folder (config.json + safetensors) -> dsvl_jax (ModelConfig, params).

Needs neither torch nor transformers: safetensors is read as numpy. Every HF tensor is either mapped
by the name table, or listed in hf_names.IGNORED (counted), or reported; every dsvl_jax parameter
must be filled. Anything else is one CheckpointMismatch naming the HF tensors and both shapes in HF
layout. To load any model folder (run dirs, params checkpoints, HF folders) use
`dsvl_jax.checkpoints.open_model`; this module is the HF half of it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np
from safetensors import safe_open

from dsvl_jax.errors import CheckpointError, CheckpointMismatch
from dsvl_jax.interop import hf_names
from dsvl_jax.interop.hf_config import from_hf
from dsvl_jax.model.config import ModelConfig, dtype_name_to_numpy
from dsvl_jax.model.params import Params, abstract_params, flatten, stack_layers, unflatten

log = logging.getLogger(__name__)


def read_safetensors(folder: str) -> dict[str, np.ndarray]:
    """All tensors of a save_pretrained folder (single file or sharded with an index)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(folder, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    out: dict[str, np.ndarray] = {}
    for f in files:
        with safe_open(os.path.join(folder, f), framework="numpy") as st:
            for k in st.keys():  # noqa: SIM118 - safe_open is not a Mapping
                out[k] = st.get_tensor(k)
    return out


def unrolled_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter in the unrolled (`blocks_{i}`) layout, without allocating."""
    unrolled = dataclasses.replace(cfg, scan_layers=False)
    return {k: tuple(v.shape) for k, v in flatten(abstract_params(unrolled)).items()}


def _hf_shape(transform: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF layout of a parameter shape (a zero-stride view: nothing is allocated)."""
    return tuple(
        hf_names.TRANSFORMS[transform].inverse(np.broadcast_to(np.float32(0), shape)).shape
    )


def import_tensors(
    cfg: ModelConfig, tensors: dict[str, np.ndarray], source: str = "<tensors>"
) -> Params:
    """HF state dict -> params of `cfg` (scanned if cfg.scan_layers), or CheckpointMismatch."""
    expected = unrolled_shapes(cfg)
    mapped: dict[
        str, tuple[str, str, np.ndarray]
    ] = {}  # canonical HF key -> (path, transform, tensor)
    unexpected, ignored = [], 0
    for key, w in tensors.items():
        canonical = hf_names.canonical_hf_key(key)
        hit = hf_names.hf_to_ours(key, cfg.vision)
        if hit is None or hit[0] not in expected:
            if hf_names.is_ignored(canonical):
                ignored += 1
            else:
                unexpected.append(key)
            continue
        mapped[canonical] = (*hit, w)
    # Compared in HF names and layout: what the user sees in the safetensors files.
    want = {}
    for path, shape in expected.items():
        key, t = hf_names.ours_to_hf(path, cfg.vision)
        want[key] = _hf_shape(t, shape)
    got = {k: tuple(w.shape) for k, (_, _, w) in mapped.items()}
    CheckpointMismatch.compare(source, want, got, unexpected=unexpected).raise_if_any()
    pdt = dtype_name_to_numpy(cfg.param_dtype)
    out = {
        p: hf_names.TRANSFORMS[t].forward(np.asarray(w), expected[p]).astype(pdt)
        for p, t, w in mapped.values()
    }
    if ignored:
        log.info(
            "%s: dropped %d tensors the model never reads (SigLIP head, unused norms)",
            source,
            ignored,
        )
    return unflatten(stack_layers(out) if cfg.scan_layers else out)


def read_config(folder: str) -> ModelConfig:
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{folder}: no config.json (expected a save_pretrained folder)")
    with open(cfg_path) as f:
        return from_hf(json.load(f))


def import_folder(folder: str, cfg: ModelConfig) -> Params:
    """The tensors of an HF folder as params of `cfg` (its own config.json or a run's model config)."""
    return import_tensors(cfg, read_safetensors(folder), source=folder)


def load_hf(folder: str, **overrides: Any) -> tuple[ModelConfig, Params]:
    """Read an HF folder. `overrides` replace top-level ModelConfig fields (dtype, scan_layers, ...)."""
    cfg = read_config(folder)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg, import_folder(folder, cfg)
