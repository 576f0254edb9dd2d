"""Benchmark evaluation: items (VQA JSONL, MMBench/SEED-style multiple choice), scoring, the batched runner.

`python -m dsvl_jax.evaluate` loads a model with `infer.Engine.load` and calls `evaluate_model`. The runner takes any
`predict(items) -> list[str]`, so scores can be checked without a model.
"""

from dsvl_jax.eval.items import MC_INSTRUCTION, EvalItem, EvalSet, ItemError, Skipped, load_items
from dsvl_jax.eval.runner import (
    evaluate,
    evaluate_model,
    format_summary,
    model_predictor,
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
    "model_predictor",
    "normalize_answer",
    "parse_choice",
    "relaxed_match",
    "summarize",
    "to_number",
    "write_report",
]
