"""Modality-group batches vs mixed batches at stage-2 geometry: what skipping the towers on text batches buys.

  python benchmarks/modality_groups.py [--size both|1.3b|7b] [--steps 3] [--batch 2]

Stage 2 mixes language:multimodal 7:3 by samples. Mixed batches (`data.one_modality_per_batch=False`)
carry `pixels` [B, 4, 384, 384, 3] (7B also `high_pixels` [B, 4, 1024, 1024, 3]) for every row, so the
towers run on all B*4 slots, including the zero slots of text rows. With modality groups (the paper's
"modality group training", `one_modality_per_batch=True`) 70% of the batches are all text and carry no
pixels (the model skips the towers) and 30% are all multimodal (towers on all slots, as in a mixed batch).

Fairness: every step, in both modes, is B rows x 4096 packed tokens with the same 4 image slots per row,
so both modes process the same rows and tokens, and over any 10 steps the same 3 : 7 split of
multimodal : text rows (mixed: ~30% multimodal rows in each batch; grouped: 3 all-multimodal batches and 7
all-text ones). A multimodal batch and a mixed batch have the same tensors and run the same compiled
program (the image-token content of the rows changes nothing in the compute), so
    speedup = tokens/s grouped / tokens/s mixed = t_mixed / (0.7 * t_text + 0.3 * t_mm).
The saving is the tower (+ adaptor) compute on the slots of text rows; nothing else differs. Not modelled:
loader, host-to-device transfer of the pixel arrays, pipeline-stage imbalance, the modality warm-up.

1. Measured (this machine, XLA:CPU, float32): the real train step (`CompiledStep`, stage-2 trainable set
   llm + adaptor (+ sam_adaptor), remat "full" as the stage-2 configs, loss head chunked) at stage-2
   geometry: images 384 px (+ 1024 px SAM) with patch 16 (576 SigLIP tokens, a 64x64 SAM grid, window 14),
   4096 tokens, 4 image slots per row; widths, depths and vocabulary shrunk (SHRINK below) so a step
   takes seconds on 2 cores. Text, multimodal and mixed batches (max(1, round(0.3 B)) multimodal rows,
   text rows with zero pixels; at B = 2 that is 1 of 2, which changes no compute) are timed interleaved
   (a shared VM drifts); multimodal and mixed times are pooled into one towers-on time.
   `speedup`: median over rounds of the speedup within a round (text, multimodal, mixed back to back, so
   slow drift in other load cancels); `speedup_pooled` from the medians, `speedup_per_kind` keeps
   multimodal and mixed apart, `speedup_min` uses the fastest samples (the least disturbed). Shrinking
   changes the tower share (attention grows relative to matmuls at small widths), so the figure to carry
   over is measured vs the FLOP prediction for the same shrunk model (`predicted_speedup_hw`), not the
   speedup itself.
2. Projected (real widths): analytic FLOPs (train/metrics.py: forward x (1 + input grad + weight grad),
   frozen towers forward only) for the real 1.3B and 7B at stage-2 global batch (1024 / 2304 x 4096,
   4 slots per row) for a text batch (no towers), a multimodal batch and a mixed batch (towers on all
   B*4 slots; = multimodal). `*_model` counts model FLOPs; `*_hw` adds the recompute of the LLM layers
   that remat "full" costs in the backward (stage-2 configs), which is what step time tracks.
   Speedup assumes step time proportional to FLOPs (equal MFU for the three kinds of batch).
`tower_share` = 1 - text / mixed FLOPs; the paper's +20% would need tower_share = (1 - 1/1.2) / 0.7 = 0.24.
Last line: one JSON object (cpu_shrunk per size, projected per size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

SEQ = 4096  # stage-2 seq_len
SLOTS = 4  # stage-2 train.images_per_sample
TEXT_SHARE = 0.7  # stage-2 language share by samples (data.text_ratio)
STAGE2_BATCH = {"1.3b": 1024, "7b": 2304}  # experiments/stage2_pretrain.py PAPER batch_size
PAPER_SPEEDUP = 1.2
LOSS_CHUNK = 4096
# Shrunk models for CPU: image sizes, patch sizes, SAM window and the 4096-token sequence stay real; widths
# / 16 (head dims kept: SigLIP 64, LLM 128; SAM 48), one block per tower and LLM (SAM: one windowed + one
# global), vocabulary 2048. What this keeps is the shape of the work (576 + 4096 tokens per image, 8 slots
# per 2-row batch, 4096-token causal attention), not the real tower:LLM FLOP ratio; part 2 has that.
SHRINK = {
    "1.3b": dict(
        siglip=dict(width=64, heads=1, mlp_dim=256, depth=1),
        llm=dict(hidden=128, heads=1, kv_heads=1, head_dim=128, mlp_dim=352, layers=1),
    ),
    "7b": dict(
        siglip=dict(width=64, heads=1, mlp_dim=256, depth=1),
        sam=dict(width=48, heads=1, mlp_dim=192, depth=2, global_attn_indexes=(1,), out_chans=16),
        llm=dict(hidden=256, heads=2, kv_heads=2, head_dim=128, mlp_dim=704, layers=1),
    ),
}
VOCAB = 2048


def shrunk_model_dict(size: str):
    """The real `size` ConfigDict with SHRINK applied (image geometry untouched)."""
    from dsvl_jax.model.sizes import model_config_dict

    d = model_config_dict(size)
    for section, fields in SHRINK[size].items():
        for k, v in fields.items():
            d[section][k] = v
    d.llm.vocab_size = VOCAB
    d.image_token_id = VOCAB - 1
    d.remat_policy = "full"
    d.dtype = "float32"
    return d


def batch_flops(cfg, trainable, batch: int, remat: bool) -> dict[str, float]:
    """FLOPs of one step per batch kind: text (no pixels), multimodal and mixed (both: towers on all slots)."""
    from dsvl_jax.train.metrics import forward_flops, step_flops

    extra = 0.0
    if (
        remat
    ):  # remat "full" re-runs the LLM blocks' forward in the backward (not the head, chunked apart)
        llm_fwd = forward_flops(cfg, batch, SEQ, 0)["llm"]
        extra = llm_fwd - 2.0 * batch * SEQ * cfg.llm.hidden * cfg.llm.vocab_size
    mm = step_flops(cfg, trainable, batch, SEQ, SLOTS) + extra
    return {
        "text": step_flops(cfg, trainable, batch, SEQ, 0) + extra,
        "multimodal": mm,
        "mixed": mm,
    }


def grouped_speedup(t_text: float, t_mm: float, t_mixed: float) -> float:
    """tokens/s with modality groups over tokens/s with mixed batches, at equal rows per step."""
    return t_mixed / (TEXT_SHARE * t_text + (1 - TEXT_SHARE) * t_mm)


def make_batches(cfg, batch: int) -> dict[str, dict[str, np.ndarray]]:
    """text: no image tokens and no pixel arrays; multimodal: 4 images per row; mixed: round(0.3 B)
    multimodal rows (at least 1), the others text rows whose image slots are zeros (as the loader pads)."""
    from dsvl_jax.data.synthetic import synthetic_batch

    mm = synthetic_batch(cfg, batch, SEQ, SLOTS, seed=0)
    text = synthetic_batch(cfg, batch, SEQ, 0, seed=1)
    text = {k: v for k, v in text.items() if k not in ("pixels", "high_pixels")}
    n_mm = max(1, round((1 - TEXT_SHARE) * batch))
    mixed = {}
    for k, v in mm.items():
        fill = text[k] if k in text else np.zeros_like(v)
        mixed[k] = np.concatenate([v[:n_mm], fill[n_mm:]])
    return {"text": text, "multimodal": mm, "mixed": mixed}


def measure(size: str, batch: int, steps: int) -> dict:
    """Median step seconds of text / multimodal / mixed batches on the shrunk model, plus predictions."""
    import jax

    from dsvl_jax.config import base_config
    from dsvl_jax.model.config import model_config_from_dict
    from dsvl_jax.model.params import count_params
    from dsvl_jax.parallel import build_mesh, rules_from_config, shard_host_batch
    from dsvl_jax.train.optim import STAGE_TRAINABLE
    from dsvl_jax.train.state import StateFactory
    from dsvl_jax.train.step import CompiledStep

    c = base_config(size)
    c.model = shrunk_model_dict(size)
    c.train.trainable = STAGE_TRAINABLE[2]
    c.train.warmup_steps = 0
    c.train.loss_chunk = LOSS_CHUNK
    c.train.microbatches = 1
    c.parallel.ici = dict(data=1, fsdp=1, tensor=1)
    cfg = model_config_from_dict(c.model)
    f = StateFactory(
        cfg, c.train, build_mesh(c.parallel, jax.devices()[:1]), rules_from_config(None)
    )
    state = f.init(jax.random.key(0))
    step = CompiledStep(f)
    kinds = make_batches(cfg, batch)
    dev = {k: shard_host_batch(b, f.mesh, f.rules) for k, b in kinds.items()}
    compile_s = {}
    for (
        k,
        b,
    ) in dev.items():  # compile (text, multimodal) + one warm step each; mixed reuses multimodal's
        t = time.perf_counter()
        state, m = step(state, b)
        jax.block_until_ready(m)
        compile_s[k] = time.perf_counter() - t
    times: dict[str, list[float]] = {k: [] for k in dev}
    for _ in range(steps):  # interleaved, so drift on a shared machine hits every kind alike
        for k, b in dev.items():
            t = time.perf_counter()
            state, m = step(state, b)
            jax.block_until_ready(m)
            times[k].append(time.perf_counter() - t)
    assert step.compiles == 2, f"expected 2 compiles (text, multimodal=mixed), got {step.compiles}"
    med = {k: float(np.median(v)) for k, v in times.items()}
    # multimodal and mixed batches run one compiled program on same-shaped arrays: pool their samples
    # into one "towers on" time (halves the noise of a shared VM), the per-kind medians are kept beside
    t_on = float(np.median(times["multimodal"] + times["mixed"]))
    t_on_min = min(times["multimodal"] + times["mixed"])
    # per round (text, multimodal, mixed back to back), so slow drift in the machine's load cancels
    rounds = [
        grouped_speedup(tt, (tm + tx) / 2, (tm + tx) / 2)
        for tt, tm, tx in zip(times["text"], times["multimodal"], times["mixed"])
    ]
    trainable = tuple(c.train.trainable)
    fl_hw = batch_flops(cfg, trainable, batch, remat=True)
    fl_model = batch_flops(cfg, trainable, batch, remat=False)
    res = {
        "batch": batch,
        "seq_len": SEQ,
        "image_slots": SLOTS,
        "multimodal_rows_in_mixed": int(max(1, round((1 - TEXT_SHARE) * batch))),
        "params": count_params(state.params),
        "model": SHRINK[size] | {"vocab": VOCAB, "remat": "full", "dtype": "float32"},
        "steps": steps,
        "first_step_s": {k: round(v, 2) for k, v in compile_s.items()},
        "step_s": {k: round(v, 4) for k, v in med.items()},
        "step_s_min": {k: round(min(v), 4) for k, v in times.items()},
        "tokens_per_s": {k: round(batch * SEQ / v, 1) for k, v in med.items()},
        "tower_share_measured": round(1 - med["text"] / t_on, 4),
        "tower_share_predicted_hw": round(1 - fl_hw["text"] / fl_hw["mixed"], 4),
        "speedup": round(float(np.median(rounds)), 4),
        "speedup_pooled": round(grouped_speedup(med["text"], t_on, t_on), 4),
        "speedup_per_kind": round(grouped_speedup(med["text"], med["multimodal"], med["mixed"]), 4),
        "speedup_min": round(grouped_speedup(min(times["text"]), t_on_min, t_on_min), 4),
        "predicted_speedup_hw": round(
            grouped_speedup(fl_hw["text"], fl_hw["multimodal"], fl_hw["mixed"]), 4
        ),
        "predicted_speedup_model": round(
            grouped_speedup(fl_model["text"], fl_model["multimodal"], fl_model["mixed"]), 4
        ),
        "gflop_per_s_hw": {k: round(fl_hw[k] / med[k] / 1e9, 1) for k in med},
    }
    print(
        f"{size} shrunk, {batch} x {SEQ}: text {med['text']:.3f} s, multimodal {med['multimodal']:.3f} s, "
        f"mixed {med['mixed']:.3f} s (pooled {t_on:.3f} s) -> grouped speedup {res['speedup']:.3f} "
        f"(FLOPs predict {res['predicted_speedup_hw']:.3f})",
        flush=True,
    )
    return res


def project(size: str) -> dict:
    """Real-width FLOPs per stage-2 step by batch kind, and the grouped-vs-mixed speedup they imply."""
    from dsvl_jax.model.sizes import model_config
    from dsvl_jax.train.metrics import forward_flops
    from dsvl_jax.train.optim import STAGE_TRAINABLE

    cfg, b = model_config(size), STAGE2_BATCH[size]
    trainable = STAGE_TRAINABLE[2]
    out: dict = {"global_batch": b, "seq_len": SEQ, "image_slots": b * SLOTS}
    for tag, remat in (("model", False), ("hw", True)):
        fl = batch_flops(cfg, trainable, b, remat)
        out[f"pflop_per_step_{tag}"] = {k: round(v / 1e15, 3) for k, v in fl.items()}
        out[f"tower_share_{tag}"] = round(1 - fl["text"] / fl["mixed"], 4)
        out[f"speedup_{tag}"] = round(grouped_speedup(fl["text"], fl["multimodal"], fl["mixed"]), 4)
    fwd = forward_flops(cfg, b, SEQ, SLOTS)
    out["vision_fwd_pflop_by_part"] = {k: round(v / 1e15, 3) for k, v in fwd.items() if k != "llm"}
    out["vision_fwd_tflop_per_image"] = round(
        sum(v for k, v in fwd.items() if k != "llm") / (b * SLOTS) / 1e12, 3
    )
    print(
        f"{size} projected, {b} x {SEQ}: tower share {out['tower_share_hw']:.1%} of a mixed step -> "
        f"grouped speedup {out['speedup_hw']:.3f} (model FLOPs: {out['speedup_model']:.3f})",
        flush=True,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=("1.3b", "7b", "both"), default="both")
    ap.add_argument(
        "--steps", type=int, default=3, help="timed steps per batch kind (after 1 warm)"
    )
    ap.add_argument("--batch", type=int, default=2, help="rows per CPU step (>= 2: a mixed batch)")
    args = ap.parse_args()
    if args.batch < 2:
        ap.error("--batch must be >= 2 so a mixed batch holds a multimodal and a text row")
    sizes = ("1.3b", "7b") if args.size == "both" else (args.size,)
    from dsvl_jax.parallel.host_memory import retain_freed_memory

    retain_freed_memory()
    import jax

    res: dict = {
        "benchmark": "modality_groups",
        "machine": {
            "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind,
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
        },
        "text_share": TEXT_SHARE,
        "paper_speedup": PAPER_SPEEDUP,
        "tower_share_needed_for_paper": round((1 - 1 / PAPER_SPEEDUP) / TEXT_SHARE, 4),
        "cpu_shrunk": {},
        "projected": {},
    }
    for size in sizes:
        res["projected"][size] = project(size)
    for size in sizes:
        res["cpu_shrunk"][size] = measure(size, args.batch, args.steps)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
