"""Benchmark evaluation: items (generic VQA / multiple choice, and each benchmark's native layout in
benchmarks.py / language.py), official metrics (metrics.py), the batched runner, the paper's suite.

`python -m dsvl_jax.evaluate` loads a model with `infer.Engine.load` and calls `evaluate_model`. The runner takes any
`predict(items) -> list[str]`, so scores can be checked without a model (`predictions_predictor`).
"""

from dsvl_jax.eval.items import MC_INSTRUCTION, EvalItem, EvalSet, ItemError, Skipped, load_items
from dsvl_jax.eval.runner import (
    evaluate,
    evaluate_model,
    format_summary,
    metric_of,
    model_predictor,
    predictions_path,
    predictions_predictor,
    write_report,
)
from dsvl_jax.eval.scoring import (
    exact_match,
    normalize_answer,
    parse_choice,
    relaxed_match,
    summarize,
    to_number,
)

__all__ = [
    "MC_INSTRUCTION",
    "EvalItem",
    "EvalSet",
    "ItemError",
    "Skipped",
    "evaluate",
    "evaluate_model",
    "exact_match",
    "format_summary",
    "load_items",
    "metric_of",
    "model_predictor",
    "normalize_answer",
    "parse_choice",
    "predictions_path",
    "predictions_predictor",
    "relaxed_match",
    "summarize",
    "to_number",
    "write_report",
]
