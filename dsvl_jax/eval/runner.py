"""Batched generation over eval items -> scored predictions -> report (JSON) + a summary table.

The runner takes any `predict(items) -> list[str]` (one answer per item), so scoring is tested
without a model; `model_predictor(engine)` builds the one the CLI uses: the "deepseek" template
(IMAGE_TAG + "\\n" + prompt as the user turn), HF-exact preprocessing, greedy decoding with the KV
cache (`infer.Engine`, i.e. `model.decode.generate`) until EOS, fixed shapes (batch padded to `batch_size`
rows, prompts left-padded to a multiple of `length_bucket`) so a run compiles once per bucket.

Per-item problems found while predicting (an image that does not decode, a prompt longer than the
model allows) are raised by the predictor as `ItemError`s / `records.BadRecord`s; the runner then
re-runs that batch item by item and reports just the bad items as skipped, with their reason.

Scoring is the benchmark's metric (EvalSet.metric, eval/metrics.py and the language metrics).
Report keys: data, format, benchmark, metric, headline, n_items, n_scored, metrics (overall),
per_category, skipped [{id, where, reason, detail}], predictions [per item: id, category, type,
question, prediction, answers, the metric's fields, correct], settings, seconds. `write_report`
also writes the predictions as JSONL {"id", "answer"} beside the report, the input of
`predictions_predictor` (`evaluate --predictions`), so any run can be rescored.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from dsvl_jax.data.records import IMAGE_TAG, BadRecord, Message, decode_image
from dsvl_jax.data.template import render_generation_prompt, system_prompt
from dsvl_jax.eval import language, scoring
from dsvl_jax.eval.items import EvalItem, EvalSet, ItemError, Skipped
from dsvl_jax.eval.metrics import METRICS, Metric
from dsvl_jax.infer import Engine

Predict = Callable[[Sequence[EvalItem]], list[str]]


def _predict_batch(
    predict: Predict, batch: Sequence[EvalItem]
) -> tuple[list[tuple[EvalItem, str]], list[Skipped]]:
    try:
        out = predict(batch)
    except (ItemError, BadRecord) as e:
        if len(batch) == 1:
            reason = e.reason
            return [], [Skipped(batch[0].id, batch[0].where, reason, getattr(e, "detail", str(e)))]
        done, bad = [], []
        for it in batch:  # find the bad item(s); the others are still answered
            d, b = _predict_batch(predict, [it])
            done += d
            bad += b
        return done, bad
    if len(out) != len(batch):
        raise ValueError(f"predict returned {len(out)} answers for {len(batch)} items")
    return list(zip(batch, out)), []


def evaluate(
    data: EvalSet | Sequence[EvalItem],
    predict: Predict,
    *,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    settings: dict | None = None,
) -> dict:
    """Run `predict` over the items in batches of `batch_size`, score, summarise -> the report dict."""
    t0 = time.time()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = data.items if isinstance(data, EvalSet) else list(data)
    skipped = list(data.skipped) if isinstance(data, EvalSet) else []
    metric = metric_of(data.metric if isinstance(data, EvalSet) else "default")
    records = []
    for i in range(0, len(items), batch_size):
        done, bad = _predict_batch(predict, items[i : i + batch_size])
        records += [metric.score(it, pred) for it, pred in done]
        skipped += bad
        if progress:
            progress(min(i + batch_size, len(items)), len(items))
    cats: dict[str, list[dict]] = {}
    for r in records:
        cats.setdefault(r["category"] or "-", []).append(r)
    return {
        "data": data.path if isinstance(data, EvalSet) else None,
        "format": data.format if isinstance(data, EvalSet) else None,
        "benchmark": data.benchmark if isinstance(data, EvalSet) else "",
        "metric": metric.name,
        "headline": metric.headline,
        "n_items": len(items) + (len(data.skipped) if isinstance(data, EvalSet) else 0),
        "n_scored": len(records),
        "metrics": metric.aggregate(records),
        "per_category": {c: metric.aggregate(rs) for c, rs in sorted(cats.items())},
        "skipped": [vars(s) for s in skipped],
        "predictions": records,
        "settings": dict(settings or {}, batch_size=batch_size),
        "seconds": round(time.time() - t0, 3),
    }


def metric_of(name: str) -> Metric:
    """A metric by name: the multimodal benchmarks' (eval/metrics.py) and the language ones."""
    every = {**METRICS, **language.LANGUAGE_METRICS}
    if name not in every:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(every)}")
    return every[name]


def metric_table(summary: dict) -> str:
    """One row per category then OVERALL; columns: every value the metric reports ([0, 1] as %)."""
    rows = [*summary["per_category"].items(), ("OVERALL", summary["overall"])]
    cols = [k for k, v in summary["overall"].items() if k != "n" and isinstance(v, (int, float))]
    cols = cols or [k for k in summary["overall"] if k != "n"]

    def cell(v):
        if v is None:
            return "-"
        return f"{100 * v:.1f}" if isinstance(v, float) else str(v)

    width = max(8, *(len(c) for c, _ in rows))
    head = f"{'category':<{width}}  {'n':>5}  " + "  ".join(f"{c:>9}" for c in cols)
    lines = [head, "-" * len(head)]
    for c, m in rows:
        vals = "  ".join(f"{cell(m.get(k)):>9}" for k in cols)
        lines.append(f"{c:<{width}}  {m.get('n', 0):>5}  {vals}")
    return "\n".join(lines)


def format_summary(report: dict) -> str:
    """The benchmark's table (per category + overall) plus one line per skipped item."""
    summary = {"overall": report["metrics"], "per_category": report["per_category"]}
    default = report.get("metric", "default") == "default"
    lines = [scoring.format_table(summary) if default else metric_table(summary)]
    if report["skipped"]:
        lines.append(f"\nskipped {len(report['skipped'])} of {report['n_items']} items:")
        lines += [f"  {Skipped(**s)}" for s in report["skipped"]]
    return "\n".join(lines)


def write_report(report: dict, path: str) -> str:
    """The report JSON at `path` and its predictions beside it (predictions_path(path)) -> that path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    preds = predictions_path(path)
    with open(preds, "w", encoding="utf-8") as f:
        for r in report["predictions"]:
            f.write(
                json.dumps({"id": r["id"], "answer": r["prediction"]}, ensure_ascii=False) + "\n"
            )
    return preds


def predictions_path(report_path: str) -> str:
    """report.json -> report.predictions.jsonl: what `--predictions` rescores."""
    return os.path.splitext(report_path)[0] + ".predictions.jsonl"


def predictions_predictor(path: str) -> Predict:
    """predict(items) from a JSONL of {"id": <the benchmark's question id>, "answer": <raw text>}:
    answers produced elsewhere (another harness, an earlier run), scored with no model. An item with
    no line in the file is skipped as "no_prediction"."""
    answers: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                answers[str(rec["id"])] = str(rec["answer"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(
                    f'{path}:{n}: expected {{"id": ..., "answer": ...}} ({e})'
                ) from None

    def predict(items: Sequence[EvalItem]) -> list[str]:
        missing = [it.id for it in items if it.id not in answers]
        if missing:
            raise ItemError("no_prediction", f"{path} has no answer for id {missing[0]!r}")
        return [answers[it.id] for it in items]

    return predict


# --- the model ---------------------------------------------------------------------------------------


def model_predictor(engine: Engine, *, max_new_tokens: int = 16, open_suffix: str = "") -> Predict:
    """predict(items) for a loaded model (`infer.Engine`: its batch size, system prompt and shape
    buckets): greedy answers up to EOS; an item's images go where its IMAGE_TAGs are (else first).
    Raises ItemError("prompt_too_long") / BadRecord (image)."""
    cfg, tokenizer = engine.cfg, engine.tokenizer
    n_img, limit = cfg.num_image_tokens, cfg.llm.max_position
    system = system_prompt(engine.system_prompt)

    def prompt_ids(it: EvalItem) -> np.ndarray:
        text = it.prompt(open_suffix)
        missing = len(it.images) - text.count(IMAGE_TAG)
        if missing > 0:  # images without placeholders come first, one per line
            text = (IMAGE_TAG + "\n") * missing + text
        ids = render_generation_prompt(
            [Message("user", text)], tokenizer, n_img, default_system=system
        ).ids
        if len(ids) + max_new_tokens > limit:
            raise ItemError(
                "prompt_too_long",
                f"{len(ids)} prompt tokens + max_new_tokens {max_new_tokens} > "
                f"model.llm.max_position {limit}",
            )
        return ids

    def predict(items: Sequence[EvalItem]) -> list[str]:
        if engine.batch_size and len(items) > engine.batch_size:
            raise ValueError(f"{len(items)} items > batch_size {engine.batch_size}")
        prompts = [
            (
                prompt_ids(it),
                [decode_image(it.image_bytes(k), record_id=it.id) for k in range(len(it.images))],
            )
            for it in items
        ]
        new = engine.generate_ids(prompts, max_new_tokens=max_new_tokens)
        return [engine.decode_answer(row) for row in new]

    return predict


def evaluate_model(
    engine: Engine,
    data: EvalSet,
    *,
    max_new_tokens: int = 16,
    open_suffix: str = "",
    progress: Callable[[int, int], None] | None = None,
    settings: dict | None = None,
) -> dict:
    """Score a loaded model on a benchmark file's items -> the report (see the module docstring)."""
    if getattr(data, "metric", "") == "loglik":  # multiple choice by each option's log-likelihood
        predict = language.loglik_predictor(engine)
    else:
        predict = model_predictor(engine, max_new_tokens=max_new_tokens, open_suffix=open_suffix)
    settings = {
        "tokenizer": engine.tokenizer.source,
        "max_new_tokens": max_new_tokens,
        "system": engine.system_prompt,
        "open_suffix": open_suffix,
        "dtype": engine.cfg.dtype,
        **(settings or {}),
    }
    return evaluate(
        data, predict, batch_size=engine.batch_size or 8, progress=progress, settings=settings
    )
