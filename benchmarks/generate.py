"""Generation throughput: dsvl_jax (model/decode.py, KV cache, one jitted program) vs HF `generate`
(transformers, torch CPU) on the same random weights, plus a check that the greedy tokens agree.

  python benchmarks/generate.py [--configs tiny,small] [--batch 4] [--prompt 64] [--new 64] [--reps 3]

Configs: `tiny` (model/sizes.py, 16 image tokens) and `small` (benchmarks/train_step.py SMALL: LLM 512
wide x 8 layers, vocab 32000; SigLIP 256 x 4 @128 px, 64 image tokens; SAM 128 x 4 @256 px). Each row:
`--prompt` text tokens (row r has 2r fewer, left-padded) around one image, greedy, `--new` new tokens
(no EOS: every row decodes all of them). Weights: random with fan-in scaling (so logits have clear
maxima), exported with interop.hf_export.save_hf and loaded with `from_pretrained`; float32 in both.
tokens/s = batch x new tokens / wall time of one generate call (prefill included, compile excluded);
decode tokens/s leaves the prefill out (time of a max_new_tokens=1 call subtracted).
Threads: `--threads 1` (default) runs both single-threaded (torch.set_num_threads, XLA without the
multi-threaded Eigen pool). On a shared, oversubscribed box torch's spinning OpenMP threads slow HF
down ~10x at 2 threads, which would flatter JAX; `--threads 0` keeps each library's default.
Last line: one JSON object, per config: jax_tokens_per_s, hf_tokens_per_s, ratio, tokens_match, ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # train_step.SMALL; dsvl_jax without installing it

HEAD_AXES = {"heads", "kv_heads", "vit_heads", "qkv"}


def model_cfg(name: str, scan: bool):
    from dsvl_jax.model.config import model_config_from_dict
    from dsvl_jax.model.sizes import model_config

    if name == "small":
        from train_step import SMALL

        cfg = model_config_from_dict(SMALL)
    else:
        cfg = model_config(name)
    return dataclasses.replace(cfg, scan_layers=scan)


def random_params(cfg, seed: int = 0):
    """Host-drawn weights: matrices N(0, 1/fan_in) (fan-in read from the logical axis names), norms ~1."""
    import jax
    import jax.numpy as jnp

    from dsvl_jax.model import params as P

    rng = np.random.default_rng(seed)
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    names = P.flatten(jax.tree.map(tuple, P.logical_axes(cfg), is_leaf=is_spec))
    out = {}
    for path, a in P.flatten(P.abstract_params(cfg)).items():
        ax, shape = list(names[path]), a.shape
        if path.endswith("alpha"):
            x = np.full(shape, 0.7)
        elif path.endswith("scale"):
            x = 1 + 0.1 * rng.normal(size=shape)
        elif path.endswith("embedding"):
            x = rng.normal(size=shape)
        elif path.endswith("kernel"):
            layer = 1 if ax[0] == "layers" else 0
            n_out = 1
            if ax[-1] == "head_dim":  # q/k/v kernels [..., in, (qkv,) heads, head_dim]
                while len(ax) - n_out - 1 > layer and ax[-n_out - 1] in HEAD_AXES:
                    n_out += 1
            x = rng.normal(size=shape) / math.sqrt(math.prod(shape[layer : len(shape) - n_out]))
        else:  # biases, position tables
            x = 0.05 * rng.normal(size=shape)
        out[path] = jnp.asarray(x, a.dtype)
    return P.unflatten(out)


def prompts(cfg, batch: int, text: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Left-padded rows: text/2 tokens, the image's tokens, the rest of the text (row r: 2r tokens fewer)."""
    rng = np.random.default_rng(seed)
    n = cfg.num_image_tokens
    t = text + n
    ids = np.zeros((batch, t), np.int64)
    mask = np.zeros((batch, t), np.int64)
    for r in range(batch):
        k = text - 2 * r
        row = rng.integers(5, cfg.llm.vocab_size, k + n)
        row[row == cfg.image_token_id] = 5
        row[k // 2 : k // 2 + n] = cfg.image_token_id
        ids[r, t - len(row) :], mask[r, t - len(row) :] = row, 1
    s, out = cfg.siglip.image_size, {"input_ids": ids, "attention_mask": mask}
    out["pixel_values"] = rng.uniform(-1, 1, (batch, 3, s, s)).astype(np.float32)
    if cfg.hybrid:
        h = cfg.sam.image_size
        out["high_res_pixel_values"] = rng.normal(size=(batch, 3, h, h)).astype(np.float32)
    return out


def timed(fn, reps: int) -> tuple[float, float, object]:
    """(first call seconds, median of `reps` later calls, last result)."""
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return first, float(np.median(times)), out


def run_jax(cfg, params, b: dict, new: int, reps: int):
    import jax.numpy as jnp

    from dsvl_jax.model import decode

    px = jnp.asarray(b["pixel_values"].transpose(0, 2, 3, 1))[:, None]  # per sample [B, 1, S, S, 3]
    hp = b.get("high_res_pixel_values")
    hp = None if hp is None else jnp.asarray(hp.transpose(0, 2, 3, 1))[:, None]

    def gen(n):
        return lambda: decode.generate(
            cfg, params, b["input_ids"], b["attention_mask"], px, hp, max_new_tokens=n
        )

    first, t, out = timed(gen(new), reps)
    _, t1, _ = timed(gen(1), reps)
    return {"compile_s": round(first - t, 2), "s": t, "prefill_s": t1}, out


def run_hf(cfg, params, b: dict, new: int, reps: int):
    import torch
    from transformers import (
        DeepseekVLForConditionalGeneration,
        DeepseekVLHybridForConditionalGeneration,
    )

    from dsvl_jax.interop.hf_export import save_hf

    cls = (
        DeepseekVLHybridForConditionalGeneration
        if cfg.hybrid
        else DeepseekVLForConditionalGeneration
    )
    with tempfile.TemporaryDirectory() as d:
        save_hf(d, cfg, params)
        model = cls.from_pretrained(d).eval()
    ins = {k: torch.tensor(v) for k, v in b.items()}

    def gen(n):
        def f():
            with torch.no_grad():
                return model.generate(
                    **ins,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=0,
                )

        return f

    first, t, out = timed(gen(new), reps)
    _, t1, _ = timed(gen(1), reps)
    return {"warmup_s": round(first, 2), "s": t, "prefill_s": t1}, out[
        :, b["input_ids"].shape[1] :
    ].numpy()


def bench(name: str, args) -> dict:
    cfg = model_cfg(name, args.scan)
    params = random_params(cfg, 0)
    b = prompts(cfg, args.batch, args.prompt)
    toks = args.batch * args.new
    res: dict = {
        "prompt_tokens": int(b["input_ids"].shape[1]),
        "image_tokens": cfg.num_image_tokens,
    }
    j, jout = run_jax(cfg, params, b, args.new, args.reps)
    res.update(
        jax_s=round(j["s"], 4),
        jax_compile_s=j["compile_s"],
        jax_prefill_s=round(j["prefill_s"], 4),
        jax_tokens_per_s=round(toks / j["s"], 1),
        jax_decode_tokens_per_s=round(
            args.batch * (args.new - 1) / max(j["s"] - j["prefill_s"], 1e-9), 1
        ),
    )
    print(
        f"[{name}] jax: {j['s'] * 1e3:.0f} ms per generate ({res['jax_tokens_per_s']} tokens/s; decode only "
        f"{res['jax_decode_tokens_per_s']}), prefill {j['prefill_s'] * 1e3:.0f} ms, compile {j['compile_s']} s",
        flush=True,
    )
    if args.skip_hf:
        return res
    h, hout = run_hf(cfg, params, b, args.new, args.reps)
    agree = jout == hout
    prefix = [int(np.argmin(r)) if not r.all() else len(r) for r in agree]
    res.update(
        hf_s=round(h["s"], 4),
        hf_prefill_s=round(h["prefill_s"], 4),
        hf_tokens_per_s=round(toks / h["s"], 1),
        hf_decode_tokens_per_s=round(
            args.batch * (args.new - 1) / max(h["s"] - h["prefill_s"], 1e-9), 1
        ),
        ratio=round(h["s"] / j["s"], 3),
        tokens_match=bool(agree.all()),
        matching_prefix=prefix,
        distinct_tokens=len(np.unique(jout)),
    )
    print(
        f"[{name}] hf:  {h['s'] * 1e3:.0f} ms per generate ({res['hf_tokens_per_s']} tokens/s; decode only "
        f"{res['hf_decode_tokens_per_s']}), prefill {h['prefill_s'] * 1e3:.0f} ms; jax/hf speed {res['ratio']}x; "
        f"tokens match: {res['tokens_match']} (matching prefix per row {prefix})",
        flush=True,
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument(
        "--prompt", type=int, default=64, help="text tokens per prompt (plus the image's tokens)"
    )
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--scan",
        action="store_true",
        help="scan over layers (default: unrolled, faster on XLA:CPU)",
    )
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument(
        "--threads", type=int, default=1, help="1: both single-threaded; 0: library defaults"
    )
    args = ap.parse_args()
    if args.threads == 1:  # before jax is imported
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
            "intra_op_parallelism_threads=1"
        ).strip()
    if args.threads > 1:
        raise SystemExit("--threads: 1 (both single-threaded) or 0 (library defaults)")
    import jax
    import torch

    if args.threads == 1:
        torch.set_num_threads(1)
    out: dict = {
        "batch": args.batch,
        "prompt_text_tokens": args.prompt,
        "new_tokens": args.new,
        "dtype": "float32",
        "scan_layers": args.scan,
        "backend": jax.default_backend(),
        "threads": args.threads or "default",
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    for name in args.configs.split(","):
        out[name] = bench(name, args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
