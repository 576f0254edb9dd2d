"""HF DeepseekVL(Hybrid) folder (config.json + safetensors) -> dsvl_jax (ModelConfig, params).

Needs neither torch nor transformers: safetensors is read as numpy. Every HF tensor is either mapped
by the name table, or listed in hf_names.IGNORED (counted), or reported; every dsvl_jax parameter
must be filled. Anything else is one error that lists the offending keys.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np

from dsvl_jax.interop import hf_names
from dsvl_jax.interop.hf_config import from_hf
from dsvl_jax.model.config import ModelConfig, dtype_name_to_numpy
from dsvl_jax.model.params import Params, abstract_params, flatten, stack_layers, unflatten

log = logging.getLogger(__name__)


class CheckpointMismatch(ValueError):
    """Tensors and model config disagree: missing, unexpected or mis-shaped tensors."""


def _list(keys: list[str], n: int = 12) -> str:
    keys = sorted(keys)
    more = f" … (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def read_safetensors(folder: str) -> dict[str, np.ndarray]:
    """All tensors of a save_pretrained folder (single file or sharded with an index)."""
    from safetensors import safe_open
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    elif os.path.exists(os.path.join(folder, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    out: dict[str, np.ndarray] = {}
    for f in files:
        with safe_open(os.path.join(folder, f), framework="numpy") as st:
            for k in st.keys():
                out[k] = st.get_tensor(k)
    return out


def unrolled_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter in the unrolled (`blocks_{i}`) layout, without allocating."""
    return {k: tuple(v.shape) for k, v in flatten(abstract_params(dataclasses.replace(cfg, scan_layers=False))).items()}


def import_tensors(cfg: ModelConfig, tensors: dict[str, np.ndarray], source: str = "<tensors>") -> Params:
    expected = unrolled_shapes(cfg)
    pdt = dtype_name_to_numpy(cfg.param_dtype)
    out: dict[str, np.ndarray] = {}
    unexpected, bad_shape, ignored = [], [], 0
    for key, w in tensors.items():
        hit = hf_names.hf_to_ours(key, cfg.vision)
        if hit is None or hit[0] not in expected:
            if hf_names.is_ignored(hf_names.canonical_hf_key(key)):
                ignored += 1
            else:
                unexpected.append(key)
            continue
        path, t = hit
        shape = expected[path]
        if int(np.prod(w.shape)) != int(np.prod(shape)):
            bad_shape.append(f"{key} {tuple(w.shape)} -> {path} expects {shape}")
            continue
        x = hf_names.TRANSFORMS[t].forward(np.asarray(w), shape)
        if x.shape != shape:
            bad_shape.append(f"{key} {tuple(w.shape)} -> {path} expects {shape}")
            continue
        out[path] = x.astype(pdt)
    missing = sorted(set(expected) - set(out))
    problems = []
    if missing:
        wanted = [(hf_names.ours_to_hf(p, cfg.vision) or (p,))[0] for p in missing]
        problems.append(f"missing {len(missing)} tensor(s): {_list(wanted)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {_list(unexpected)}")
    if bad_shape:
        problems.append(f"{len(bad_shape)} shape mismatch(es): {_list(bad_shape, 6)}")
    if problems:
        raise CheckpointMismatch(f"{source}: checkpoint does not match the model config: " + "; ".join(problems))
    if ignored:
        log.info("%s: dropped %d tensors the model never reads (%s)", source, ignored, "SigLIP head/unused norms")
    flat = stack_layers(out) if cfg.scan_layers else out
    return unflatten(flat)


def load_hf(folder: str, **overrides: Any) -> tuple[ModelConfig, Params]:
    """Read an HF folder. `overrides` replace top-level ModelConfig fields (dtype, scan_layers, …)."""
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{folder}: no config.json (expected a save_pretrained folder)")
    cfg = from_hf(json.load(open(cfg_path)))
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg, import_tensors(cfg, read_safetensors(folder), source=folder)
