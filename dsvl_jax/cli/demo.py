"""The main job on the embedded default: corpus, stages 1 -> 2 -> 3, plots, held-out eval.

Writes <out_dir>/{data,stage1,stage2,stage3,plots,showcase,result.json}; each stage resumes when
rerun, and a rerun of a finished demo (same config) prints the stored result.json without training.
stderr: one line per phase and its progress bar (corpus, tokenizer, each stage's steps with loss and
ETA, the eval). stdout: a few held-out questions with the model's and the expected answer and the
accuracy, then, last, one strict JSON object (no NaN: missing figures are null): held-out exact-match
`accuracy`, `chance` (always the most frequent answer), `accuracy_swapped_images` (the same questions
with other charts' images), `showcase` ([{question, answer, expected, correct, image}]), per-stage
figures. Stage fields are overridden as --config.stage3.train.steps=900.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from dsvl_jax.cli import command

EXAMPLE = "python -m dsvl_jax.demo --config=experiments/demo.py:tiny --config.out_dir=runs/demo"
_CONFIG = "config"
# the checkout's experiments/demo.py wherever the command runs from (cwd-relative when installed elsewhere)
_REPO_DEMO = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "experiments", "demo.py")
DEFAULT = (
    os.path.normpath(_REPO_DEMO) if os.path.isfile(_REPO_DEMO) else "experiments/demo.py"
) + ":tiny"


def define_flags() -> None:
    config_flags.DEFINE_config_file(_CONFIG, DEFAULT, "Demo config file.", lock_config=True)


def main(argv: list[str]) -> None:
    command.check_usage(argv)
    command.setup_device_process()
    from dsvl_jax.train.demo import finite, run_demo

    res = finite(run_demo(flags.FLAGS[_CONFIG].value, say=_progress))
    for line in showcase_lines(res):
        print(line)
    print(json.dumps(res, allow_nan=False), flush=True)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def showcase_lines(res: dict) -> list[str]:
    """The human-readable head of stdout: accuracy, then question / answer / expected per item."""
    lines = [
        f"held-out accuracy {_fmt(res.get('accuracy'))} on {res.get('qa_items', 0)} chart questions"
        f" (chance {_fmt(res.get('chance'))}, images swapped {_fmt(res.get('accuracy_swapped_images'))})"
    ]
    for i, s in enumerate(res.get("showcase") or []):
        mark = "right" if s["correct"] else "wrong"
        lines.append(
            f"  [{i}] Q: {s['question']}  model: {s['answer']!r}  expected: {s['expected']!r}  {mark}"
        )
    return lines


def entry() -> None:
    command.run(
        "demo",
        main,
        doc=__doc__,
        example=EXAMPLE,
        define_flags=define_flags,
        config_flags=(_CONFIG,),
    )
