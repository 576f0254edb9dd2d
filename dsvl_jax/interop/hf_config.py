"""HF `config.json` of DeepseekVL(Hybrid)ForConditionalGeneration <-> dsvl_jax ModelConfig.

Only plain dicts: neither direction needs transformers. Fields HF omits take the HF class defaults
(transformers 5.23). Features the model does not implement (biases in the LLM, non-default RoPE,
SAM without rel-pos) are refused with the field named, never silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dsvl_jax.errors import CheckpointError, ConfigError
from dsvl_jax.model.config import ModelConfig, model_config_from_dict

HYBRID, PLAIN = "deepseek_vl_hybrid", "deepseek_vl"
_ARCH = {
    HYBRID: "DeepseekVLHybridForConditionalGeneration",
    PLAIN: "DeepseekVLForConditionalGeneration",
}
_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}
# transformers 5.23 class defaults for fields a config.json may omit.
_SIGLIP_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=224,
    patch_size=16,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
)
_SAM_DEFAULTS = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=1024,
    patch_size=16,
    window_size=14,
    global_attn_indexes=[2, 5, 8, 11],
    output_channels=256,
    layer_norm_eps=1e-6,
    mlp_ratio=4.0,
    use_rel_pos=True,
    use_abs_pos=True,
    qkv_bias=True,
    hidden_act="gelu",
)


class HFConfigError(CheckpointError):
    """The HF config asks for something dsvl_jax does not implement."""


def _need(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise HFConfigError(f"config.json {field}: {msg}")


def _section(hf: Mapping[str, Any], name: str, where: str = "") -> dict[str, Any]:
    v = hf.get(name) or {}
    _need(isinstance(v, Mapping), where + name, f"a {type(v).__name__}, expected an object")
    return dict(v)


def _num(v: Any) -> Any:
    """JSON numbers as floats; anything else as it is, for validate to refuse by name."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


# ModelConfig field -> the config.json field it comes from (to name a refused value as the file does)
_HF_FIELDS = {
    "model.llm.vocab_size": "text_config.vocab_size",
    "model.llm.hidden": "text_config.hidden_size",
    "model.llm.layers": "text_config.num_hidden_layers",
    "model.llm.heads": "text_config.num_attention_heads",
    "model.llm.kv_heads": "text_config.num_key_value_heads",
    "model.llm.head_dim": "text_config.head_dim",
    "model.llm.mlp_dim": "text_config.intermediate_size",
    "model.llm.rope_theta": "text_config.rope_parameters.rope_theta",
    "model.llm.rms_eps": "text_config.rms_norm_eps",
    "model.llm.tie_embeddings": "tie_word_embeddings",
    "model.llm.max_position": "text_config.max_position_embeddings",
    "model.image_token_id": "image_token_id",
    **{
        f"model.siglip.{ours}": f"vision_config.{hf}"
        for ours, hf in (
            ("image_size", "image_size"),
            ("patch_size", "patch_size"),
            ("width", "hidden_size"),
            ("depth", "num_hidden_layers"),
            ("heads", "num_attention_heads"),
            ("mlp_dim", "intermediate_size"),
            ("ln_eps", "layer_norm_eps"),
        )
    },
    **{
        f"model.sam.{ours}": f"high_res_vision_config.{hf}"
        for ours, hf in (
            ("image_size", "image_size"),
            ("patch_size", "patch_size"),
            ("width", "hidden_size"),
            ("depth", "num_hidden_layers"),
            ("heads", "num_attention_heads"),
            ("mlp_dim", "mlp_dim"),
            ("window_size", "window_size"),
            ("global_attn_indexes", "global_attn_indexes"),
            ("out_chans", "output_channels"),
            ("ln_eps", "layer_norm_eps"),
        )
    },
}


def from_hf(hf: dict[str, Any]) -> ModelConfig:
    """config.json -> ModelConfig. Values the model cannot be built with raise ConfigError naming the
    config.json field (model/config.py:validate: types, bounds, size against this host's memory)."""
    _need(isinstance(hf, Mapping), "(top level)", f"a {type(hf).__name__}, expected an object")
    mt = hf.get("model_type")
    _need(
        isinstance(mt, str) and mt in _ARCH, "model_type", f"{mt!r} is not one of {sorted(_ARCH)}"
    )
    t = _section(hf, "text_config")
    _need(
        t.get("model_type", "llama") == "llama",
        "text_config.model_type",
        f"{t.get('model_type')!r} != 'llama'",
    )
    _need(
        not t.get("attention_bias", False),
        "text_config.attention_bias",
        "biases in attention are not supported",
    )
    _need(
        not t.get("mlp_bias", False), "text_config.mlp_bias", "biases in the MLP are not supported"
    )
    _need(
        t.get("hidden_act", "silu") == "silu",
        "text_config.hidden_act",
        f"{t.get('hidden_act')!r} != 'silu'",
    )
    rope = _section(t, "rope_parameters", "text_config.")
    _need(
        rope.get("rope_type", "default") == "default",
        "text_config.rope_parameters.rope_type",
        f"{rope.get('rope_type')!r}: only default RoPE is implemented",
    )
    heads = t.get("num_attention_heads", 32)
    hidden = t.get("hidden_size", 4096)
    llm = dict(
        vocab_size=t.get("vocab_size", 32000),
        hidden=hidden,
        layers=t.get("num_hidden_layers", 32),
        heads=heads,
        kv_heads=t.get("num_key_value_heads") or heads,
        # sizes are checked by validate; a bad hidden / heads shows there, not as a division error
        head_dim=t.get("head_dim")
        or (hidden // heads if _pos_int(hidden) and _pos_int(heads) else hidden),
        mlp_dim=t.get("intermediate_size", 11008),
        rope_theta=_num(rope.get("rope_theta", t.get("rope_theta", 10000.0))),
        rms_eps=_num(t.get("rms_norm_eps", 1e-6)),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        max_position=t.get("max_position_embeddings", 2048),
    )
    v = {**_SIGLIP_DEFAULTS, **_section(hf, "vision_config")}
    _need(
        isinstance(v["hidden_act"], str) and v["hidden_act"] in _ACTS,
        "vision_config.hidden_act",
        f"{v['hidden_act']!r} not in {sorted(_ACTS)}",
    )
    siglip = dict(
        image_size=v["image_size"],
        patch_size=v["patch_size"],
        width=v["hidden_size"],
        depth=v["num_hidden_layers"],
        heads=v["num_attention_heads"],
        mlp_dim=v["intermediate_size"],
        act=_ACTS[v["hidden_act"]],
        ln_eps=_num(v["layer_norm_eps"]),
    )
    d: dict[str, Any] = dict(
        siglip=siglip, llm=llm, image_token_id=hf.get("image_token_id", 100015)
    )
    if mt == HYBRID:
        s = {**_SAM_DEFAULTS, **_section(hf, "high_res_vision_config")}
        for f in ("use_rel_pos", "use_abs_pos", "qkv_bias"):
            _need(
                bool(s[f]),
                f"high_res_vision_config.{f}",
                "must be true (the only SAM variant implemented)",
            )
        _need(
            s["hidden_act"] == "gelu",
            "high_res_vision_config.hidden_act",
            f"{s['hidden_act']!r} != 'gelu'",
        )
        d["sam"] = dict(
            image_size=s["image_size"],
            patch_size=s["patch_size"],
            width=s["hidden_size"],
            depth=s["num_hidden_layers"],
            heads=s["num_attention_heads"],
            mlp_dim=s.get("mlp_dim") or _mlp_dim(s["hidden_size"], s["mlp_ratio"]),
            window_size=s["window_size"],
            global_attn_indexes=s["global_attn_indexes"],
            out_chans=s["output_channels"],
            ln_eps=_num(s["layer_norm_eps"]),
        )
        d.update(vision="hybrid", adaptor=dict(kind="hybrid_split_mlp"))
    else:
        d.update(vision="siglip", adaptor=dict(kind="mlp"))
    try:
        return model_config_from_dict(d)
    except ConfigError as e:
        field, _, msg = str(e).partition(": ")
        if field not in _HF_FIELDS:
            raise
        raise ConfigError(f"config.json {_HF_FIELDS[field]} ({field}): {msg}") from None


def _mlp_dim(hidden: Any, ratio: Any) -> Any:
    if _pos_int(hidden) and isinstance(ratio, (int, float)) and math.isfinite(ratio):
        return int(hidden * ratio)
    return ratio  # validate names it (model.sam.mlp_dim)


def to_hf(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    l, s = cfg.llm, cfg.siglip
    mt = HYBRID if cfg.hybrid else PLAIN
    out: dict[str, Any] = {
        "architectures": [_ARCH[mt]],
        "model_type": mt,
        "dtype": dtype,
        "image_token_id": cfg.image_token_id,
        "tie_word_embeddings": l.tie_embeddings,
        "text_config": {
            "model_type": "llama",
            "vocab_size": l.vocab_size,
            "hidden_size": l.hidden,
            "num_hidden_layers": l.layers,
            "num_attention_heads": l.heads,
            "num_key_value_heads": l.kv_heads,
            "head_dim": l.head_dim,
            "intermediate_size": l.mlp_dim,
            "hidden_act": "silu",
            "rms_norm_eps": l.rms_eps,
            "max_position_embeddings": l.max_position,
            "rope_parameters": {"rope_type": "default", "rope_theta": l.rope_theta},
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": l.tie_embeddings,
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "image_size": s.image_size,
            "patch_size": s.patch_size,
            "hidden_size": s.width,
            "num_hidden_layers": s.depth,
            "num_attention_heads": s.heads,
            "intermediate_size": s.mlp_dim,
            "hidden_act": {v: k for k, v in _ACTS.items()}[s.act],
            "layer_norm_eps": s.ln_eps,
            "vision_use_head": False,
        },
    }
    if cfg.hybrid:
        m = cfg.sam
        out["high_res_vision_config"] = {
            "model_type": "sam_vision_model",
            "image_size": m.image_size,
            "patch_size": m.patch_size,
            "hidden_size": m.width,
            "num_hidden_layers": m.depth,
            "num_attention_heads": m.heads,
            "mlp_dim": m.mlp_dim,
            "window_size": m.window_size,
            "global_attn_indexes": list(m.global_attn_indexes),
            "output_channels": m.out_chans,
            "layer_norm_eps": m.ln_eps,
            "use_rel_pos": True,
            "use_abs_pos": True,
            "qkv_bias": True,
            "hidden_act": "gelu",
        }
    return out
