"""Compose a DeepSeek-VL model from separate pretrained parts (`convert from-parts`).

The paper's stage 1 starts from off-the-shelf parts: SigLIP-L/16-384, SAM-B (7B only) and a
DeepSeek-LLM checkpoint, with a freshly initialised adaptor. `from_parts` reads the HF folders users
download (interop/hf_parts.py renames their keys into DeepseekVL's), builds the model config from
their config.json files (hybrid when a SAM part is given), gives the tokenizer the image token when
it lacks one (the embedding and an untied output head gain its row, the mean of the rows before
it), initialises what no part holds (adaptor, neck_hd, downsample convs, alpha = 0) exactly as
`init_params(cfg, seed)` would, and writes a params checkpoint + tokenizer/ + from_parts.json (the
report: every source tensor used or listed as ignored, the fresh parameters, the image token).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time

import numpy as np

from dsvl_jax.checkpoints.params import save_params
from dsvl_jax.data.tokenizer import with_image_token
from dsvl_jax.errors import CheckpointError, CheckpointMismatch
from dsvl_jax.interop import hf_parts
from dsvl_jax.interop.hf_config import from_hf
from dsvl_jax.interop.hf_import import map_tensors, read_safetensors, unrolled_shapes
from dsvl_jax.model.params import count_params, init_subset, stack_layers, unflatten

REPORT = "from_parts.json"
TOKENIZER_DIR = "tokenizer"
# DeepseekVL key prefix -> (flag, the part's own prefix): mismatches are reported in the part's names
_PART_PREFIX = [
    ("model.vision_model.", "--siglip", "vision_model."),
    ("model.high_res_vision_model.vision_encoder.", "--sam", "vision_encoder."),
    ("model.language_model.", "--llm", "model."),
    ("lm_head.", "--llm", "lm_head."),
]


def _part_name(key: str, origin: dict[str, str]) -> str:
    if key in origin:
        return origin[key]
    for prefix, flag, own in _PART_PREFIX:
        if key.startswith(prefix):
            return f"{flag} {own}{key[len(prefix) :]}"
    return key


def _in_part_names(e: CheckpointMismatch, origin: dict[str, str], extra: list[str]):
    def shape(entry: str) -> str:
        key, _, rest = entry.partition(": ")
        return f"{_part_name(key, origin)}: {rest}"

    return CheckpointMismatch(
        "convert from-parts",
        missing=[_part_name(k, origin) for k in e.missing],
        unexpected=[*extra, *(_part_name(k, origin) for k in e.unexpected)],
        shapes=[shape(s) for s in e.shapes],
    )


def from_parts(
    siglip: str,
    llm: str,
    out: str,
    sam: str | None = None,
    *,
    seed: int = 0,
    scan_layers: bool = True,
    siglip_act: str = "",
) -> dict:
    """Parts -> params checkpoint at `out` (+ tokenizer/, from_parts.json). -> the report dict.

    `siglip_act` ("gelu" | "gelu_tanh"): override the SigLIP part's activation; by default its
    config.json's (stock SigLIP: tanh GELU; DeepSeek ran those weights with exact GELU).
    """
    t0 = time.time()
    parts = {"siglip": hf_parts.read_part("siglip", siglip), "llm": hf_parts.read_part("llm", llm)}
    if sam:
        parts["sam"] = hf_parts.read_part("sam", sam)
    tensors: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    report_parts = {}
    for role, part in parts.items():
        r = hf_parts.rename(role, read_safetensors(part.folder))
        tensors.update(r.tensors)
        origin.update({k: f"--{role} {v}" for k, v in r.origin.items()})
        unknown += [f"--{role} {k}" for k in r.unknown]
        report_parts[role] = dict(
            folder=part.folder,
            cls=part.cls,
            used=len(r.tensors),
            ignored={why: sorted(keys) for why, keys in r.ignored.items()},
        )
    if hf_parts.EMBED not in tensors:
        raise CheckpointError(f"--llm {llm}: no model.embed_tokens.weight (not a causal LM)")
    with tempfile.TemporaryDirectory() as tmp:
        tok, added = with_image_token(llm, os.path.join(tmp, TOKENIZER_DIR))
        rows_before = int(tensors[hf_parts.EMBED].shape[0])
        image_id = tok.image_token_id
        rows = hf_parts.add_token_row(tensors, image_id) if added else rows_before
        if tok.vocab_size > rows:
            raise CheckpointError(
                f"--llm {llm}: the tokenizer has {tok.vocab_size} tokens but the embedding "
                f"{rows_before} rows"
            )
        conf = hf_parts.compose_config(
            parts["siglip"],
            parts["llm"],
            parts.get("sam"),
            image_token_id=image_id,
            vocab_size=rows,
            siglip_act=siglip_act,
        )
        cfg = dataclasses.replace(from_hf(conf), scan_layers=scan_layers)
        try:
            flat, _ = map_tensors(cfg, tensors, "convert from-parts", fresh=hf_parts.FRESH.search)
            if unknown:
                raise CheckpointMismatch("convert from-parts")
        except CheckpointMismatch as e:
            raise _in_part_names(e, origin, unknown) from None
        fresh = sorted(p for p in unrolled_shapes(cfg) if p not in flat)
        flat.update({k: np.asarray(v) for k, v in init_subset(cfg, fresh, seed).items()})
        params = unflatten(stack_layers(flat) if scan_layers else flat)
        save_params(out, cfg, params)
        dst = os.path.join(out, TOKENIZER_DIR)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(os.path.join(tmp, TOKENIZER_DIR), dst)
    report = {
        "command": "from-parts",
        "out": out,
        "vision": cfg.vision,
        "seed": seed,
        "parts": report_parts,
        "fresh": fresh,
        "fresh_params": int(sum(np.prod(flat[p].shape) for p in fresh)),
        "image_token": {"id": image_id, "added": added, "embedding_rows": [rows_before, rows]},
        "siglip_act": cfg.siglip.act,
        "params": count_params(params),
        "tokenizer": dst,
    }
    with open(os.path.join(out, REPORT), "w") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
    report["seconds"] = round(time.time() - t0, 2)
    return report


def summary(report: dict) -> dict:
    """The report with ignored keys as counts (the full lists stay in from_parts.json)."""
    parts = {
        role: {**p, "ignored": {why: len(keys) for why, keys in p["ignored"].items()}}
        for role, p in report["parts"].items()
    }
    return {**report, "parts": parts, "fresh": len(report["fresh"])}
