"""The original DeepSeek-VL release layout (`MultiModalityCausalLM`) -> transformers' DeepseekVL layout.

The Hub's `deepseek-ai/deepseek-vl-{1.3b,7b}-{base,chat}` folders were written by DeepSeek's own code:
their config.json has `"model_type": "multi_modality"` and names its towers (timm SigLIP, SAM) by a
model name instead of listing their sizes, and their tensors use timm / SAM names (fused SigLIP qkv,
`[1, N, W]` pos_embed). This module turns both into what transformers' converter
(`convert_deepseek_vl{,_hybrid}_weights_to_hf.py`) writes, so the rest of interop/ reads one layout.
Sizes the config leaves out are read from the tensor shapes where they can be and from `TOWERS`
(cross-checked) where they cannot. numpy only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np

from dsvl_jax import jsonfile
from dsvl_jax.errors import CheckpointError

RELEASE_MODEL_TYPE = "multi_modality"
IMAGE_TOKEN = "<image_placeholder>"
IMAGE_TOKEN_ID = (
    100015  # its id in the released tokenizer (docs/recipe.md#tokenizer-and-special-tokens)
)

# What a tower's model_name stands for in DeepSeek's code (siglip_vit.py, sam.py): the sizes the shapes
# cannot tell (heads, SAM windows, global blocks, activation) and those they can (cross-checked).
# `act` is the HF hidden_act name: the original runs timm's default nn.GELU (exact), as transformers'
# converter writes it.
TOWERS: dict[str, dict] = {
    "siglip_large_patch16_384": dict(
        kind="siglip", width=1024, depth=24, heads=16, mlp_dim=4096, patch_size=16, act="gelu"
    ),
    "sam_b_downsample": dict(
        kind="sam",
        width=768,
        depth=12,
        heads=12,
        mlp_dim=3072,
        patch_size=16,
        window_size=14,
        global_attn_indexes=[2, 5, 8, 11],
        out_chans=256,
    ),
}

# LlamaConfig defaults of the release's time, for fields its language_config omits.
_LLAMA_DEFAULTS = dict(
    model_type="llama",
    hidden_size=4096,
    intermediate_size=11008,
    num_attention_heads=32,
    num_hidden_layers=32,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    vocab_size=32000,
    max_position_embeddings=2048,
    hidden_act="silu",
)
# vision_config.cls -> (transformers model_type, the aligner projector_type it goes with).
_CLASSES = {
    "HybridVisionTower": ("deepseek_vl_hybrid", "low_high_hybrid_split_mlp_gelu"),
    "CLIPVisionTower": ("deepseek_vl", "mlp_gelu"),
}
_LOW = "vision_model.vision_tower_low.vision_tower."  # 7B SigLIP
_SINGLE = "vision_model.vision_tower."  # 1.3B SigLIP
_HIGH = "vision_model.vision_tower_high.vision_tower."  # 7B SAM


def is_release_config(conf: Mapping) -> bool:
    """A config.json written by DeepSeek's own code (not transformers')."""
    return conf.get("model_type") == RELEASE_MODEL_TYPE


def image_token_id(folder: str) -> int:
    """`<image_placeholder>`'s id in the folder's tokenizer.json, else the released tokenizer's."""
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        return IMAGE_TOKEN_ID
    added = jsonfile.read(path, CheckpointError, dict).get("added_tokens") or []
    if not isinstance(added, list):
        raise CheckpointError(f"{path}: added_tokens is not a list")
    ids = [t.get("id") for t in added if isinstance(t, dict) and t.get("content") == IMAGE_TOKEN]
    return int(ids[0]) if ids and ids[0] is not None else IMAGE_TOKEN_ID


def hf_config_from_release(
    conf: Mapping,
    tensors_shapes: Mapping[str, tuple[int, ...]],
    image_token_id: int = IMAGE_TOKEN_ID,
    source: str = "config.json",
) -> dict:
    """Release config.json (+ the shapes of its tensors) -> the transformers DeepseekVL(Hybrid) config."""
    vis = conf.get("vision_config") or {}
    cls, params = vis.get("cls"), vis.get("params") or {}
    _need(cls in _CLASSES, source, "vision_config.cls", f"{cls!r} is not one of {sorted(_CLASSES)}")
    model_type, projector = _CLASSES[cls]
    _check_aligner(conf, projector, source)
    text = _text_config(conf.get("language_config") or {})
    out = {
        "model_type": model_type,
        "image_token_id": int(image_token_id),
        "tie_word_embeddings": bool(text["tie_word_embeddings"]),
        "text_config": text,
    }
    if cls == "HybridVisionTower":
        low, high = params.get("low_res_cfg") or {}, params.get("high_res_cfg") or {}
        out["vision_config"] = _siglip(low, _LOW, tensors_shapes, source, "low_res_cfg.")
        out["high_res_vision_config"] = _sam(high, _HIGH, tensors_shapes, source, "high_res_cfg.")
    else:
        out["vision_config"] = _siglip(params, _SINGLE, tensors_shapes, source, "")
    return out


def _need(cond: bool, source: str, field: str, msg: str) -> None:
    if not cond:
        raise CheckpointError(f"{source} {field}: {msg}")


def _check_aligner(conf: Mapping, projector: str, source: str) -> None:
    p = (conf.get("aligner_config") or {}).get("params") or {}
    field = "aligner_config.params"
    got = p.get("projector_type")
    _need(
        got == projector,
        source,
        f"{field}.projector_type",
        f"{got!r}: vision_config.cls {conf['vision_config']['cls']} goes with {projector!r}",
    )
    _need(p.get("depth", 2) == 2, source, f"{field}.depth", f"{p.get('depth')} != 2")


def _text_config(lang: Mapping) -> dict:
    t = {**_LLAMA_DEFAULTS, **{k: v for k, v in lang.items() if v is not None}}
    t.setdefault("num_key_value_heads", t["num_attention_heads"])
    rs = lang.get("rope_scaling")
    # transformers 5 reads RoPE as rope_parameters; hf_config refuses any non-default type.
    t["rope_parameters"] = {
        "rope_type": (rs.get("rope_type") or rs.get("type")) if rs else "default",
        "rope_theta": float(t["rope_theta"]),
    }
    return t


def _tower(cfg: Mapping, kind: str, source: str, field: str) -> dict:
    name = cfg.get("model_name")
    known = sorted(k for k, v in TOWERS.items() if v["kind"] == kind)
    _need(
        name in TOWERS and TOWERS[name]["kind"] == kind,
        source,
        f"vision_config.params.{field}model_name",
        f"unknown {kind} tower {name!r}; known: {known}",
    )
    return TOWERS[name]


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str, ndim: int, source: str) -> tuple:
    if key not in shapes:
        raise CheckpointError(f"{source}: no tensor {key} (it gives the vision tower's size)")
    s = tuple(shapes[key])
    if len(s) != ndim:
        raise CheckpointError(f"{source}: tensor {key} has shape {s}, expected {ndim} dimensions")
    return s


def _blocks(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> int:
    rx = re.compile(re.escape(prefix) + r"blocks\.(\d+)\.")
    return len({m.group(1) for k in shapes if (m := rx.match(k))})


def _agree(source: str, where: str, what: str, want, tensor: str, got) -> None:
    _need(got == want, source, where, f"{what} is {want}, but tensor {tensor} says {got}")


def _siglip(cfg: Mapping, prefix: str, shapes, source: str, field: str) -> dict:
    t = _tower(cfg, "siglip", source, field)
    where = f"vision_config.params.{field}model_name={cfg.get('model_name')}"
    pos, proj, fc1 = (
        prefix + "pos_embed",
        prefix + "patch_embed.proj.weight",
        prefix + "blocks.0.mlp.fc1.weight",
    )
    _, n, width = _shape(shapes, pos, 3, source)
    patch, mlp = _shape(shapes, proj, 4, source)[-1], _shape(shapes, fc1, 2, source)[0]
    grid = round(n**0.5)
    _need(grid * grid == n, source, pos, f"{n} positions do not form a square grid")
    # DeepSeek's create_siglip_vit keeps the blocks up to select_layer (CLIPVisionTower default -2).
    sel = cfg.get("select_layer", -2)
    depth = min(t["depth"], t["depth"] + sel + 1) if sel <= 0 else min(t["depth"], sel)
    _agree(source, where, "width", t["width"], pos, width)
    _agree(
        source,
        where,
        f"depth (select_layer {sel})",
        depth,
        prefix + "blocks.*",
        _blocks(shapes, prefix),
    )
    _agree(source, where, "patch size", t["patch_size"], proj, patch)
    _agree(source, where, "mlp size", t["mlp_dim"], fc1, mlp)
    if "image_size" in cfg:
        _agree(
            source,
            f"vision_config.params.{field}image_size",
            "image size",
            cfg["image_size"],
            pos,
            grid * patch,
        )
    return {
        "model_type": "siglip_vision_model",
        "hidden_size": width,
        "intermediate_size": mlp,
        "num_hidden_layers": depth,
        "num_attention_heads": t["heads"],
        "image_size": grid * patch,
        "patch_size": patch,
        "hidden_act": t["act"],
        "layer_norm_eps": 1e-6,
        "vision_use_head": False,
    }


def _sam(cfg: Mapping, prefix: str, shapes, source: str, field: str) -> dict:
    t = _tower(cfg, "sam", source, field)
    where = f"vision_config.params.{field}model_name={cfg.get('model_name')}"
    pos, proj = prefix + "pos_embed", prefix + "patch_embed.proj.weight"
    lin1, neck = prefix + "blocks.0.mlp.lin1.weight", prefix + "neck.0.weight"
    _, grid, _, width = _shape(shapes, pos, 4, source)
    patch, mlp = _shape(shapes, proj, 4, source)[-1], _shape(shapes, lin1, 2, source)[0]
    out_chans = _shape(shapes, neck, 4, source)[0]
    _agree(source, where, "width", t["width"], pos, width)
    _agree(source, where, "depth", t["depth"], prefix + "blocks.*", _blocks(shapes, prefix))
    _agree(source, where, "patch size", t["patch_size"], proj, patch)
    _agree(source, where, "mlp size", t["mlp_dim"], lin1, mlp)
    _agree(source, where, "neck channels", t["out_chans"], neck, out_chans)
    if "image_size" in cfg:
        _agree(
            source,
            f"vision_config.params.{field}image_size",
            "image size",
            cfg["image_size"],
            pos,
            grid * patch,
        )
    return {
        "model_type": "sam_vision_model",
        "hidden_size": width,
        "mlp_dim": mlp,
        "num_hidden_layers": t["depth"],
        "num_attention_heads": t["heads"],
        "image_size": grid * patch,
        "patch_size": patch,
        "window_size": t["window_size"],
        "global_attn_indexes": list(t["global_attn_indexes"]),
        "output_channels": out_chans,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
    }


# --- tensors --------------------------------------------------------------------------------------

# Original tensors the model never reads: the SigLIP attention-pool head, the HybridVisionTower's
# unused LayerNorms, RoPE's inv_freq buffer.
IGNORED = [
    re.compile(r"(^|\.)attn_pool\."),
    re.compile(r"^vision_model\.(high|low)_layer_norm\."),
    re.compile(r"(^|\.)rotary_emb\.inv_freq$"),
]
_SPLIT_QKV, _SQUEEZE0 = "split_qkv", "squeeze0"


def _siglip_rules(src: str) -> list[tuple[str, str, str]]:
    s, h = re.escape(src), "model.vision_model."
    b, layer = s + r"blocks\.(\d+)\.", h + r"encoder.layers.\1."
    return [
        (s + r"pos_embed", h + "embeddings.position_embedding.weight", _SQUEEZE0),
        (s + r"patch_embed\.proj\.(weight|bias)", h + r"embeddings.patch_embedding.\1", ""),
        (b + r"attn\.qkv\.(weight|bias)", layer + r"self_attn.{}_proj.\2", _SPLIT_QKV),
        (b + r"attn\.proj\.(weight|bias)", layer + r"self_attn.out_proj.\2", ""),
        (b + r"norm([12])\.(weight|bias)", layer + r"layer_norm\2.\3", ""),
        (b + r"mlp\.fc([12])\.(weight|bias)", layer + r"mlp.fc\2.\3", ""),
        (s + r"norm\.(weight|bias)", h + r"post_layernorm.\1", ""),
    ]


def _neck_rules(src: str, dst: str) -> list[tuple[str, str, str]]:
    # nn.Sequential(conv, LayerNorm2d, conv, LayerNorm2d)
    names = ("conv1", "layer_norm1", "conv2", "layer_norm2")
    return [(src + rf"{i}\.(weight|bias)", f"{dst}.{n}." + r"\1", "") for i, n in enumerate(names)]


_S, _E = re.escape(_HIGH), "model.high_res_vision_model.vision_encoder."
_SAM_RULES = [
    (_S + r"pos_embed", _E + "pos_embed", ""),
    (_S + r"patch_embed\.proj\.(weight|bias)", _E + r"patch_embed.projection.\1", ""),
    (_S + r"blocks\.(\d+)\.norm([12])\.(weight|bias)", _E + r"layers.\1.layer_norm\2.\3", ""),
    (_S + r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", _E + r"layers.\1.attn.\2.\3", ""),
    (_S + r"blocks\.(\d+)\.attn\.rel_pos_([hw])", _E + r"layers.\1.attn.rel_pos_\2", ""),
    (_S + r"blocks\.(\d+)\.mlp\.lin([12])\.(weight|bias)", _E + r"layers.\1.mlp.lin\2.\3", ""),
    *_neck_rules(_S + r"neck\.", _E + "neck"),
    *_neck_rules(_S + r"neck_hd\.", "model.high_res_vision_neck"),
    (_S + r"downsamples\.0\.weight", "model.high_res_vision_proj.conv1.weight", ""),
    (_S + r"downsamples\.1\.weight", "model.high_res_vision_proj.conv2.weight", ""),
    (_S + r"hd_alpha_downsamples", "model.high_res_vision_alpha", ""),
]
_ALIGNER_RULES = [
    # 1.3B mlp_gelu: Sequential(Linear, GELU, Linear)
    (r"aligner\.layers\.0\.(weight|bias)", r"model.aligner.linear1.\1", ""),
    (r"aligner\.layers\.2\.(weight|bias)", r"model.aligner.linear2.\1", ""),
    # 7B low_high_hybrid_split_mlp_gelu: two up-projections, then Sequential(GELU, Linear)
    (r"aligner\.high_up_proj\.(weight|bias)", r"model.aligner.high_res_vision_proj.\1", ""),
    (r"aligner\.low_up_proj\.(weight|bias)", r"model.aligner.vision_proj.\1", ""),
    (r"aligner\.layers\.1\.(weight|bias)", r"model.aligner.proj.\1", ""),
]
_LLM_RULES = [
    (r"language_model\.model\.(.+)", r"model.language_model.\1", ""),
    (r"language_model\.lm_head\.weight", "lm_head.weight", ""),
]
RULES = [
    (re.compile(rx), dst, kind)
    for rx, dst, kind in [
        *_SAM_RULES,
        *_siglip_rules(_LOW),
        *_siglip_rules(_SINGLE),
        *_ALIGNER_RULES,
        *_LLM_RULES,
    ]
]


def release_to_hf(tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Release tensors -> (tensors in transformers' DeepseekVL names and layouts, [ignored keys]).

    A key no rule knows is kept under its own name, so the import's CheckpointMismatch names it.
    """
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    ignored: list[str] = []
    for key, w in tensors.items():
        if any(rx.search(key) for rx in IGNORED):
            ignored.append(key)
            continue
        for new, v in _rename(key, w):
            if new in out:
                raise CheckpointError(f"tensors {origin[new]} and {key} both map to {new}")
            out[new], origin[new] = v, key
    return out, ignored


def _rename(key: str, w: np.ndarray) -> list[tuple[str, np.ndarray]]:
    for rx, dst, kind in RULES:
        m = rx.fullmatch(key)
        if m is None:
            continue
        new = m.expand(dst)
        if kind == _SQUEEZE0:  # timm [1, N, W] -> transformers [N, W]
            return [(new, w[0] if w.ndim == 3 and w.shape[0] == 1 else w)]
        if kind == _SPLIT_QKV:  # timm fuses q, k, v along the output axis
            if w.shape[0] % 3:
                raise CheckpointError(f"tensor {key}: shape {w.shape} is not 3 fused q/k/v blocks")
            return [(new.format(n), part) for n, part in zip("qkv", np.split(w, 3, axis=0))]
        return [(new, w)]
    return [(key, w)]
