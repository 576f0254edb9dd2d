"""HF DeepseekVL(Hybrid) folder (config.json + safetensors) -> dsvl_jax (ModelConfig, params).

Reads transformers' layout and DeepSeek's original release layout (hf_release.py renames it first).
Needs neither torch nor transformers: safetensors is read as numpy; PyTorch pickles are refused,
never opened. Every HF tensor is either mapped by the name table, or listed in hf_names.IGNORED
(counted), or reported; every dsvl_jax parameter must be filled. Anything else is one
CheckpointMismatch naming the HF tensors and both shapes in HF layout. To load any model folder (run
dirs, params checkpoints, HF folders) use `dsvl_jax.checkpoints.open_model`; this module is the HF
half of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from dsvl_jax import jsonfile
from dsvl_jax.errors import CheckpointError, CheckpointMismatch
from dsvl_jax.interop import hf_names, hf_release
from dsvl_jax.interop.hf_config import from_hf
from dsvl_jax.model.config import ModelConfig, dtype_name_to_numpy
from dsvl_jax.model.params import Params, abstract_params, flatten, stack_layers, unflatten

log = logging.getLogger(__name__)


def read_safetensors(folder: str) -> dict[str, np.ndarray]:
    """All tensors of a save_pretrained folder (single file or sharded with an index)."""
    out: dict[str, np.ndarray] = {}
    for f in _safetensors_files(folder):
        with _open_safetensors(folder, f) as st:
            for k in st.keys():  # noqa: SIM118 - safe_open is not a Mapping
                out[k] = st.get_tensor(k)
    return out


def safetensors_shapes(folder: str) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a folder, read from the safetensors headers (no tensor data)."""
    out: dict[str, tuple[int, ...]] = {}
    for f in _safetensors_files(folder):
        with _open_safetensors(folder, f) as st:
            for k in st.keys():  # noqa: SIM118 - safe_open is not a Mapping
                out[k] = tuple(st.get_slice(k).get_shape())
    return out


@contextlib.contextmanager
def _open_safetensors(folder: str, name: str):
    """safe_open, with a missing, truncated or corrupt file reported as a CheckpointError naming it."""
    path = os.path.join(folder, name)
    try:
        with safe_open(path, framework="numpy") as st:
            yield st
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: cannot be read as safetensors ({e})") from None


# PyTorch pickles: loading one runs whatever code it names, so they are never opened, only named.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
PICKLE_INDEX = "pytorch_model.bin.index.json"


def read_json(path: str) -> Any:
    """A JSON file, or CheckpointError naming it (invalid, or nested too deeply to parse)."""
    return jsonfile.read(path, CheckpointError)


def _safetensors_files(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        return _index_files(folder, index)
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        return ["model.safetensors"]
    names = os.listdir(folder) if os.path.isdir(folder) else []
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES) or n == PICKLE_INDEX)
    if pickles:
        raise CheckpointError(_pickle_message(folder, pickles))
    raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def _index_files(folder: str, index: str) -> list[str]:
    """The shard files an index names, each confined to the folder (symlinks resolved): an index must
    not make the import read files elsewhere (`../x.safetensors`, absolute paths)."""
    wm = read_json(index)
    wm = wm.get("weight_map") if isinstance(wm, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(v, str) and v for v in wm.values()):
        raise CheckpointError(f"{index}: no weight_map of tensor name -> file name")
    root = Path(folder).resolve()
    files = sorted(set(wm.values()))
    for name in files:
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise CheckpointError(
                f"{index}: weight_map names {name!r}, which resolves to {path}, outside the folder "
                f"{root}"
            )
    return files


def _pickle_message(folder: str, pickles: list[str]) -> str:
    weights = [n for n in pickles if n != PICKLE_INDEX]
    one = weights[0] if weights else "pytorch_model.bin"
    sharded = PICKLE_INDEX in pickles or len(weights) > 1
    dst = one.replace("pytorch_model", "model").rsplit(".", 1)[0] if sharded else "model"
    msg = (
        f"{folder}: the weights are PyTorch pickles ({', '.join(pickles)}), which dsvl_jax never "
        "loads (unpickling runs any code the file names). Convert them to safetensors on a machine "
        'where the file is trusted: python -c "import torch; from safetensors.torch import '
        f"save_file; sd = torch.load('{one}', map_location='cpu', weights_only=True); "
        f"save_file({{k: v.contiguous() for k, v in sd.items()}}, '{dst}.safetensors')\""
    )
    if sharded:
        msg += (
            ". Sharded: do the same for each shard (pytorch_model-0000i-of-0000n.bin -> "
            "model-0000i-of-0000n.safetensors), then write model.safetensors.index.json as "
            f'{{"weight_map": {{tensor: its .safetensors file}}}} (the weight_map of {PICKLE_INDEX} '
            "with the file names changed)"
        )
    return msg


def unrolled_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter in the unrolled (`blocks_{i}`) layout, without allocating."""
    unrolled = dataclasses.replace(cfg, scan_layers=False)
    return {k: tuple(v.shape) for k, v in flatten(abstract_params(unrolled)).items()}


def _hf_shape(transform: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF layout of a parameter shape (a zero-stride view: nothing is allocated)."""
    return tuple(
        hf_names.TRANSFORMS[transform].inverse(np.broadcast_to(np.float32(0), shape)).shape
    )


def map_tensors(
    cfg: ModelConfig,
    tensors: dict[str, np.ndarray],
    source: str = "<tensors>",
    fresh: Callable[[str], bool] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """HF state dict -> ({unrolled param path: array in our layout}, [ignored HF keys]).

    Every parameter of `cfg` must be filled except those `fresh(path)` accepts (a composed model's
    newly initialised parts: convert from-parts); anything else is one CheckpointMismatch.
    """
    expected = unrolled_shapes(cfg)
    fresh = fresh or (lambda _: False)
    # canonical HF key -> (path, transform, tensor)
    mapped: dict[str, tuple[str, str, np.ndarray]] = {}
    unexpected, ignored = [], []
    for key, w in tensors.items():
        canonical = hf_names.canonical_hf_key(key)
        hit = hf_names.hf_to_ours(key, cfg.vision)
        if hit is None or hit[0] not in expected:
            (ignored if hf_names.is_ignored(canonical) else unexpected).append(key)
            continue
        mapped[canonical] = (*hit, w)
    # Compared in HF names and layout: what the user sees in the safetensors files.
    want = {}
    for path, shape in expected.items():
        key, t = hf_names.ours_to_hf(path, cfg.vision)
        if not fresh(path) or key in mapped:
            want[key] = _hf_shape(t, shape)
    got = {k: tuple(w.shape) for k, (_, _, w) in mapped.items()}
    CheckpointMismatch.compare(source, want, got, unexpected=unexpected).raise_if_any()
    pdt = dtype_name_to_numpy(cfg.param_dtype)
    out = {}
    for key, (p, t, w) in mapped.items():
        w = check_tensor(source, key, w, want[key])
        out[p] = hf_names.TRANSFORMS[t].forward(w, expected[p]).astype(pdt)
    return out, ignored


def check_tensor(source: str, key: str, w: Any, shape: tuple[int, ...]) -> np.ndarray:
    """`w` as an array if it can be a weight of HF-layout `shape`, else CheckpointError naming it.

    The shape must match exactly before any transform (the transforms reshape, and a reshape would take
    any tensor of the right element count). A transposed square matrix has the right shape and cannot
    be told apart here: only the parity tests' logits catch that. Integer / bool tensors are refused
    (never cast silently into weights), and so is any NaN or inf: a model that starts non-finite
    only ever produces skipped steps.
    """
    w = np.asarray(w)
    if tuple(w.shape) != tuple(shape):
        raise CheckpointMismatch(source, shapes=[f"{key}: stored {w.shape} vs expected {shape}"])
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise CheckpointError(
            f"{source}: tensor {key} has dtype {w.dtype}, expected floating point"
        )
    bad = w.size - int(np.count_nonzero(np.isfinite(w)))
    if bad:
        raise CheckpointError(
            f"{source}: tensor {key} {tuple(w.shape)} holds {bad} non-finite value(s) (NaN / inf)"
        )
    return w


def import_tensors(
    cfg: ModelConfig, tensors: dict[str, np.ndarray], source: str = "<tensors>"
) -> Params:
    """HF state dict -> params of `cfg` (scanned if cfg.scan_layers), or CheckpointMismatch."""
    out, ignored = map_tensors(cfg, tensors, source)
    if ignored:
        log.info(
            "%s: dropped %d tensors the model never reads (SigLIP head, unused norms)",
            source,
            len(ignored),
        )
    return unflatten(stack_layers(out) if cfg.scan_layers else out)


TRANSFORMERS, RELEASE = "transformers", "release"  # the two HF folder layouts read here


def _config_json(folder: str) -> dict:
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{folder}: no config.json (expected a save_pretrained folder)")
    conf = read_json(cfg_path)
    if not isinstance(conf, dict):
        raise CheckpointError(f"{cfg_path}: a JSON {type(conf).__name__}, expected an object")
    return conf


def folder_layout(folder: str) -> str:
    """RELEASE for DeepSeek's original `multi_modality` folders, else TRANSFORMERS."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return TRANSFORMERS  # tensors alone (import_folder with a run's model config)
    return RELEASE if hf_release.is_release_config(_config_json(folder)) else TRANSFORMERS


def read_hf_config(folder: str) -> dict:
    """The folder's config.json as transformers' DeepseekVL(Hybrid) config (release ones converted)."""
    conf = _config_json(folder)
    if not hf_release.is_release_config(conf):
        return conf
    return hf_release.hf_config_from_release(
        conf,
        safetensors_shapes(folder),
        image_token_id=hf_release.image_token_id(folder),
        source=os.path.join(folder, "config.json"),
    )


def read_config(folder: str) -> ModelConfig:
    return from_hf(read_hf_config(folder))


def read_hf_tensors(folder: str) -> dict[str, np.ndarray]:
    """The folder's tensors in transformers' names and layouts (release tensors renamed)."""
    tensors = read_safetensors(folder)
    if folder_layout(folder) == RELEASE:
        n = len(tensors)
        tensors, ignored = hf_release.release_to_hf(tensors)
        log.info(
            "%s: original DeepSeek-VL layout: %d tensors renamed to transformers names, "
            "%d ignored (attention-pool head, unused norms, RoPE buffers)",
            folder,
            n - len(ignored),
            len(ignored),
        )
    return tensors


def import_folder(folder: str, cfg: ModelConfig) -> Params:
    """The tensors of an HF folder as params of `cfg` (its own config.json or a run's model config)."""
    return import_tensors(cfg, read_hf_tensors(folder), source=folder)


def load_hf(folder: str, **overrides: Any) -> tuple[ModelConfig, Params]:
    """Read an HF folder. `overrides` replace top-level ModelConfig fields (dtype, scan_layers, ...)."""
    cfg = read_config(folder)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg, import_folder(folder, cfg)
