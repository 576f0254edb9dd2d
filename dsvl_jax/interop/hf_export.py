"""dsvl_jax (ModelConfig, params) -> HF save_pretrained folder that transformers loads unchanged.

With a tokenizer, the folder also gets the tokenizer, processor, chat-template and generation files
(interop/hf_processor.py), so `AutoProcessor.from_pretrained(DIR)` serves the model without dsvl_jax.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from safetensors.numpy import save_file

from dsvl_jax.interop import hf_names
from dsvl_jax.interop.hf_config import to_hf
from dsvl_jax.interop.hf_processor import save_processor, token_ids
from dsvl_jax.model.config import ModelConfig, dtype_name_to_numpy
from dsvl_jax.model.params import Params, flatten, unstack_layers

DEFAULT_SHARD_BYTES = 5 * 2**30


def export_tensors(
    cfg: ModelConfig, params: Params, dtype: str = "float32"
) -> dict[str, np.ndarray]:
    flat = {k: np.asarray(jax.device_get(v)) for k, v in flatten(params).items()}
    if cfg.scan_layers:
        flat = unstack_layers(flat)
    npdt = dtype_name_to_numpy(dtype)
    out, unknown = {}, []
    for path, x in flat.items():
        hit = hf_names.ours_to_hf(path, cfg.vision)
        if hit is None:
            unknown.append(path)
            continue
        key, t = hit
        out[key] = np.ascontiguousarray(hf_names.TRANSFORMS[t].inverse(x).astype(npdt))
    if unknown:
        raise KeyError(f"no HF name for dsvl_jax parameter(s): {sorted(unknown)}")
    return out


def save_hf(
    folder: str,
    cfg: ModelConfig,
    params: Params,
    dtype: str = "float32",
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    tokenizer: str | None = None,
    system: str | None = None,
) -> list[str]:
    """Write config.json + safetensors (sharded with an index past max_shard_bytes). Returns file names.

    `tokenizer` (a SentencePiece .model, a tokenizer.json or its folder) adds the tokenizer/processor
    files (hf_processor.save_processor) and the special-token ids to config.json's text_config;
    `system` is the exported chat template's default system prompt (None: DeepSeek-VL's).
    """
    os.makedirs(folder, exist_ok=True)
    tensors = export_tensors(cfg, params, dtype)
    conf = to_hf(cfg, dtype)
    extra: list[str] = []
    if tokenizer is not None:
        kw = {} if system is None else {"system": system}
        tok, extra = save_processor(folder, cfg, tokenizer, **kw)
        conf["text_config"].update(token_ids(tok))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(conf, f, indent=2)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k in sorted(tensors):
        if shards[-1] and size + tensors[k].nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = tensors[k]
        size += tensors[k].nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(folder, "model.safetensors"), metadata=meta)
        return ["config.json", "model.safetensors", *extra]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, os.path.join(folder, name), metadata=meta)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.nbytes for t in tensors.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return ["config.json", "model.safetensors.index.json", *names, *extra]
