"""SAM-B ViTDet image encoder, the high-resolution detail tower of the 7B model, plus DeepSeek's
additions: a second neck (`neck_hd`) on the first global block's output, the shared stride-2
downsample convs to [B, 24, 24, 1024], and the learned mixing scalar `hd_alpha` (init 0).

Input: pixels [B, 1024, 1024, 3], CLIP-normalised. Output: [B, 576, 1024] in row-major (h, w) order.
Blocks are unrolled (not scanned): windowed and global blocks carry rel-pos tables of different shapes
(2*14-1 vs 2*64-1 rows), so they cannot share one stacked parameter; each block is still remat-able.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsvl_jax.model.attention import dot_product_attention
from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.layers import boxed, dense, dtype_of, gelu, layer_norm, maybe_remat, patch_embed

ACT = ("act_batch", None, None, "act_embed")  # [B, h, w, width]


def window_partition(x: jax.Array, ws: int) -> tuple[jax.Array, tuple[int, int]]:
    """[B, H, W, C] -> [B * nW, ws, ws, C], zero-padding bottom/right up to a multiple of ws."""
    b, h, w, c = x.shape
    ph, pw = (-h) % ws, (-w) % ws
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, hp // ws, ws, wp // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c), (hp, wp)


def window_unpartition(
    x: jax.Array, ws: int, padded: tuple[int, int], hw: tuple[int, int]
) -> jax.Array:
    """Inverse of window_partition, cropping the padding."""
    hp, wp = padded
    c = x.shape[-1]
    b = x.shape[0] // ((hp // ws) * (wp // ws))
    x = (
        x.reshape(b, hp // ws, wp // ws, ws, ws, c)
        .transpose(0, 1, 3, 2, 4, 5)
        .reshape(b, hp, wp, c)
    )
    return x[:, : hw[0], : hw[1]]


def rel_pos_bias(q: jax.Array, table_h: jax.Array, table_w: jax.Array) -> jax.Array:
    """Decomposed relative-position bias (MViTv2). q: [B, h, w, H, D] unscaled -> [B, H, h*w, h*w].

    Table rows are indexed by q_idx - k_idx + (size - 1); tables are built at native size, so no
    interpolation is needed.
    """
    b, h, w, nh, _ = q.shape
    rh = table_h[jnp.arange(h)[:, None] - jnp.arange(h)[None, :] + (h - 1)]  # [h, kh, D]
    rw = table_w[jnp.arange(w)[:, None] - jnp.arange(w)[None, :] + (w - 1)]  # [w, kw, D]
    bh = jnp.einsum("byxnd,ykd->bnyxk", q, rh.astype(q.dtype))
    bw = jnp.einsum("byxnd,xkd->bnyxk", q, rw.astype(q.dtype))
    bias = bh[..., :, None] + bw[..., None, :]  # [B, H, h, w, kh, kw]
    return bias.reshape(b, nh, h * w, h * w)


class SamBlock(nn.Module):
    """ViTDet block; `window` = 0 means global attention over the whole grid."""

    cfg: ModelConfig
    window: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, dt, pdt = self.cfg.sam, dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        hd = c.width // c.heads
        shortcut = x
        y = layer_norm("vit_embed", c.ln_eps, dt, pdt, name="ln1")(x)
        hw = y.shape[1:3]
        if self.window:
            y, padded = window_partition(y, self.window)
        size = self.window or c.grid
        bb, h, w, _ = y.shape
        qkv = dense(
            (3, c.heads, hd),
            ("vit_embed", "qkv", "vit_heads", "head_dim"),
            dtype=dt,
            param_dtype=pdt,
            name="qkv",
        )(y)  # [B', h, w, 3, H, D]
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        init = boxed(nn.initializers.normal(0.02), ("rel_pos", "head_dim"))
        th = self.param("rel_pos_h", init, (2 * size - 1, hd), pdt)
        tw = self.param("rel_pos_w", init, (2 * size - 1, hd), pdt)
        bias = rel_pos_bias(q, th, tw)
        q, k, v = (a.reshape(bb, h * w, c.heads, hd) for a in (q, k, v))
        a = dot_product_attention(q, k, v, bias=bias, impl=self.cfg.attention)
        a = dense(
            c.width,
            ("vit_heads", "head_dim", "vit_embed"),
            axis=(-2, -1),
            dtype=dt,
            param_dtype=pdt,
            name="proj",
        )(a.reshape(bb, h, w, c.heads, hd))
        if self.window:
            a = window_unpartition(a, self.window, padded, hw)
        x = shortcut + a
        y = layer_norm("vit_embed", c.ln_eps, dt, pdt, name="ln2")(x)
        y = dense(c.mlp_dim, ("vit_embed", "vit_mlp"), dtype=dt, param_dtype=pdt, name="lin1")(y)
        y = dense(c.width, ("vit_mlp", "vit_embed"), dtype=dt, param_dtype=pdt, name="lin2")(
            gelu(y)
        )
        return x + y


def _conv(features: int, k: int, stride: int, dt, pdt, name: str) -> nn.Conv:
    pad = (k - 1) // 2
    return nn.Conv(
        features,
        (k, k),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dt,
        param_dtype=pdt,
        kernel_init=boxed(
            nn.initializers.lecun_normal(), ("conv_h", "conv_w", "conv_in", "conv_out")
        ),
        name=name,
    )


class Neck(nn.Module):
    """Conv1x1 -> LayerNorm(channels) -> Conv3x3 -> LayerNorm(channels); [B, h, w, W] -> [B, h, w, C]."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, dt, pdt = self.cfg.sam, dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        x = _conv(c.out_chans, 1, 1, dt, pdt, "conv1")(x)
        x = layer_norm("conv_out", 1e-6, dt, pdt, name="ln1")(x)
        x = _conv(c.out_chans, 3, 1, dt, pdt, "conv2")(x)
        return layer_norm("conv_out", 1e-6, dt, pdt, name="ln2")(x)


class Downsample(nn.Module):
    """Bilinear resize to (4*out, 4*out) then two stride-2 3x3 convs: C -> 2C -> 4C channels."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, dt, pdt = self.cfg.sam, dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        side = 4 * self.cfg.siglip.grid
        # Half-pixel bilinear without antialias = torch interpolate(bilinear, align_corners=False).
        x = jax.image.resize(
            x.astype(jnp.float32), (x.shape[0], side, side, x.shape[-1]), "linear", antialias=False
        ).astype(dt)
        x = _conv(2 * c.out_chans, 3, 2, dt, pdt, "conv1")(x)
        return _conv(4 * c.out_chans, 3, 2, dt, pdt, "conv2")(x)


class SamEncoder(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        c, dt, pdt = self.cfg.sam, dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        x = patch_embed(c.width, c.patch_size, dt, pdt)(pixels.astype(dt))
        pos = self.param(
            "pos_embed",
            boxed(nn.initializers.normal(0.02), ("pos", "pos_w", "vit_embed")),
            (c.grid, c.grid, c.width),
            pdt,
        )
        x = x + pos.astype(dt)[None]
        block = maybe_remat(SamBlock, self.cfg.remat_policy)
        first_global = c.global_attn_indexes[0]
        hd = None
        for i in range(c.depth):
            window = 0 if i in c.global_attn_indexes else c.window_size
            x = nn.with_logical_constraint(x, ACT)  # batch-split like the LLM's residual stream
            x = block(self.cfg, window, name=f"blocks_{i}")(x)
            if i == first_global:
                hd = x
        down = Downsample(self.cfg, name="downsample")
        main = down(Neck(self.cfg, name="neck")(x))
        side = down(Neck(self.cfg, name="neck_hd")(hd))
        alpha = self.param("hd_alpha", boxed(nn.initializers.zeros_init(), ("scalar",)), (1,), pdt)
        out = main + alpha.astype(dt) * side
        b, h, w, ch = out.shape
        return nn.with_logical_constraint(
            out.reshape(b, h * w, ch), ("act_batch", "act_len", "act_embed")
        )
