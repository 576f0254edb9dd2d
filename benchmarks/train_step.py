"""Train-step throughput: dsvl_jax vs HF PyTorch (transformers, torch 2.13 CPU) on the same 'small'
VL config, plus MFU against the measured peak of a same-dtype matmul on this machine.

  python benchmarks/train_step.py [--steps 20] [--skip-torch]

'small' (documented): LLM 512 wide x 8 layers (8 heads, MLP 1376, vocab 32000); SigLIP 256 x 4 @128 px
patch 16 (64 image tokens); SAM 128 x 4 @256 px patch 16 (window 14, global blocks 1 and 3); one
image per sequence; batch 4 x 256 tokens; every parameter trained with AdamW (both frameworks).
Precision: f32 in both; also JAX bf16 compute (f32 master weights) vs torch bf16 autocast.
MFU = model FLOPs per step (train/metrics.step_flops) / median step time / median peak of a 2048^3 jnp.dot
in the same dtype, re-measured every 5 steps. The process keeps freed host memory (parallel/host_memory.py,
as the train CLI does), for both frameworks.
Last line: one JSON object (jax_tokens_per_s, torch_tokens_per_s, ratio, mfu, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

SMALL = dict(
    vision="hybrid",
    siglip=dict(image_size=128, patch_size=16, width=256, depth=4, heads=4, mlp_dim=1024),
    sam=dict(
        image_size=256,
        patch_size=16,
        width=128,
        depth=4,
        heads=2,
        mlp_dim=512,
        window_size=14,
        global_attn_indexes=(1, 3),
        out_chans=64,
    ),
    adaptor=dict(kind="hybrid_split_mlp"),
    llm=dict(
        vocab_size=32000,
        hidden=512,
        layers=8,
        heads=8,
        kv_heads=8,
        head_dim=64,
        mlp_dim=1376,
        max_position=2048,
    ),
    image_token_id=31999,
)
BATCH, SEQ = 4, 256
LOSS_CHUNK = 1024  # = the whole micro-batch: head + CE fused (train/loss.py), no [B, T, V] logits
GROUP = 5  # steps between two peak measurements
SCAN = False  # XLA:CPU runs the unrolled layers ~10% faster than the scanned loop at this size (measured)
ALL = ("siglip", "sam_trunk", "sam_adaptor", "adaptor", "llm")


def matmul_peak(dtype: str) -> float:
    from dsvl_jax.train.metrics import measured_matmul_peak

    return measured_matmul_peak(dtype)


def jax_step_time(dtype: str, steps: int) -> tuple[float, float, float, int]:
    """(median step seconds, median matmul peak FLOP/s, model FLOPs per step, params)."""
    import jax

    from dsvl_jax.config import base_config
    from dsvl_jax.data.synthetic import synthetic_batch
    from dsvl_jax.model.config import model_config_from_dict
    from dsvl_jax.model.params import count_params
    from dsvl_jax.parallel import build_mesh, rules_from_config, shard_host_batch
    from dsvl_jax.train.metrics import step_flops
    from dsvl_jax.train.state import StateFactory
    from dsvl_jax.train.step import CompiledStep

    c = base_config("tiny")
    c.model = model_config_from_dict(SMALL).to_config_dict()
    c.model.dtype = dtype
    c.model.scan_layers = SCAN
    c.train.trainable = ALL
    c.train.warmup_steps = 0
    c.train.loss_chunk = LOSS_CHUNK
    c.parallel.ici = dict(data=1, fsdp=1, tensor=1)
    cfg = model_config_from_dict(c.model)
    f = StateFactory(
        cfg, c.train, build_mesh(c.parallel, jax.devices()[:1]), rules_from_config(None)
    )
    state = f.init(jax.random.key(0))
    step = CompiledStep(f)
    batch = shard_host_batch(synthetic_batch(cfg, BATCH, SEQ), f.mesh, f.rules)
    state, m = step(state, batch)
    jax.block_until_ready(m)
    # The matmul peak is re-measured between groups of steps and both are taken as medians: on a shared VM
    # both drift by several percent within a minute, and MFU is their ratio.
    times, peaks = [], []
    for i in range(steps):
        if i % GROUP == 0:
            peaks.append(matmul_peak(dtype))
        t = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    assert step.compiles == 1
    return (
        float(np.median(times)),
        float(np.median(peaks)),
        step_flops(cfg, ALL, BATCH, SEQ),
        count_params(state.params),
    )


def torch_step_time(autocast_bf16: bool, steps: int) -> tuple[float, int]:
    import torch
    from transformers import DeepseekVLHybridConfig, DeepseekVLHybridForConditionalGeneration

    from dsvl_jax.interop.hf_config import to_hf
    from dsvl_jax.model.config import model_config_from_dict

    cfg = model_config_from_dict(SMALL)
    hf = to_hf(cfg)
    hf.pop("architectures"), hf.pop("model_type"), hf.pop("dtype")
    torch.manual_seed(0)
    model = DeepseekVLHybridForConditionalGeneration(DeepseekVLHybridConfig(**hf)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng(0)
    n = cfg.num_image_tokens
    ids = rng.integers(0, cfg.image_token_id, (BATCH, SEQ))
    ids[:, 2 : 2 + n] = cfg.image_token_id
    ids = torch.tensor(ids)
    labels = ids.clone()
    labels[ids == cfg.image_token_id] = -100
    px = torch.tensor(rng.uniform(-1, 1, (BATCH, 3, 128, 128)), dtype=torch.float32)
    hpx = torch.tensor(rng.normal(size=(BATCH, 3, 256, 256)), dtype=torch.float32)

    def one():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
            loss = model(
                input_ids=ids, pixel_values=px, high_res_pixel_values=hpx, labels=labels
            ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    one()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        one()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--scan", action="store_true", help="scan over layers (default: unrolled)")
    ap.add_argument(
        "--loss-chunk", type=int, default=1024, help="train.loss_chunk (0: materialise logits)"
    )
    args = ap.parse_args()
    global BATCH, SEQ, SCAN, LOSS_CHUNK
    BATCH, SEQ, SCAN, LOSS_CHUNK = args.batch, args.seq, args.scan, args.loss_chunk
    from dsvl_jax.parallel.host_memory import allocator, retain_freed_memory

    # as the train CLI does (no per-step page faults); applies to torch too
    retained = retain_freed_memory()
    import jax

    toks = BATCH * SEQ
    res: dict = {
        "config": "small",
        "batch": BATCH,
        "seq_len": SEQ,
        "scan_layers": SCAN,
        "loss_chunk": LOSS_CHUNK,
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "host_allocator": allocator() + ("+retain" if retained else ""),
    }
    from dsvl_jax.train.metrics import peak_flops_per_device

    for dtype, tag in (("float32", ""), ("bfloat16", "_bf16")):
        t, measured, flops, nparams = jax_step_time(dtype, args.steps)
        peak = peak_flops_per_device() or measured
        res[f"jax{tag}_step_s"] = round(t, 4)
        res[f"jax{tag}_tokens_per_s"] = round(toks / t, 1)
        res[f"peak{tag}_flops"] = round(peak / 1e9, 1) * 1e9
        res[f"mfu{tag}"] = round(flops / t / peak, 4)
        res["flops_per_step"] = flops
        res["jax_params"] = nparams
        print(
            f"jax {dtype}: {t * 1e3:.0f} ms/step, {toks / t:.0f} tokens/s, MFU {flops / t / peak:.1%} "
            f"of {peak / 1e9:.0f} GFLOP/s",
            flush=True,
        )
    if not args.skip_torch:
        for bf16, tag in ((False, ""), (True, "_bf16")):
            t, nparams = torch_step_time(bf16, args.steps)
            res[f"torch{tag}_step_s"] = round(t, 4)
            res[f"torch{tag}_tokens_per_s"] = round(toks / t, 1)
            res[f"ratio{tag}"] = round(
                res[f"jax{tag}_tokens_per_s"] / res[f"torch{tag}_tokens_per_s"], 3
            )
            res[f"torch{tag}_mfu"] = round(res["flops_per_step"] / t / res[f"peak{tag}_flops"], 4)
            res["torch_params"] = nparams
            print(
                f"torch {'bf16 autocast' if bf16 else 'f32'}: {t * 1e3:.0f} ms/step, {toks / t:.0f} tokens/s",
                flush=True,
            )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
