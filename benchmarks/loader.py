"""Input-pipeline throughput: the full dual-resolution grain pipeline vs the HF image processor.

  python benchmarks/loader.py [--n 48] [--image_size 768] [--seconds 20] [--threads 2] [--workers 0]

Corpus: the embedded generators (screenshot, chart, pdf, ocr) at --image_size written as ArrayRecord
shards, a SentencePiece tokenizer trained on them. Ours: read shards -> decode -> 1024 px (SAM) and
384 px (SigLIP) views exactly as HF's DeepseekVLHybridImageProcessor -> chat template + tokenize ->
pack into [8, 4096] rows with 4 image slots -> numpy batches (uint8 views; normalisation runs on
device in the train step). HF: PIL decode + `DeepseekVLHybridImageProcessor` (the converter's
settings) on the same encoded images, one at a time, as its data collators do.
Then the tiny model trains on the same kind of data through `dsvl_jax.train.loop.train` and its
`data_wait_fraction` (time the loop spent waiting for batches / wall time) is reported.
Last line: one JSON object (samples_per_s, hf_samples_per_s, ratio, data_wait_fraction, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

KINDS = ("screenshot", "chart", "pdf", "ocr")


def make_corpus(root: str, n: int, image_size: int) -> tuple[dict, str]:
    from dsvl_jax.data import builders

    dirs = builders.generate_corpus(KINDS + ("text",), root, n=n, seed=0, image_size=image_size)
    tok = os.path.join(root, "tokenizer.model")
    builders.train_tokenizer(dirs.values(), 1024, tok)
    return dirs, tok


def ours(dirs: dict, tok: str, seconds: float, threads: int, workers: int) -> dict:
    from dsvl_jax.config import base_config
    from dsvl_jax.data import pipeline, shards
    from dsvl_jax.data.mixture import MULTIMODAL

    c = base_config("7b")
    c.model.image_token_id = 4
    c.train.batch_size, c.train.seq_len, c.train.images_per_sample = 8, 4096, 4
    c.data.tokenizer, c.data.num_threads, c.data.workers, c.data.prefetch = (
        tok,
        threads,
        workers,
        16,
    )
    c.data.text_ratio = 0.0
    specs = [
        pipeline.SourceSpec(k, shards.open_source(d), 1.0, MULTIMODAL)
        for k, d in dirs.items()
        if k != "text"
    ]
    it = iter(pipeline.build(c, sources=specs))
    next(it)  # warm-up: threads started, first shards opened
    used0 = sum(s["used"] for s in pipeline.iterator_stats(it).values())
    t0, batches = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        b = next(it)
        batches += 1
    dt = time.perf_counter() - t0
    used = sum(s["used"] for s in pipeline.iterator_stats(it).values()) - used0
    return {
        "samples_per_s": used / dt,
        "batches_per_s": batches / dt,
        "images_per_batch": float(np.mean((b["ids"] == 4).sum() / 576)),
        "batch_shape": list(b["high_pixels"].shape),
    }


def hf(dirs: dict, seconds: float) -> dict:
    from PIL import Image
    from transformers import DeepseekVLHybridImageProcessor

    from dsvl_jax.data import records, shards
    from dsvl_jax.data.preprocess import CLIP_MEAN, CLIP_STD

    proc = DeepseekVLHybridImageProcessor(
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        high_res_image_mean=CLIP_MEAN,
        high_res_image_std=CLIP_STD,
        resample=Image.Resampling.BILINEAR,
    )
    imgs = [
        ex.images[0]
        for k, d in dirs.items()
        if k != "text"
        for src in [shards.open_source(d)]
        for ex in (src[i] for i in range(len(src)))
    ]
    proc(records.decode_image(imgs[0]), return_tensors="np")
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        out = proc(records.decode_image(imgs[n % len(imgs)]), return_tensors="np")
        n += 1
    dt = time.perf_counter() - t0
    assert out["high_res_pixel_values"].shape[-1] == 1024
    return {"hf_samples_per_s": n / dt, "hf_class": type(proc).__name__}


def train_wait(dirs: dict, tok: str, workdir: str, steps: int) -> dict:
    """The tiny model trained on a corpus at its scale: share of the loop's wall time spent waiting for data.

    On CPU the loader and the step share the same cores, so this is the hard case; on accelerator hosts
    the step does not compete with the loader threads."""
    import ml_collections

    from dsvl_jax.config import base_config
    from dsvl_jax.data.mixture import MULTIMODAL, TEXT
    from dsvl_jax.train.logger import read_metrics
    from dsvl_jax.train.loop import train

    c = base_config("tiny")
    c.model.llm.vocab_size, c.model.image_token_id = 1024, 4
    c.train.batch_size, c.train.seq_len, c.train.images_per_sample, c.train.steps = 8, 256, 2, steps
    c.train.trainable = ("adaptor", "sam_adaptor", "llm")
    c.data.tokenizer, c.data.system_prompt = tok, ""
    c.checkpoint.every_steps, c.log.every_steps, c.log.progress = steps, 10, False
    c.data.sources = ml_collections.ConfigDict(
        {
            k: {"path": d, "weight": 1.0, "group": TEXT if k == "text" else MULTIMODAL}
            for k, d in dirs.items()
        }
    )
    train(c, workdir)
    recs = [
        r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "data_wait_fraction" in r
    ][1:]
    return {
        "data_wait_fraction": float(np.mean([r["data_wait_fraction"] for r in recs])),
        "train_step_s": float(np.mean([r["step_s"] for r in recs])),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=48, help="records per corpus kind")
    ap.add_argument("--image_size", type=int, default=768)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2, help="decode threads per source")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--train_steps", type=int, default=60)
    ap.add_argument(
        "--train_image_size", type=int, default=128, help="corpus images for the tiny-model loop"
    )
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        dirs, tok = make_corpus(root, a.n, a.image_size)
        print(
            f"corpus: {len(dirs)} kinds x {a.n} records at {a.image_size} px in {time.perf_counter() - t:.1f} s",
            flush=True,
        )
        res = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "image_size": a.image_size,
            "threads_per_source": a.threads,
            "workers": a.workers,
        }
        res.update(ours(dirs, tok, a.seconds, a.threads, a.workers))
        print(f"dsvl_jax pipeline: {res['samples_per_s']:.1f} samples/s", flush=True)
        res.update(hf(dirs, a.seconds))
        print(f"HF {res['hf_class']}: {res['hf_samples_per_s']:.1f} samples/s", flush=True)
        res["ratio"] = res["samples_per_s"] / res["hf_samples_per_s"]
        small, small_tok = make_corpus(os.path.join(root, "small"), a.n, a.train_image_size)
        res.update(train_wait(small, small_tok, os.path.join(root, "run"), a.train_steps))
        print(
            f"tiny train loop: data_wait_fraction {res['data_wait_fraction']:.3f}, "
            f"step {res['train_step_s'] * 1e3:.0f} ms",
            flush=True,
        )
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))


if __name__ == "__main__":
    main()
