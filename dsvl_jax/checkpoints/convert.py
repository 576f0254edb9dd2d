"""HF save_pretrained folder <-> dsvl_jax params checkpoint, with the tokenizer carried along.

from_hf: config.json + safetensors -> model_config.json + params/, and the folder's tokenizer files
(if any) into CKPT/tokenizer/. to_hf: any model folder (see sources.py) -> config.json + safetensors
(sharded past 5 GiB) and, with a tokenizer, the tokenizer/processor/chat-template files
(interop/hf_processor.py), so PyTorch users load it with transformers alone. Neither needs torch.
"""

from __future__ import annotations

import os
import shutil
import time

from dsvl_jax.checkpoints.params import save_params
from dsvl_jax.checkpoints.sources import open_model
from dsvl_jax.errors import ConfigError
from dsvl_jax.interop.hf_export import save_hf
from dsvl_jax.interop.hf_import import folder_layout, load_hf
from dsvl_jax.model.params import count_params

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
AUTO, NONE = "auto", "none"  # to_hf's tokenizer: the one stored with the model / no tokenizer


def from_hf(hf_dir: str, out: str, scan_layers: bool = True) -> dict:
    """HF folder -> params checkpoint at `out`. -> a report dict (printed by the command)."""
    t0 = time.time()
    cfg, params = load_hf(hf_dir, scan_layers=scan_layers)
    save_params(out, cfg, params)
    copied = []
    if os.path.isfile(os.path.join(hf_dir, "tokenizer.json")):
        os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
        for name in HF_TOKENIZER_FILES:
            if os.path.isfile(os.path.join(hf_dir, name)):
                shutil.copyfile(os.path.join(hf_dir, name), os.path.join(out, "tokenizer", name))
                copied.append(f"tokenizer/{name}")
    return {
        "command": "from-hf",
        "hf": hf_dir,
        "out": out,
        "vision": cfg.vision,
        "layout": folder_layout(hf_dir),  # "transformers" or "release" (DeepSeek's original)
        "params": count_params(params),
        "tokenizer_files": copied,
        "seconds": round(time.time() - t0, 2),
    }


def resolve_tokenizer(model_dir: str, tokenizer: str | None) -> str | None:
    """AUTO -> the tokenizer stored with the model (or None); None/NONE -> None; else the path."""
    if tokenizer is None or tokenizer.lower() == NONE:
        return None
    if tokenizer == AUTO:
        return open_model(model_dir).tokenizer
    if not os.path.exists(tokenizer):
        raise ConfigError(
            f"tokenizer {tokenizer} not found (a .model file, a tokenizer.json or its folder)"
        )
    return tokenizer


def to_hf(model_dir: str, out: str, dtype: str = "float32", tokenizer: str | None = AUTO) -> dict:
    """Any model folder -> HF folder at `out`; with a tokenizer also the processor files."""
    t0 = time.time()
    tok = resolve_tokenizer(model_dir, tokenizer)
    src = open_model(model_dir)
    cfg, params = src.cfg, src.params()
    # the chat template's default system prompt: the one the model was trained with, if recorded
    files = save_hf(out, cfg, params, dtype=dtype, tokenizer=tok, system=src.system_prompt)
    res = {
        "command": "to-hf",
        "checkpoint": model_dir,
        "out": out,
        "files": files,
        "dtype": dtype,
        "tokenizer": tok,
        "system_prompt": src.system_prompt,
    }
    if tok is None:
        res["warning"] = (
            "no tokenizer exported (none stored with the model, or --tokenizer=none): "
            "AutoProcessor.from_pretrained(out) will not work"
        )
    res["seconds"] = round(time.time() - t0, 2)
    return res
