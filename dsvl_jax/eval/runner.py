"""Batched generation over eval items -> scored predictions -> report (JSON) + a summary table.

The runner takes any `predict(items) -> list[str]` (one answer per item), so scoring is tested
without a model; `model_predictor(engine)` builds the one the CLI uses: the "deepseek" template
(IMAGE_TAG + "\\n" + prompt as the user turn), HF-exact preprocessing, greedy decoding with the KV
cache (`infer.Engine`, i.e. `model.decode.generate`) until EOS, fixed shapes (batch padded to `batch_size`
rows, prompts left-padded to a multiple of `length_bucket`) so a run compiles once per bucket.

Per-item problems found while predicting (an image that does not decode, a prompt longer than the
model allows) are raised by the predictor as `ItemError`s / `records.BadRecord`s; the runner then
re-runs that batch item by item and reports just the bad items as skipped, with their reason.

Report keys: data, format, n_items, n_scored, metrics (overall), per_category, skipped
[{id, where, reason, detail}], predictions [per item: id, category, type, question, prediction,
answers, exact/relaxed or options/choice, correct], settings, seconds.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from dsvl_jax.data.records import IMAGE_TAG, BadRecord, Message, decode_image
from dsvl_jax.data.template import render_generation_prompt, system_prompt
from dsvl_jax.eval import scoring
from dsvl_jax.eval.items import EvalItem, EvalSet, ItemError, Skipped
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
    records = []
    for i in range(0, len(items), batch_size):
        done, bad = _predict_batch(predict, items[i : i + batch_size])
        records += [scoring.score(it, pred) for it, pred in done]
        skipped += bad
        if progress:
            progress(min(i + batch_size, len(items)), len(items))
    summary = scoring.summarize(records)
    return {
        "data": data.path if isinstance(data, EvalSet) else None,
        "format": data.format if isinstance(data, EvalSet) else None,
        "n_items": len(items) + (len(data.skipped) if isinstance(data, EvalSet) else 0),
        "n_scored": len(records),
        "metrics": summary["overall"],
        "per_category": summary["per_category"],
        "skipped": [vars(s) for s in skipped],
        "predictions": records,
        "settings": dict(settings or {}, batch_size=batch_size),
        "seconds": round(time.time() - t0, 3),
    }


def format_summary(report: dict) -> str:
    """The table of scoring.format_table plus one line per skipped item."""
    lines = [
        scoring.format_table({"overall": report["metrics"], "per_category": report["per_category"]})
    ]
    if report["skipped"]:
        lines.append(f"\nskipped {len(report['skipped'])} of {report['n_items']} items:")
        lines += [f"  {Skipped(**s)}" for s in report["skipped"]]
    return "\n".join(lines)


def write_report(report: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)


# --- the model ---------------------------------------------------------------------------------------


def model_predictor(engine: Engine, *, max_new_tokens: int = 16, open_suffix: str = "") -> Predict:
    """predict(items) for a loaded model (`infer.Engine`: its batch size, system prompt and shape
    buckets): greedy answers up to EOS. Items with more than one image are not supported (benchmarks
    here have one). Raises ItemError("prompt_too_long") / BadRecord (image)."""
    cfg, tokenizer = engine.cfg, engine.tokenizer
    n_img, limit = cfg.num_image_tokens, cfg.llm.max_position
    system = system_prompt(engine.system_prompt)

    def prompt_ids(it: EvalItem) -> np.ndarray:
        text = it.prompt(open_suffix)
        if it.image is not None:
            text = IMAGE_TAG + "\n" + text
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
                [] if it.image is None else [decode_image(it.image_bytes(), record_id=it.id)],
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
