"""The one place model sizes live: `tiny` (CPU tests, hybrid), `tiny_siglip`, `1.3b`, `7b`.

Real dimensions: docs/recipe.md#model-family (checked against the released configs). The 1.3B
model is SigLIP-only with a plain MLP adaptor; the 7B model is hybrid (SigLIP-L/16@384 +
SAM-B@1024) with the split MLP.
"""

from __future__ import annotations

import ml_collections

from dsvl_jax.model.config import ModelConfig, model_config_from_dict

_SIGLIP_L16_384 = dict(
    image_size=384, patch_size=16, width=1024, depth=24, heads=16, mlp_dim=4096, act="gelu"
)
_SAM_B_1024 = dict(
    image_size=1024,
    patch_size=16,
    width=768,
    depth=12,
    heads=12,
    mlp_dim=3072,
    window_size=14,
    global_attn_indexes=(2, 5, 8, 11),
    out_chans=256,
)

SIZES: dict[str, dict] = {
    "1.3b": dict(
        vision="siglip",
        siglip=_SIGLIP_L16_384,
        adaptor=dict(kind="mlp"),
        llm=dict(
            vocab_size=102400,
            hidden=2048,
            layers=24,
            heads=16,
            kv_heads=16,
            head_dim=128,
            mlp_dim=5632,
        ),
    ),
    "7b": dict(
        vision="hybrid",
        siglip=_SIGLIP_L16_384,
        sam=_SAM_B_1024,
        adaptor=dict(kind="hybrid_split_mlp"),
        llm=dict(
            vocab_size=102400,
            hidden=4096,
            layers=30,
            heads=32,
            kv_heads=32,
            head_dim=128,
            mlp_dim=11008,
        ),
    ),
    # CPU-test sizes: every code path of 7b (windows with padding, a global block feeding neck_hd,
    # GQA, untied head) at widths of 16-64. 16 image tokens per image.
    "tiny": dict(
        vision="hybrid",
        siglip=dict(image_size=32, patch_size=8, width=32, depth=2, heads=2, mlp_dim=64),
        sam=dict(
            image_size=64,
            patch_size=8,
            width=32,
            depth=3,
            heads=2,
            mlp_dim=64,
            window_size=3,
            global_attn_indexes=(1,),
            out_chans=16,
        ),
        adaptor=dict(kind="hybrid_split_mlp"),
        llm=dict(
            vocab_size=256,
            hidden=64,
            layers=2,
            heads=4,
            kv_heads=2,
            head_dim=16,
            mlp_dim=128,
            max_position=512,
        ),
        image_token_id=100,
    ),
    "tiny_siglip": dict(
        vision="siglip",
        siglip=dict(image_size=32, patch_size=8, width=32, depth=2, heads=2, mlp_dim=64),
        adaptor=dict(kind="mlp"),
        llm=dict(
            vocab_size=256,
            hidden=64,
            layers=2,
            heads=4,
            kv_heads=4,
            head_dim=16,
            mlp_dim=128,
            max_position=512,
            tie_embeddings=True,
        ),
        image_token_id=100,
    ),
}


def model_config_dict(size: str) -> ml_collections.ConfigDict:
    """The editable ConfigDict of a size (all fields present, so `--config.model.x=` overrides work)."""
    if size not in SIZES:
        raise KeyError(f"unknown model size {size!r}; known: {sorted(SIZES)}")
    full = model_config_from_dict(SIZES[size]).to_dict()
    return ml_collections.ConfigDict(full)


def model_config(size: str) -> ModelConfig:
    return model_config_from_dict(SIZES[size]) if size in SIZES else model_config_dict(size)
