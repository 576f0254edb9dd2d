"""`data prepare` throughput: records/s and images/s with 1 and N worker processes and the Beam
DirectRunner, on the same corpus.

  python benchmarks/prepare.py [--records 1600] [--shards 8] [--side 384] [--workers 2]

The corpus: `--shards` caption JSONL files (one file = one unit of work, as real corpora ship) of
`--records` records in all, each with its own JPEG of `--side` px (noise + shapes, ~q90: an
img2dataset-like payload), written once to a temp dir. Each run prepares it from scratch into a new
output dir (ArrayRecord shards, tfds metadata, the skip report) through `builders.prepare`, what the
command runs; the time includes spawning workers / building the Beam pipeline. Every record is
checked (image decoded within the pixel cap) and its original bytes stored. The runs must write the
same records (checked: ids in order). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

from dsvl_jax.data import builders, shards


def make_corpus(root: str, records: int, n_shards: int, side: int) -> int:
    """Caption shards + JPEGs under root; -> total image bytes."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    total = 0
    per = -(-records // n_shards)
    for s in range(n_shards):
        lines = []
        for k in range(s * per, min(records, (s + 1) * per)):
            im = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
            d = ImageDraw.Draw(im)
            d.rectangle([side // 8, side // 8, side // 2, side // 3], fill=(k % 256, 40, 200))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
            data = buf.getvalue()
            total += len(data)
            with open(os.path.join(root, "img", f"{k}.jpg"), "wb") as f:
                f.write(data)
            lines.append(
                json.dumps({"id": f"r{k}", "image": f"img/{k}.jpg", "caption": f"item {k}"})
            )
        with open(os.path.join(root, f"part-{s:03d}.jsonl"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return total


def run(corpus: str, out: str, **kw) -> tuple[dict, list[str]]:
    t0 = time.perf_counter()
    res = builders.prepare("captions", corpus, out, **kw)
    dt = time.perf_counter() - t0
    src = shards.open_source(res.dataset_dir)
    ids = [src[i].id for i in range(len(src))]
    fig = {
        "seconds": round(dt, 2),
        "records_per_s": round(res.report["written"] / dt, 1),
        "images_per_s": round(res.report["images_written"] / dt, 1),
        "written": res.report["written"],
    }
    return fig, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1600)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--side", type=int, default=384)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus")
        nbytes = make_corpus(corpus, args.records, args.shards, args.side)
        runs = {
            "workers_1": dict(),
            f"workers_{args.workers}": dict(workers=args.workers),
            "beam_direct": dict(runner="beam"),
            f"beam_direct_{args.workers}proc": dict(
                runner="beam",
                beam_options=f"--direct_num_workers={args.workers} "
                "--direct_running_mode=multi_processing",
            ),
        }
        res, ref = {}, None
        for name, kw in runs.items():
            fig, ids = run(corpus, os.path.join(tmp, name), **kw)
            ref = ref or ids
            fig["same_records_as_workers_1"] = ids == ref
            res[name] = fig
            print(f"{name}: {fig}", flush=True)
    base = res["workers_1"]["records_per_s"]
    print(
        json.dumps(
            {
                "benchmark": "prepare",
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                },
                "corpus": {
                    "records": args.records,
                    "shards": args.shards,
                    "side_px": args.side,
                    "mean_image_kb": round(nbytes / args.records / 1024, 1),
                },
                "runs": res,
                "speedup_vs_1_worker": {
                    k: round(v["records_per_s"] / base, 2) for k, v in res.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
