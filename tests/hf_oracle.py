"""Tiny random HF DeepseekVL(Hybrid) models built from configs (no download) and matching batches.

HF initialises several tensors to zero (SAM rel-pos tables, pos_embed, the hd alpha) or near zero;
`randomize` fills every parameter so each code path changes the logits.
"""

from __future__ import annotations

import numpy as np

IMAGE_TOKEN = 100

VARIANTS = {
    # 7B-like: hybrid towers, grouped-query attention, separate lm_head.
    "hybrid_gqa_untied": dict(hybrid=True, kv_heads=2, tie=False, act="gelu"),
    # 1.3B-like: SigLIP only, full MHA, output head tied to the embedding.
    "siglip_mha_tied": dict(hybrid=False, kv_heads=4, tie=True, act="gelu"),
    # Stock-SigLIP activation, hybrid with tied head.
    "hybrid_mha_tied_tanh": dict(hybrid=True, kv_heads=4, tie=True, act="gelu_pytorch_tanh"),
}


def hf_config(variant: str):
    from transformers import DeepseekVLConfig, DeepseekVLHybridConfig

    v = VARIANTS[variant]
    text = dict(
        model_type="llama",
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=v["kv_heads"],
        max_position_embeddings=512,
        tie_word_embeddings=v["tie"],
    )
    vis = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        hidden_act=v["act"],
        vision_use_head=False,
    )
    if v["hybrid"]:
        sam = dict(
            model_type="sam_vision_model",
            hidden_size=32,
            output_channels=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=64,
            patch_size=8,
            window_size=3,
            global_attn_indexes=[1],
            mlp_dim=64,
        )
        return DeepseekVLHybridConfig(
            text_config=text,
            vision_config=vis,
            high_res_vision_config=sam,
            image_token_id=IMAGE_TOKEN,
            tie_word_embeddings=v["tie"],
        )
    return DeepseekVLConfig(
        text_config=text,
        vision_config=vis,
        image_token_id=IMAGE_TOKEN,
        tie_word_embeddings=v["tie"],
    )


def randomize(model, seed: int = 0) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("high_res_vision_alpha"):
                p.fill_(0.7)
            elif (
                p.ndim == 1 and ("norm" in name or "layer_norm" in name) and name.endswith("weight")
            ):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif (
                p.ndim >= 2
                and "rel_pos" not in name
                and "pos_embed" not in name
                and "position_embedding" not in name
            ):
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def build(variant: str, seed: int = 0):
    import torch
    from transformers import (
        DeepseekVLForConditionalGeneration,
        DeepseekVLHybridForConditionalGeneration,
    )

    cfg = hf_config(variant)
    cls = (
        DeepseekVLHybridForConditionalGeneration
        if VARIANTS[variant]["hybrid"]
        else DeepseekVLForConditionalGeneration
    )
    torch.manual_seed(seed)
    model = cls(cfg)
    randomize(model, seed)
    return model.eval()


def batch(hybrid: bool, seed: int = 0, n_img_tokens: int = 16, pad: int = 3):
    """Two rows, one image each; row 1 is left-padded by `pad`. Returns numpy arrays in HF layouts."""
    rng = np.random.default_rng(seed)
    rows, masks = [], []
    pre, post = 4, 6
    t = 1 + pre + n_img_tokens + post
    for r in range(2):
        p = pad if r == 1 else 0
        text = rng.integers(101, 256, size=t - p)
        text[0] = 1
        text[1 + pre : 1 + pre + n_img_tokens] = IMAGE_TOKEN
        rows.append(np.concatenate([np.zeros(p, np.int64), text]))
        masks.append(np.concatenate([np.zeros(p, np.int64), np.ones(t - p, np.int64)]))
    out = dict(
        input_ids=np.stack(rows),
        attention_mask=np.stack(masks),
        pixel_values=rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32),
    )
    if hybrid:
        out["high_res_pixel_values"] = rng.normal(0, 1, (2, 3, 64, 64)).astype(np.float32)
    return out


def position_ids(mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(mask, -1) - 1, 0)
