"""SAM-B ViTDet image encoder, the high-resolution detail tower of the 7B model, plus DeepSeek's
additions: a second neck (`neck_hd`) on the first global block's output, the shared stride-2
downsample convs to [B, 24, 24, 1024], and the learned mixing scalar `hd_alpha` (init 0).

Input: pixels [B, 1024, 1024, 3], CLIP-normalised. Output: [B, 576, 1024] in row-major (h, w) order.
Blocks are unrolled (not scanned): windowed and global blocks carry rel-pos tables of different shapes
(2*14-1 vs 2*64-1 rows), so they cannot share one stacked parameter; each block is still remat-able.
Global blocks attend over all 64x64 = 4096 tokens; their queries run in chunks of
`model.sam.global_attn_q_chunk` tokens (`rel_pos_attention`), so the [images, heads, 4096, 4096] logits and
bias never exist at once.
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


def rel_pos_rows(table: jax.Array, size: int) -> jax.Array:
    """Decomposed rel-pos table [2*size-1, D] -> [size (query), size (key), D].

    Row q_idx - k_idx + (size - 1) of the table; tables are built at native size, so no interpolation is
    needed.
    """
    idx = jnp.arange(size)[:, None] - jnp.arange(size)[None, :] + (size - 1)
    return table[idx]


def rel_pos_bias(q: jax.Array, rh: jax.Array, rw: jax.Array) -> jax.Array:
    """Decomposed relative-position bias (MViTv2) of a block of query rows against the whole grid.

    q: [B, r, w, H, D] unscaled (r query grid rows, r = h for the whole grid), rh: [r, kh, D] (those rows of
    `rel_pos_rows`), rw: [w, kw, D] -> [B, H, r*w, kh*kw].
    """
    b, r, w, nh, _ = q.shape
    kh, kw = rh.shape[1], rw.shape[1]
    bh = jnp.einsum("byxnd,ykd->bnyxk", q, rh.astype(q.dtype))
    bw = jnp.einsum("byxnd,xkd->bnyxk", q, rw.astype(q.dtype))
    bias = bh[..., :, None] + bw[..., None, :]  # [B, H, r, w, kh, kw]
    return bias.reshape(b, nh, r * w, kh * kw)


def rel_pos_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rh: jax.Array,
    rw: jax.Array,
    *,
    q_chunk: int = 0,
    impl: str = "xla",
) -> jax.Array:
    """Attention with SAM's decomposed rel-pos bias over a [h, w] grid; q/k/v [B, h, w, H, D] -> [B, h*w, H, D].

    `q_chunk` = 0 (or >= h*w) builds the [B, H, h*w, h*w] bias and logits at once. Otherwise the queries run
    in chunks of `q_chunk` tokens (whole grid rows) under `lax.map`, each chunk against all keys with its own
    rows of the bias: per row the same logits, the same softmax over every key and the same PV product, so
    the result is the dense one up to float rounding, while only [B, H, q_chunk, h*w] logits live at a time.
    Each chunk is rematerialised in the backward pass, so a trainable trunk keeps that bound too (a frozen
    one has no backward at all). At 1024 px (64x64 = 4096 tokens) the dense logits are 768 MiB per image
    in f32; the 7B stage-2 batch puts 72 images on each chip.
    """
    b, h, w, nh, d = q.shape

    def flat(a: jax.Array) -> jax.Array:
        return a.reshape(b, h * w, nh, d)

    if not q_chunk or q_chunk >= h * w:
        return dot_product_attention(
            flat(q), flat(k), flat(v), bias=rel_pos_bias(q, rh, rw), impl=impl
        )
    if q_chunk % w or h % (q_chunk // w):
        raise ValueError(
            f"q_chunk={q_chunk} is not a whole number of {w}-token rows dividing {h} rows"
        )
    rows = q_chunk // w
    n = h // rows
    kf, vf = flat(k), flat(v)
    # [n, B, rows, w, H, D]: the chunk axis leads, B keeps its batch sharding
    qs = q.reshape(b, n, rows, w, nh, d).swapaxes(0, 1)
    rhs = rh.reshape(n, rows, rh.shape[1], rh.shape[2])  # [n, rows, kh, D]

    def chunk(args):
        qc, rhc = args
        bias = rel_pos_bias(qc, rhc, rw)  # [B, H, rows*w, h*w]
        return dot_product_attention(qc.reshape(b, rows * w, nh, d), kf, vf, bias=bias, impl=impl)

    out = jax.lax.map(jax.checkpoint(chunk, prevent_cse=False), (qs, rhs))  # [n, B, rows*w, H, D]
    return out.swapaxes(0, 1).reshape(b, h * w, nh, d)


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
        a = rel_pos_attention(
            q,
            k,
            v,
            rel_pos_rows(th, h),
            rel_pos_rows(tw, w),
            q_chunk=0 if self.window else c.global_attn_q_chunk,
            impl=self.cfg.attention,
        )
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
