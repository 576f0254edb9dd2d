"""Analytic FLOP counts (both towers, the adaptor and the LLM; causal attention counted half) and MFU.

Model FLOPs per step = sum over parts of forward FLOPs x (1 + needs_input_grad + needs_weight_grad):
a part trained gets 3x; a frozen part that something upstream of it trains (e.g. the LLM in stage 1,
which back-propagates into the adaptor) gets 2x; a frozen part with nothing trainable upstream
(frozen towers) runs forward only. Remat recomputation is not counted (MFU, not HFU).
"""

from __future__ import annotations

import math

import jax

from dsvl_jax.model.config import ModelConfig

# Dense bf16 peak FLOP/s per device by jax device_kind (vendor figures).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "TPU7x": 2307e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
}

# The model's dataflow: each part and the parts that feed it, directly or not. A part needs input gradients
# iff one of its feeders trains (SigLIP and the SAM trunk are parallel branches: training SigLIP in stage 3
# sends no gradient through the frozen SAM trunk).
FEEDERS = {
    "siglip": (),
    "sam_trunk": (),
    "sam_adaptor": ("sam_trunk",),
    "adaptor": ("siglip", "sam_trunk", "sam_adaptor"),
    "llm": ("siglip", "sam_trunk", "sam_adaptor", "adaptor"),
}


def backward_parts(trainable) -> set[str]:
    """Parts that run a backward pass: the trained ones and every part downstream of one."""
    return {
        p
        for p, feeders in FEEDERS.items()
        if p in trainable or any(f in trainable for f in feeders)
    }


def _vit_linear(tokens: int, width: int, mlp: int) -> float:
    return 2.0 * tokens * (4 * width * width + 2 * width * mlp)


def forward_flops(
    cfg: ModelConfig, batch: int, seq_len: int, images_per_sample: int
) -> dict[str, float]:
    """Forward FLOPs per step, per part, for `batch` sequences of `seq_len` tokens."""
    n_img = batch * images_per_sample
    s = cfg.siglip
    n = s.num_tokens
    siglip = n_img * (
        2.0 * n * s.patch_size**2 * 3 * s.width
        + s.depth * (_vit_linear(n, s.width, s.mlp_dim) + 4.0 * n * n * s.width)
    )
    out = {"siglip": siglip}
    if cfg.hybrid:
        m = cfg.sam
        g = m.grid
        gp = math.ceil(g / m.window_size) * m.window_size
        trunk = 2.0 * g * g * m.patch_size**2 * 3 * m.width
        for i in range(m.depth):
            if i in m.global_attn_indexes:
                tok, keys, side = g * g, g * g, g
            else:  # windows are zero-padded to gp x gp before qkv, cropped after proj
                tok, keys, side = gp * gp, m.window_size**2, m.window_size
            # attention, rel-pos
            trunk += (
                2.0 * tok * 4 * m.width**2
                + 2.0 * g * g * 2 * m.width * m.mlp_dim  # qkv+proj, MLP
                + 4.0 * tok * keys * m.width
                + 4.0 * tok * side * m.width
            )
        c, r = m.out_chans, 4 * s.grid
        neck = 2.0 * g * g * (m.width * c + 9 * c * c)
        down = 2.0 * 9 * ((r // 2) ** 2 * c * 2 * c + (r // 4) ** 2 * 2 * c * 4 * c)
        out["sam_trunk"] = n_img * trunk
        out["sam_adaptor"] = n_img * 2 * (neck + down)
        d = cfg.llm.hidden
        out["adaptor"] = n_img * 2.0 * n * (s.width * d // 2 + m.out_width * d // 2 + d * d)
    else:
        d = cfg.llm.hidden
        out["adaptor"] = n_img * 2.0 * n * (s.width * d + d * d)
    l = cfg.llm
    per_tok = (
        2.0
        * l.layers
        * (l.hidden * l.head_dim * (2 * l.heads + 2 * l.kv_heads) + 3 * l.hidden * l.mlp_dim)
    )
    per_tok += 2.0 * l.hidden * l.vocab_size
    attn = 2.0 * l.layers * l.heads * l.head_dim * seq_len  # 4*T*H*Dh per layer, halved for causal
    out["llm"] = batch * seq_len * (per_tok + attn)
    return out


def step_flops(
    cfg: ModelConfig,
    trainable: tuple[str, ...],
    batch: int,
    seq_len: int,
    images_per_sample: int = 1,
) -> float:
    """Model FLOPs of one optimizer step (forward + the backward the trainable set needs)."""
    fwd = forward_flops(cfg, batch, seq_len, images_per_sample)
    total = 0.0
    for part, f in fwd.items():
        input_grad = any(p in trainable for p in FEEDERS[part])
        trains = part in trainable
        total += f * (1 + int(input_grad or trains) + int(trains))
    return total


def peak_flops_per_device(override: float = 0.0) -> float:
    """Configured peak, else the vendor figure for this device kind; 0.0 if unknown (e.g. CPU)."""
    if override:
        return float(override)
    return peak_for_kind(jax.devices()[0].device_kind)


def peak_for_kind(kind: str) -> float:
    """Dense bf16 peak of a device kind from PEAK_FLOPS (longest matching prefix); 0.0 if unknown."""
    for name, v in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if kind.startswith(name):
            return v
    return 0.0


def measured_matmul_peak(dtype: str = "float32", n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of one n x n jnp.dot in `dtype` on device 0 (bf16 accumulates in f32): the CPU 'peak'."""
    import time

    import jax.numpy as jnp

    dev = jax.devices()[0]
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype), dev)
    b = jax.device_put(jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype), dev)
    pet = jnp.float32 if dtype == "bfloat16" else None
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=pet))
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def mfu(
    flops_per_step: float, step_seconds: float, n_devices: int, peak_per_device: float
) -> float:
    if not peak_per_device or step_seconds <= 0:
        return float("nan")
    return flops_per_step / step_seconds / (n_devices * peak_per_device)
