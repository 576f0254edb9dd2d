"""Benchmarks by name, and the paper's suite: every benchmark found under a root, one table in the
layout of DeepSeek-VL's Tables 5-7 with the published DeepSeek-VL chat figures beside ours.

`load(name, path)` reads a benchmark in the layout its authors ship (eval/benchmarks.py, the
language ones in eval/language.py); an empty name reads the generic VQA / multiple-choice files of
eval/items.py. The suite looks for `<data_root>/<name>` (a file or folder) for each name of SUITE.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from dsvl_jax.eval import benchmarks, language
from dsvl_jax.eval.items import EvalSet, load_items

# The paper's DeepSeek-VL chat results (Tables 5-7): (1.3B, 7B). OCRBench is a score out of 1000;
# the rest are percentages. MMBench / MMBench-CN: the dev split.
PAPER = {
    "mmmu": (32.2, 36.6),
    "mmbench": (64.6, 73.2),
    "mmbench_cn": (61.3, 72.8),
    "seed": (66.7, 70.4),
    "ocrbench": (409, 456),
    "pope": (87.6, 88.1),
    "mathvista": (31.1, 36.1),
    "hellaswag": (56.0, 68.4),
    "mmlu": (32.5, 52.4),
    "gsm8k": (18.0, 55.0),
}
# (name, paper table) in the order the table prints; benchmarks the paper names without a figure
# (ScienceQA, TextVQA, DocVQA, ChartQA, AI2D) are run when present, with "-" as the paper's value.
SUITE = [
    ("mmmu", "5"),
    ("mmbench", "5"),
    ("mmbench_cn", "5"),
    ("seed", "5"),
    ("ocrbench", "5"),
    ("pope", "5"),
    ("mathvista", "5"),
    ("scienceqa", "-"),
    ("ai2d", "-"),
    ("textvqa", "-"),
    ("docvqa", "-"),
    ("chartqa", "-"),
    ("hellaswag", "7"),
    ("mmlu", "7"),
    ("gsm8k", "7"),
]


def readers() -> dict[str, tuple[Callable, str]]:
    return {**benchmarks.READERS, **language.READERS}


def load(name: str, path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    """A benchmark's items by name ("" = the generic files of eval/items.py)."""
    if not name:
        return load_items(path, images, limit)
    table = readers()
    if name not in table:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(table)}")
    return table[name][0](path, images, limit)


def find(data_root: str) -> dict[str, str]:
    """{name: path} of the suite's benchmarks present under data_root (`<root>/<name>`)."""
    if not os.path.isdir(data_root):
        raise FileNotFoundError(f"--data_root {data_root}: not a folder")
    out = {}
    for name, _ in SUITE:
        for cand in (name, name + ".json", name + ".jsonl", name + ".tsv", name + ".parquet"):
            p = os.path.join(data_root, cand)
            if os.path.exists(p):
                out[name] = p
                break
    return out


def headline(report: dict) -> float | None:
    """The figure the paper's tables print: the headline metric (x100 unless it is a raw score)."""
    v = report["metrics"].get(report.get("headline", "accuracy"))
    if v is None:
        return None
    return float(v) if isinstance(v, int) else round(100 * float(v), 1)


def suite_table(reports: dict[str, dict]) -> str:
    """Ours beside the paper's DeepSeek-VL-1.3B / 7B chat figures, one row per benchmark run."""
    head = f"{'benchmark':<12} {'table':>5} {'metric':<20} {'n':>6} {'ours':>8} {'paper 1.3B':>11} {'paper 7B':>9}"
    lines = [head, "-" * len(head)]
    for name, table in SUITE:
        if name not in reports:
            continue
        r = reports[name]
        ours = headline(r)
        p13, p7 = PAPER.get(name, ("-", "-"))
        lines.append(
            f"{name:<12} {table:>5} {r.get('headline', 'accuracy'):<20} {r['n_scored']:>6} "
            f"{'-' if ours is None else ours:>8} {p13:>11} {p7:>9}"
        )
    return "\n".join(lines)
