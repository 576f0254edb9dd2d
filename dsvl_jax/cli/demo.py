"""The main job on the embedded default: corpus, stages 1 -> 2 -> 3, plots, a chat answer.

Writes <out_dir>/{data,stage1,stage2,stage3,plots}; each stage resumes when rerun. The last line
printed is one JSON object: held-out exact-match `accuracy`, `chance` (always the most frequent
answer) and `accuracy_swapped_images` (the same questions with other charts' images), per-stage
figures and the chat answer. Stage fields are overridden as --config.stage3.train.steps=900.
"""

from __future__ import annotations

import json
import os

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
    from dsvl_jax.train.demo import run_demo

    print(
        json.dumps(run_demo(flags.FLAGS[_CONFIG].value, say=lambda s: print(s, flush=True))),
        flush=True,
    )


def entry() -> None:
    command.run(
        "demo",
        main,
        doc=__doc__,
        example=EXAMPLE,
        define_flags=define_flags,
        config_flags=(_CONFIG,),
    )
