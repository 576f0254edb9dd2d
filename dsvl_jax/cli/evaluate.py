"""Score a trained model on a VQA or multiple-choice benchmark file.

--data: VQA-style JSONL ({id, image, question, answer(s), category?}), multiple-choice JSONL (+ options)
or an MMBench/SEED-style TSV (index, question, A, B, C, D, answer, category, image as base64 or path);
see dsvl_jax/eval/items.py. Image paths resolve under --images (default: the file's folder).
--checkpoint is any model folder (run dir, step checkpoint, params checkpoint, HF folder); its stored
tokenizer is used unless --tokenizer names another. Greedy answers up to EOS, batched with fixed
shapes. Prints a per-category table (exact match, relaxed accuracy, multiple-choice accuracy,
unparsed answers), the skipped items with their reasons, and as the last line one JSON object
{report, n_items, n_scored, skipped, metrics, seconds}; --out writes the full report with every
prediction.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import flags

from dsvl_jax.cli import command

FLAGS = flags.FLAGS
EXAMPLE = "python -m dsvl_jax.evaluate --checkpoint=runs/demo/stage3 --data=charts.jsonl --out=report.json"


def define_flags() -> None:
    flags.DEFINE_string(
        "checkpoint",
        None,
        "Model folder: run dir, step checkpoint, params checkpoint or HF folder.",
    )
    flags.DEFINE_string(
        "data",
        None,
        "Benchmark file: .jsonl / .json (VQA or multiple choice) or .tsv (MMBench-style).",
    )
    flags.DEFINE_string(
        "tokenizer",
        None,
        "Tokenizer (.model, tokenizer.json or its folder); default: the one "
        "stored with --checkpoint.",
    )
    flags.DEFINE_string(
        "images", None, "Folder that image paths in --data resolve under (default: its folder)."
    )
    flags.DEFINE_string("out", None, "Write the full report JSON here.")
    flags.DEFINE_integer("batch", 8, "Items per generation batch.", lower_bound=1)
    flags.DEFINE_integer("max_new_tokens", 16, "Most tokens generated per answer.", lower_bound=1)
    flags.DEFINE_integer("limit", None, "Evaluate only the first N rows of --data.")
    flags.DEFINE_string(
        "system", "default", "System prompt: 'default' = DeepSeek-VL's, '' = none, else the text."
    )
    flags.DEFINE_enum(
        "dtype",
        None,
        ["float32", "bfloat16", "float16"],
        "Compute dtype override (default: the checkpoint's model.dtype).",
    )
    flags.DEFINE_string(
        "open_suffix",
        "",
        "Appended (on a new line) to open questions, e.g. 'Answer the "
        "question using a single word or phrase.'",
    )


def main(argv: list[str]) -> None:
    command.check_usage(argv, required=("checkpoint", "data"), paths=("checkpoint", "data"))
    command.setup_device_process()
    from dsvl_jax.eval import evaluate_model, format_summary, load_items, write_report
    from dsvl_jax.infer import Engine

    t0 = time.time()
    # the data first: a wrong file fails fast
    data = load_items(FLAGS.data, FLAGS.images, FLAGS.limit)
    if not data.items:
        raise ValueError(
            f"{FLAGS.data}: no usable items ({len(data.skipped)} skipped: "
            + "; ".join(str(s) for s in data.skipped[:5])
            + ")"
        )
    engine = Engine.load(
        FLAGS.checkpoint,
        FLAGS.tokenizer,
        dtype=FLAGS.dtype,
        batch_size=FLAGS.batch,
        system_prompt=FLAGS.system,
    )

    def progress(done: int, total: int) -> None:
        print(f"evaluate: {done}/{total}", file=sys.stderr, flush=True)

    report = evaluate_model(
        engine,
        data,
        max_new_tokens=FLAGS.max_new_tokens,
        open_suffix=FLAGS.open_suffix,
        progress=progress,
        settings={"checkpoint": os.path.abspath(FLAGS.checkpoint)},
    )
    report["seconds"] = round(time.time() - t0, 2)
    if FLAGS.out:
        write_report(report, FLAGS.out)
    print(format_summary(report))
    print(
        json.dumps(
            {
                "report": FLAGS.out,
                "n_items": report["n_items"],
                "n_scored": report["n_scored"],
                "skipped": len(report["skipped"]),
                "metrics": report["metrics"],
                "seconds": report["seconds"],
            }
        ),
        flush=True,
    )


def entry() -> None:
    command.run("evaluate", main, doc=__doc__, example=EXAMPLE, define_flags=define_flags)
