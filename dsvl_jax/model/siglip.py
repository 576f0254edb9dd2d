"""SigLIP ViT, the low-resolution semantic tower (SigLIP-L/16 @ 384 px in DeepSeek-VL).

Input: pixels [B, H, W, 3], already normalised (mean = std = 0.5). Output: final-LayerNorm features
of the last block [B, (H/p)*(W/p), width] (select_layer = -1, no class token, no pooling head).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from dsvl_jax.model.attention import dot_product_attention
from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.layers import (
    boxed,
    dense,
    dtype_of,
    gelu,
    layer_norm,
    patch_embed,
    repeat_blocks,
)

# Activations split over the batch like the LLM's: without it XLA may keep the tower's residual stream
# replicated across the FSDP axis (1.3B stage 2 on v5p-256: 54 -> 24 GiB/chip at 2 micro-batches -> 1).
ACT = ("act_batch", "act_len", "act_embed")


class ViTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, _xs=None):
        c, dt, pdt = self.cfg.siglip, dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        hd = c.width // c.heads
        x = nn.with_logical_constraint(x, ACT)
        y = layer_norm("vit_embed", c.ln_eps, dt, pdt, name="ln1")(x)
        q, k, v = (
            dense(
                (c.heads, hd),
                ("vit_embed", "vit_heads", "head_dim"),
                dtype=dt,
                param_dtype=pdt,
                name=n,
            )(y)
            for n in ("q", "k", "v")
        )
        a = dot_product_attention(q, k, v, impl=self.cfg.attention)
        x = x + dense(
            c.width,
            ("vit_heads", "head_dim", "vit_embed"),
            axis=(-2, -1),
            dtype=dt,
            param_dtype=pdt,
            name="o",
        )(a)
        y = layer_norm("vit_embed", c.ln_eps, dt, pdt, name="ln2")(x)
        y = dense(c.mlp_dim, ("vit_embed", "vit_mlp"), dtype=dt, param_dtype=pdt, name="fc1")(y)
        y = dense(c.width, ("vit_mlp", "vit_embed"), dtype=dt, param_dtype=pdt, name="fc2")(
            gelu(y, c.act)
        )
        return x + y, None


class SiglipEncoder(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        c, dt, pdt = self.cfg.siglip, dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        x = patch_embed(c.width, c.patch_size, dt, pdt)(pixels.astype(dt))
        b, gh, gw, w = x.shape
        x = x.reshape(b, gh * gw, w)
        pos = self.param(
            "pos_embed",
            boxed(nn.initializers.normal(0.02), ("pos", "vit_embed")),
            (c.num_tokens, c.width),
            pdt,
        )
        x = nn.with_logical_constraint(x + pos.astype(dt)[None], ACT)
        x, _ = repeat_blocks(
            ViTBlock,
            c.depth,
            scan=self.cfg.scan_layers,
            remat_policy=self.cfg.remat_policy,
            name="blocks",
            cfg=self.cfg,
        )(x, None)
        x = nn.with_logical_constraint(x, ACT)
        return layer_norm("vit_embed", c.ln_eps, dt, pdt, name="post_ln")(x)
