"""`python -m dsvl_jax.evaluate`: score a checkpoint on a VQA or multiple-choice benchmark file.

  python -m dsvl_jax.evaluate --checkpoint DIR --data FILE [--tokenizer PATH] [--images DIR]
      [--out report.json] [--batch 8] [--max_new_tokens 16] [--limit N] [--system TEXT] [--open_suffix TEXT]
      [--dtype bfloat16]

FILE: VQA-style JSONL ({id, image, question, answer(s), category?}), multiple-choice JSONL (+ options)
or an MMBench/SEED-style TSV (index, question, A, B, C, D, answer, category, image as base64 or path);
see dsvl_jax/eval/items.py. Image paths resolve under --images (default: FILE's folder). DIR is a
params checkpoint (model_config.json + params/); its tokenizer (tokenizer.json, tokenizer.model or
tokenizer/) is used unless --tokenizer names another.

Greedy answers up to EOS, batched (--batch rows, fixed shapes). Prints a per-category table (exact
match, relaxed accuracy, multiple-choice accuracy, unparsed answers), the skipped items with their
reasons, and as the last line one JSON object {report, n_items, n_scored, skipped, metrics, seconds};
--out writes the full report (every prediction) as JSON.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from absl import app, flags

from dsvl_jax.cli.common import setup_process

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined when the command runs, not at import: other CLI modules define flags with the same names."""
    flags.DEFINE_string("checkpoint", None, "Params checkpoint dir (model_config.json + params/).")
    flags.DEFINE_string("data", None, "Benchmark file: .jsonl / .json (VQA or multiple choice) or .tsv "
                                      "(MMBench-style).")
    flags.DEFINE_string("tokenizer", None, "Tokenizer (.model, tokenizer.json or its folder); default: the one "
                                           "stored in --checkpoint.")
    flags.DEFINE_string("images", None, "Folder that image paths in --data resolve under (default: its folder).")
    flags.DEFINE_string("out", None, "Write the full report JSON here.")
    flags.DEFINE_integer("batch", 8, "Items per generation batch.")
    flags.DEFINE_integer("max_new_tokens", 16, "Most tokens generated per answer.")
    flags.DEFINE_integer("limit", None, "Evaluate only the first N rows of --data.")
    flags.DEFINE_string("system", None, "System prompt (default: DeepSeek-VL's; '' for none).")
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "Compute dtype override (default: the "
                                                                         "checkpoint's model.dtype).")
    flags.DEFINE_string("open_suffix", "", "Appended (on a new line) to open questions, e.g. 'Answer the question "
                                           "using a single word or phrase.'")


def fail(msg: str) -> None:
    sys.exit(f"evaluate: {msg}")


def _tokenizer(ckpt: str, path: str | None):
    from dsvl_jax.data.tokenizer import load_tokenizer
    from dsvl_jax.data.tokenizer import find_tokenizer
    path = path or find_tokenizer(ckpt)
    if path is None:
        fail(f"no tokenizer in {ckpt} (tokenizer.json, tokenizer.model or tokenizer/); pass --tokenizer")
    return load_tokenizer(path)


def run() -> dict:
    from dsvl_jax.eval import evaluate, format_summary, load_items, model_predictor, write_report

    if not FLAGS.checkpoint or not FLAGS.data:
        raise app.UsageError("--checkpoint and --data are required. usage: python -m dsvl_jax.evaluate "
                             "--checkpoint DIR --data FILE [--tokenizer PATH] [--images DIR] [--out report.json]")
    if FLAGS.batch < 1 or FLAGS.max_new_tokens < 1:
        fail(f"--batch ({FLAGS.batch}) and --max_new_tokens ({FLAGS.max_new_tokens}) must be >= 1")
    if not os.path.isdir(FLAGS.checkpoint):
        fail(f"checkpoint {FLAGS.checkpoint} not found")
    t0 = time.time()
    try:  # the data first: a wrong file fails before the model loads
        data = load_items(FLAGS.data, FLAGS.images, FLAGS.limit)
    except (OSError, ValueError) as e:
        fail(str(e))
    if not data.items:
        fail(f"{FLAGS.data}: no usable items ({len(data.skipped)} skipped: "
             + "; ".join(str(s) for s in data.skipped[:5]) + ")")
    from dsvl_jax.data.tokenizer import model_mismatch
    from dsvl_jax.train.checkpoint import load_params, read_config
    try:
        tok = _tokenizer(FLAGS.checkpoint, FLAGS.tokenizer)
        cfg = read_config(FLAGS.checkpoint)
        cfg = dataclasses.replace(cfg, dtype=FLAGS.dtype) if FLAGS.dtype else cfg
        cfg, params = load_params(FLAGS.checkpoint, cfg)
    except (OSError, ValueError) as e:
        fail(f"cannot load {FLAGS.checkpoint}: {e}")
    if why := model_mismatch(tok, cfg.image_token_id, cfg.llm.vocab_size):
        fail(why)
    predict = model_predictor(cfg, params, tok, batch_size=FLAGS.batch, max_new_tokens=FLAGS.max_new_tokens,
                              system_prompt=FLAGS.system, open_suffix=FLAGS.open_suffix)
    settings = {"checkpoint": os.path.abspath(FLAGS.checkpoint), "tokenizer": tok.source,
                "max_new_tokens": FLAGS.max_new_tokens, "system": FLAGS.system, "open_suffix": FLAGS.open_suffix,
                "dtype": cfg.dtype}

    def progress(done: int, total: int) -> None:
        print(f"evaluate: {done}/{total}", file=sys.stderr, flush=True)
    report = evaluate(data, predict, batch_size=FLAGS.batch, progress=progress, settings=settings)
    report["seconds"] = round(time.time() - t0, 2)
    if FLAGS.out:
        write_report(report, FLAGS.out)
    print(format_summary(report))
    return {"report": FLAGS.out, "n_items": report["n_items"], "n_scored": report["n_scored"],
            "skipped": len(report["skipped"]), "metrics": report["metrics"], "seconds": report["seconds"]}


def main(argv: list[str]) -> None:
    setup_process()
    if len(argv) > 1:
        raise app.UsageError(f"evaluate takes no positional arguments, got {argv[1:]}")
    print(json.dumps(run()))
    sys.stdout.flush()


def entry() -> None:
    define_flags()
    sys.modules["__main__"].__doc__ = __doc__  # absl shows the main module's docstring for --help and usage errors
    app.run(main)
