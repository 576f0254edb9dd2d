"""Separate HF checkpoints -> one DeepseekVL(Hybrid) state dict and config (`convert from-parts`).

The parts are the folders users download: a SigLIP tower (`SiglipModel` as google/siglip-* ships it,
or `SiglipVisionModel`), optionally a SAM encoder (`SamModel` as facebook/sam-vit-* ships it, or
`SamVisionModel`), and a LLaMA-architecture causal LM (`LlamaForCausalLM`: DeepSeek-LLM's layout).
Each part's keys are renamed into the names transformers' DeepseekVL(Hybrid)ForConditionalGeneration
uses, so the one name table (hf_names.py) maps them to parameters; keys the composed model never
reads (SigLIP's text tower, logit scale/bias and attention-pool head; SAM's prompt encoder, mask
decoder and shared positional embedding; rotary caches) are ignored and listed. The model config is
the DeepseekVL config.json the parts' config.json files add up to. What no part holds (the adaptor,
SAM's neck_hd, the downsample convs, alpha: `FRESH`) is initialised by the caller.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np

from dsvl_jax import jsonfile
from dsvl_jax.errors import CheckpointError
from dsvl_jax.interop.hf_config import HYBRID, PLAIN

# model_type of a part's config.json -> (class it names, where its tower config sits: None = top level)
PART_TYPES: dict[str, dict[str, tuple[str, str | None]]] = {
    "siglip": {
        "siglip": ("SiglipModel", "vision_config"),
        "siglip_vision_model": ("SiglipVisionModel", None),
    },
    "sam": {"sam": ("SamModel", "vision_config"), "sam_vision_model": ("SamVisionModel", None)},
    "llm": {"llama": ("LlamaForCausalLM", None)},
}

# Per part, in order: (pattern, DeepseekVL key template | None = ignored, why). First match wins.
_IGNORE = None
RENAMES: dict[str, list[tuple[re.Pattern, str | None, str]]] = {
    "siglip": [
        (re.compile(r"^(text_model\.|logit_scale$|logit_bias$)"), _IGNORE, "text tower"),
        (re.compile(r"^(vision_model\.)?head\."), _IGNORE, "attention-pool head"),
        (re.compile(r"\.position_ids$"), _IGNORE, "index buffer"),
        (re.compile(r"^vision_model\.(.+)$"), r"model.vision_model.\1", ""),
        # SiglipVisionModel saved by transformers 5 drops the `vision_model.` level
        (re.compile(r"^((embeddings|encoder|post_layernorm)\..+)$"), r"model.vision_model.\1", ""),
    ],
    "sam": [
        (
            re.compile(r"^(prompt_encoder|mask_decoder|shared_image_embedding)\."),
            _IGNORE,
            "prompt encoder / mask decoder",
        ),
        (
            re.compile(r"^vision_encoder\.(.+)$"),
            r"model.high_res_vision_model.vision_encoder.\1",
            "",
        ),
    ],
    "llm": [
        (re.compile(r"(^|\.)rotary_emb\.inv_freq$"), _IGNORE, "rotary cache"),
        (re.compile(r"^model\.(.+)$"), r"model.language_model.\1", ""),
        (re.compile(r"^lm_head\.weight$"), "lm_head.weight", ""),
    ],
}

# Parameters no part holds: DeepSeek's additions, initialised for a stage-1 start.
FRESH = re.compile(r"^(adaptor/|sam/(neck_hd|downsample)/|sam/hd_alpha$)")

EMBED, HEAD = "model.language_model.embed_tokens.weight", "lm_head.weight"


@dataclasses.dataclass(frozen=True)
class Part:
    """One opened part folder: its role, class, tower/LM config and config.json path."""

    role: str  # siglip | sam | llm
    folder: str
    cls: str  # the HF class its config.json names (SiglipModel, SamVisionModel, ...)
    config: dict[str, Any]  # the tower's (or the LM's) own config


def read_part(role: str, folder: str) -> Part:
    """A part folder's config.json, checked to be a kind this role accepts."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(
            f"--{role} {folder}: no config.json (expected a save_pretrained folder)"
        )
    conf = jsonfile.read(path, CheckpointError, dict)
    mt = conf.get("model_type")
    kinds = PART_TYPES[role]
    if mt not in kinds:
        want = ", ".join(f"{c} (model_type {t!r})" for t, (c, _) in kinds.items())
        raise CheckpointError(f"--{role} {path}: model_type {mt!r}; expected one of {want}")
    cls, sub = kinds[mt]
    tower = dict(conf.get(sub) or {}) if sub else conf
    return Part(role, folder, cls, tower)


@dataclasses.dataclass
class Renamed:
    """A part's tensors in DeepseekVL names, with where each came from and what was left out."""

    tensors: dict[str, np.ndarray]
    origin: dict[str, str]  # DeepseekVL key -> the part's own key
    ignored: dict[str, list[str]]  # why -> the part's keys
    unknown: list[str]  # keys no rule knows (reported as unexpected)


def rename(role: str, tensors: dict[str, np.ndarray]) -> Renamed:
    out = Renamed({}, {}, {}, [])
    for key, w in tensors.items():
        for rx, template, why in RENAMES[role]:
            if not rx.search(key):
                continue
            if template is _IGNORE:
                out.ignored.setdefault(why, []).append(key)
            else:
                new = rx.sub(template, key)
                out.tensors[new], out.origin[new] = w, key
            break
        else:
            out.unknown.append(key)
    return out


SIGLIP_ACTS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}  # ours -> HF hidden_act


def compose_config(
    siglip: Part,
    llm: Part,
    sam: Part | None,
    *,
    image_token_id: int,
    vocab_size: int,
    siglip_act: str = "",
) -> dict[str, Any]:
    """The DeepseekVL(Hybrid) config.json the parts make (hf_config.from_hf reads it).

    `siglip_act` ("gelu" | "gelu_tanh") overrides the SigLIP part's activation: stock SigLIP is
    tanh GELU, and DeepSeek ran those weights with exact GELU (the released models' setting).
    """
    if siglip_act and siglip_act not in SIGLIP_ACTS:
        raise CheckpointError(f"siglip_act {siglip_act!r} not in {sorted(SIGLIP_ACTS)}")
    text = {**llm.config, "vocab_size": vocab_size}
    if text.get("rope_scaling"):
        raise CheckpointError(
            f"--llm {llm.folder}: rope_scaling={text['rope_scaling']} is not implemented "
            "(only default RoPE)"
        )
    vision = {**siglip.config, "vision_use_head": False}
    if siglip_act:
        vision["hidden_act"] = SIGLIP_ACTS[siglip_act]
    out: dict[str, Any] = {
        "model_type": HYBRID if sam else PLAIN,
        "text_config": text,
        "vision_config": vision,
        "image_token_id": image_token_id,
        "tie_word_embeddings": bool(llm.config.get("tie_word_embeddings", False)),
    }
    if sam:
        out["high_res_vision_config"] = dict(sam.config)
    return out


def add_token_row(tensors: dict[str, np.ndarray], token_id: int) -> int:
    """Give `token_id` an embedding (and untied output-head) row: the mean of the rows before it.

    The row is appended when `token_id` equals the number of rows (the embedding grows by one), and
    overwritten when it falls in unused padding rows (DeepSeek-LLM pads 100015 tokens to 102400).
    Returns the number of rows after.
    """
    rows = tensors[EMBED].shape[0]
    if token_id > rows:
        raise CheckpointError(
            f"the new image token id {token_id} is past the embedding's {rows} rows: the tokenizer "
            "has more tokens than the LLM has embeddings"
        )
    for key in (EMBED, HEAD):
        if key not in tensors:
            continue
        w = tensors[key]
        mean = w[:token_id].astype(np.float64).mean(axis=0).astype(w.dtype)
        if token_id == rows:
            w = np.concatenate([w, mean[None]], axis=0)
        else:
            w = w.copy()
            w[token_id] = mean
        tensors[key] = w
    return max(rows, token_id + 1)
