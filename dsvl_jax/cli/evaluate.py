"""Score a model on a benchmark: its own file layout, its official metric, sharded over devices.

--benchmark NAME --data FILE_OR_DIR reads a benchmark as its authors ship it (mmbench, mmbench_cn,
seed, scienceqa, ai2d, mmmu, pope, textvqa, docvqa, chartqa, mathvista, ocrbench; language: mmlu,
hellaswag, arc, gsm8k) and scores it with its official metric (CircularEval, VQA accuracy, ANLS,
POPE F1 / yes-ratio, relaxed accuracy, MathVista rule-based extraction, MMMU per discipline,
option log-likelihood); without --benchmark, --data is a generic VQA / multiple-choice JSONL or an
MMBench-style TSV (eval/items.py). Image paths resolve under --images (default: the data's folder).
--checkpoint: any model folder; --mesh data,fsdp,tensor shards it. --predictions FILE rescores
answers produced elsewhere ({"id", "answer"} JSONL) with no model. Every run writes the report
(--out, default eval_reports/<benchmark>.json) and its predictions beside it (.predictions.jsonl).
--suite=paper --data_root DIR runs every benchmark found as DIR/<name> and prints one table beside
the paper's DeepSeek-VL figures. Last line: one JSON object.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

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
        "Benchmark file or folder: with --benchmark its native layout; else .jsonl / .json (VQA or "
        "multiple choice) or .tsv (MMBench-style).",
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
    flags.DEFINE_string(
        "out",
        None,
        "Report JSON (predictions beside it); default eval_reports/<benchmark>.json "
        "(--suite: a folder, default eval_reports/).",
    )
    flags.DEFINE_integer("batch", 8, "Items per generation batch.", lower_bound=1)
    flags.DEFINE_integer("max_new_tokens", 16, "Most tokens generated per answer.", lower_bound=1)
    flags.DEFINE_integer("limit", None, "Evaluate only the first N rows of --data.")
    flags.DEFINE_string(
        "system",
        None,
        "System prompt; default: the one the model was trained with (recorded in its checkpoint), "
        "else DeepSeek-VL's. 'default' = DeepSeek-VL's, '' = none, else the text.",
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

    flags.DEFINE_string(
        "benchmark",
        None,
        "Benchmark name (its native layout and official metric); none = generic JSONL/TSV.",
    )
    flags.DEFINE_string(
        "predictions",
        None,
        'Score these answers ({"id", "answer"} JSONL) instead of running a model.',
    )
    flags.DEFINE_list(
        "mesh", None, "data,fsdp,tensor sizes for sharded evaluation (one may be -1), e.g. 4,1,2."
    )
    flags.DEFINE_enum(
        "suite", None, ["paper"], "Run the paper's benchmark suite under --data_root."
    )
    flags.DEFINE_string("data_root", None, "--suite: folder holding one <benchmark> entry each.")
    flags.DEFINE_bool("progress", True, "Progress bar with items/s and ETA (stderr).")


def _mesh():
    if not FLAGS.mesh:
        return None
    try:
        mesh = tuple(int(x) for x in FLAGS.mesh)
    except ValueError:
        mesh = ()
    if len(mesh) != 3:
        raise app.UsageError(
            f"--mesh={','.join(FLAGS.mesh)}: expected three integers data,fsdp,tensor"
        )
    return mesh


def _bar(name: str):
    """A progress callback: tqdm's items/s and ETA on stderr."""
    from tqdm import tqdm

    state = {}

    def progress(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=name, unit=" item", disable=not FLAGS.progress)
        bar = state["bar"]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return progress


def _load_engine():
    from dsvl_jax.infer import Engine

    return Engine.load(
        FLAGS.checkpoint,
        FLAGS.tokenizer,
        dtype=FLAGS.dtype,
        batch_size=FLAGS.batch,
        system_prompt=FLAGS.system,
        mesh_shape=_mesh(),
    )


def _run(engine, name: str, data, out: str) -> dict:
    from dsvl_jax.eval import (
        evaluate,
        evaluate_model,
        predictions_path,
        predictions_predictor,
        write_report,
    )

    if not data.items:
        raise ValueError(
            f"{data.path}: no usable items ({len(data.skipped)} skipped: "
            + "; ".join(str(s) for s in data.skipped[:5])
            + ")"
        )
    t0 = time.time()
    if FLAGS.predictions:
        report = evaluate(
            data,
            predictions_predictor(FLAGS.predictions),
            batch_size=FLAGS.batch,
            progress=_bar(name),
            settings={"predictions": os.path.abspath(FLAGS.predictions)},
        )
    else:
        report = evaluate_model(
            engine,
            data,
            max_new_tokens=FLAGS.max_new_tokens,
            open_suffix=FLAGS.open_suffix,
            progress=_bar(name),
            settings={"checkpoint": os.path.abspath(FLAGS.checkpoint), "mesh": FLAGS.mesh},
        )
    report["seconds"] = round(time.time() - t0, 2)
    report["items_per_s"] = round(report["n_scored"] / max(report["seconds"], 1e-9), 2)
    report["predictions_file"] = predictions_path(out)
    write_report(report, out)
    return report


def main(argv: list[str]) -> None:
    command.check_usage(argv, paths=("checkpoint", "data", "predictions", "data_root"))
    if FLAGS.suite:
        if not (FLAGS.data_root and (FLAGS.checkpoint or FLAGS.predictions)):
            raise app.UsageError("--suite needs --data_root and --checkpoint")
    else:
        if not FLAGS.data:
            raise app.UsageError("--data is required")
        if not (FLAGS.checkpoint or FLAGS.predictions):
            raise app.UsageError("--checkpoint is required (or --predictions to score answers)")
    command.setup_device_process()
    from dsvl_jax.eval import format_summary, suite

    if FLAGS.benchmark and FLAGS.benchmark not in suite.readers():
        raise app.UsageError(
            f"--benchmark={FLAGS.benchmark}: unknown; known: {', '.join(sorted(suite.readers()))}"
        )

    t0 = time.time()
    if FLAGS.suite:
        found = suite.find(FLAGS.data_root)
        if not found:
            raise FileNotFoundError(
                f"--data_root {FLAGS.data_root}: none of {[n for n, _ in suite.SUITE]} found"
            )
        sets = {n: suite.load(n, p, FLAGS.images, FLAGS.limit) for n, p in found.items()}
        engine = None if FLAGS.predictions else _load_engine()
        out_dir = FLAGS.out or "eval_reports"
        reports = {
            n: _run(engine, n, d, os.path.join(out_dir, f"{n}.json")) for n, d in sets.items()
        }
        print(suite.suite_table(reports))
        line = {
            "suite": FLAGS.suite,
            "reports": out_dir,
            "benchmarks": {n: suite.headline(r) for n, r in reports.items()},
            "seconds": round(time.time() - t0, 2),
        }
        print(json.dumps(line), flush=True)
        return
    # the data first: a wrong file fails fast, before the (slow) model load
    data = suite.load(FLAGS.benchmark or "", FLAGS.data, FLAGS.images, FLAGS.limit)
    name = FLAGS.benchmark or os.path.splitext(os.path.basename(FLAGS.data.rstrip("/")))[0]
    engine = None if FLAGS.predictions else _load_engine()
    out = FLAGS.out or os.path.join("eval_reports", f"{name}.json")
    report = _run(engine, name, data, out)
    print(format_summary(report))
    print(
        json.dumps(
            {
                "report": out,
                "predictions": report["predictions_file"],
                "benchmark": report["benchmark"],
                "metric": report["metric"],
                "n_items": report["n_items"],
                "n_scored": report["n_scored"],
                "skipped": len(report["skipped"]),
                "metrics": report["metrics"],
                "items_per_s": report["items_per_s"],
                "seconds": round(time.time() - t0, 2),
            }
        ),
        flush=True,
    )


def entry() -> None:
    command.run("evaluate", main, doc=__doc__, example=EXAMPLE, define_flags=define_flags)
