"""THE name table between HF transformers state dicts and dsvl_jax parameters, plus the transforms.

One row per tensor kind: (HF key template, dsvl_jax path template, transform). `{i}` stands for a
layer index. Paths are in the unrolled layout (`blocks_{i}`); model/params.stack_layers turns them into
the scanned layout. Import runs each transform forward, export runs its inverse, so a round trip is
exact by construction (transposes and reshapes only).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Transform(NamedTuple):
    # (hf tensor, dsvl shape) -> dsvl tensor
    forward: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]  # dsvl tensor -> hf tensor


TRANSFORMS: dict[str, Transform] = {
    "identity": Transform(lambda w, s: w.reshape(s), lambda x: x),
    # torch Linear [out, in] -> kernel [in, *out] (out split into e.g. heads x head_dim).
    "linear": Transform(lambda w, s: w.T.reshape(s), lambda x: x.reshape(x.shape[0], -1).T),
    # Output projections: kernel [heads, head_dim, out] <- torch [out, heads*head_dim].
    "linear_in2": Transform(
        lambda w, s: w.T.reshape(s), lambda x: x.reshape(x.shape[0] * x.shape[1], -1).T
    ),
    # Biases split per head: [heads*head_dim] <-> [heads, head_dim].
    "flatten": Transform(lambda w, s: w.reshape(s), lambda x: x.reshape(-1)),
    # torch Conv2d [out, in, kh, kw] <-> flax Conv [kh, kw, in, out].
    "conv": Transform(
        lambda w, s: w.transpose(2, 3, 1, 0).reshape(s), lambda x: x.transpose(3, 2, 0, 1)
    ),
    # SAM pos_embed [1, G, G, W] <-> [G, G, W].
    "squeeze0": Transform(lambda w, s: w.reshape(s), lambda x: x[None]),
}

_SIGLIP = [
    ("embeddings.patch_embedding.weight", "patch_embed/kernel", "conv"),
    ("embeddings.patch_embedding.bias", "patch_embed/bias", "identity"),
    ("embeddings.position_embedding.weight", "pos_embed", "identity"),
    ("encoder.layers.{i}.layer_norm1.weight", "blocks_{i}/ln1/scale", "identity"),
    ("encoder.layers.{i}.layer_norm1.bias", "blocks_{i}/ln1/bias", "identity"),
    ("encoder.layers.{i}.layer_norm2.weight", "blocks_{i}/ln2/scale", "identity"),
    ("encoder.layers.{i}.layer_norm2.bias", "blocks_{i}/ln2/bias", "identity"),
    *[
        (f"encoder.layers.{{i}}.self_attn.{n}_proj.weight", f"blocks_{{i}}/{n}/kernel", "linear")
        for n in "qkv"
    ],
    *[
        (f"encoder.layers.{{i}}.self_attn.{n}_proj.bias", f"blocks_{{i}}/{n}/bias", "flatten")
        for n in "qkv"
    ],
    ("encoder.layers.{i}.self_attn.out_proj.weight", "blocks_{i}/o/kernel", "linear_in2"),
    ("encoder.layers.{i}.self_attn.out_proj.bias", "blocks_{i}/o/bias", "identity"),
    ("encoder.layers.{i}.mlp.fc1.weight", "blocks_{i}/fc1/kernel", "linear"),
    ("encoder.layers.{i}.mlp.fc1.bias", "blocks_{i}/fc1/bias", "identity"),
    ("encoder.layers.{i}.mlp.fc2.weight", "blocks_{i}/fc2/kernel", "linear"),
    ("encoder.layers.{i}.mlp.fc2.bias", "blocks_{i}/fc2/bias", "identity"),
    ("post_layernorm.weight", "post_ln/scale", "identity"),
    ("post_layernorm.bias", "post_ln/bias", "identity"),
]


def _neck(hf: str, ours: str) -> list[tuple[str, str, str]]:
    return [
        (f"{hf}.conv1.weight", f"{ours}/conv1/kernel", "conv"),
        (f"{hf}.layer_norm1.weight", f"{ours}/ln1/scale", "identity"),
        (f"{hf}.layer_norm1.bias", f"{ours}/ln1/bias", "identity"),
        (f"{hf}.conv2.weight", f"{ours}/conv2/kernel", "conv"),
        (f"{hf}.layer_norm2.weight", f"{ours}/ln2/scale", "identity"),
        (f"{hf}.layer_norm2.bias", f"{ours}/ln2/bias", "identity"),
    ]


_SAM_ENC = "model.high_res_vision_model.vision_encoder"
_SAM = [
    (f"{_SAM_ENC}.patch_embed.projection.weight", "sam/patch_embed/kernel", "conv"),
    (f"{_SAM_ENC}.patch_embed.projection.bias", "sam/patch_embed/bias", "identity"),
    (f"{_SAM_ENC}.pos_embed", "sam/pos_embed", "squeeze0"),
    *[
        (f"{_SAM_ENC}.layers.{{i}}.layer_norm{n}.{t}", f"sam/blocks_{{i}}/ln{n}/{o}", "identity")
        for n in "12"
        for t, o in (("weight", "scale"), ("bias", "bias"))
    ],
    (f"{_SAM_ENC}.layers.{{i}}.attn.qkv.weight", "sam/blocks_{i}/qkv/kernel", "linear"),
    (f"{_SAM_ENC}.layers.{{i}}.attn.qkv.bias", "sam/blocks_{i}/qkv/bias", "flatten"),
    (f"{_SAM_ENC}.layers.{{i}}.attn.proj.weight", "sam/blocks_{i}/proj/kernel", "linear_in2"),
    (f"{_SAM_ENC}.layers.{{i}}.attn.proj.bias", "sam/blocks_{i}/proj/bias", "identity"),
    (f"{_SAM_ENC}.layers.{{i}}.attn.rel_pos_h", "sam/blocks_{i}/rel_pos_h", "identity"),
    (f"{_SAM_ENC}.layers.{{i}}.attn.rel_pos_w", "sam/blocks_{i}/rel_pos_w", "identity"),
    *[
        (f"{_SAM_ENC}.layers.{{i}}.mlp.lin{n}.weight", f"sam/blocks_{{i}}/lin{n}/kernel", "linear")
        for n in "12"
    ],
    *[
        (f"{_SAM_ENC}.layers.{{i}}.mlp.lin{n}.bias", f"sam/blocks_{{i}}/lin{n}/bias", "identity")
        for n in "12"
    ],
    *_neck(f"{_SAM_ENC}.neck", "sam/neck"),
    *_neck("model.high_res_vision_neck", "sam/neck_hd"),
    ("model.high_res_vision_proj.conv1.weight", "sam/downsample/conv1/kernel", "conv"),
    ("model.high_res_vision_proj.conv2.weight", "sam/downsample/conv2/kernel", "conv"),
    ("model.high_res_vision_alpha", "sam/hd_alpha", "identity"),
]


def _dense(hf: str, ours: str) -> list[tuple[str, str, str]]:
    return [
        (f"{hf}.weight", f"{ours}/kernel", "linear"),
        (f"{hf}.bias", f"{ours}/bias", "identity"),
    ]


_ADAPTOR_MLP = _dense("model.aligner.linear1", "adaptor/fc1") + _dense(
    "model.aligner.linear2", "adaptor/fc2"
)
_ADAPTOR_HYBRID = (
    _dense("model.aligner.high_res_vision_proj", "adaptor/high_up")
    + _dense("model.aligner.vision_proj", "adaptor/low_up")
    + _dense("model.aligner.proj", "adaptor/fc2")
)

_LM = "model.language_model"
_LLM = [
    (f"{_LM}.embed_tokens.weight", "llm/embed/embedding", "identity"),
    (f"{_LM}.layers.{{i}}.input_layernorm.weight", "llm/blocks_{i}/attn_norm/scale", "identity"),
    (
        f"{_LM}.layers.{{i}}.post_attention_layernorm.weight",
        "llm/blocks_{i}/mlp_norm/scale",
        "identity",
    ),
    *[
        (f"{_LM}.layers.{{i}}.self_attn.{n}_proj.weight", f"llm/blocks_{{i}}/{n}/kernel", "linear")
        for n in "qkv"
    ],
    (f"{_LM}.layers.{{i}}.self_attn.o_proj.weight", "llm/blocks_{i}/o/kernel", "linear_in2"),
    *[
        (f"{_LM}.layers.{{i}}.mlp.{n}_proj.weight", f"llm/blocks_{{i}}/{n}/kernel", "linear")
        for n in ("gate", "up", "down")
    ],
    (f"{_LM}.norm.weight", "llm/final_norm/scale", "identity"),
    ("lm_head.weight", "llm/lm_head/kernel", "linear"),
]

_SIGLIP_RULES = [(f"model.vision_model.{h}", f"siglip/{o}", t) for h, o, t in _SIGLIP]
# One table per model class: the adaptor's dsvl names are shared but its HF names differ.
RULES: dict[str, list[tuple[str, str, str]]] = {
    "siglip": _SIGLIP_RULES + _ADAPTOR_MLP + _LLM,
    "hybrid": _SIGLIP_RULES + _SAM + _ADAPTOR_HYBRID + _LLM,
}

# HF keys that exist in some checkpoints but that the model never reads: dropped on import, counted.
IGNORED = [
    # SigLIP attention-pool head (vision_use_head=True)
    re.compile(r"^model\.vision_model\.head\."),
    # unused LayerNorms of the original HybridVisionTower
    re.compile(r"(^|\.)(high|low)_layer_norm\."),
]

# Hub checkpoints serialise SigLIP one level deeper (`model.vision_model.vision_model.`); transformers
# 5.x strips that level at load time, and so do we.
ALIASES = [("model.vision_model.vision_model.", "model.vision_model.")]


def _compile(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


_HF_RE = {kind: [(_compile(h), o, t) for h, o, t in rows] for kind, rows in RULES.items()}
_OURS_RE = {kind: [(_compile(o), h, t) for h, o, t in rows] for kind, rows in RULES.items()}


def canonical_hf_key(key: str) -> str:
    for old, new in ALIASES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def hf_to_ours(key: str, vision: str) -> tuple[str, str] | None:
    """HF key -> (dsvl path, transform name) for a model with `vision` towers, or None."""
    key = canonical_hf_key(key)
    for rx, ours, t in _HF_RE[vision]:
        m = rx.match(key)
        if m:
            return (ours.replace("{i}", m.group("i")) if "{i}" in ours else ours), t
    return None


def ours_to_hf(path: str, vision: str) -> tuple[str, str] | None:
    """dsvl path (unrolled layout) -> (HF key, transform name), or None."""
    for rx, hf, t in _OURS_RE[vision]:
        m = rx.match(path)
        if m:
            return (hf.replace("{i}", m.group("i")) if "{i}" in hf else hf), t
    return None


def is_ignored(key: str) -> bool:
    return any(rx.search(key) for rx in IGNORED)
