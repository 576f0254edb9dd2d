"""Rehearse a shipped recipe on a laptop: its real shapes, the widths cut down.

Runs the experiment config as it is (row length, 384/1024 px images and 576 image tokens each, image
slots, packing, mixture and modality warm-up, system prompt, template, DeepSeek's vocabulary size and
special ids, stage freezing, micro-batches) with the towers' and the LLM's widths and depths shrunk,
one row per micro-batch and device, on the embedded corpus rendered at the config's image sizes
under --data (default WORKDIR/data; reused when present; nothing downloaded); the run goes to
WORKDIR/run. Shows progress, then prints one JSON line: config, steps,
samples_seen, samples_dropped (and reasons, ids), samples_split, text_chunks, row_fill,
image_slot_fill, loss_first, loss_last, eval_loss. Exit 1 when any sample was dropped: every record
of the embedded corpus is well-formed, so a drop means the recipe's shapes lose real data.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from dsvl_jax.cli import command

FLAGS = flags.FLAGS
EXAMPLE = (
    "python -m dsvl_jax.rehearse --config=experiments/stage2_pretrain.py:7b --workdir=runs/rehearse"
)


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Stage config to rehearse: experiments/<file>.py:<size> (overrides: --config.train.x=...).",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Where the run (WORKDIR/run) and by default the data go.")
    flags.DEFINE_string(
        "data", None, "Corpora + tokenizer folder, reused when present (default WORKDIR/data)."
    )
    flags.DEFINE_integer(
        "steps", 3, "Training steps (stage 2 needs 3 to reach a multimodal batch)."
    )


def main(argv: list[str]) -> None:
    command.check_usage(argv, required=("config", "workdir"))
    if FLAGS.steps < 1:
        raise app.UsageError(f"--steps={FLAGS.steps} must be >= 1")
    command.setup_device_process()
    import jax

    from dsvl_jax.train.rehearse import RehearsalFailed, rehearse

    name = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), "")
    out = rehearse(
        FLAGS.config, name, FLAGS.workdir, FLAGS.steps, jax.device_count(), FLAGS.data or ""
    )
    print(json.dumps(out), flush=True)
    if out["samples_dropped"]:
        raise RehearsalFailed(
            f"{out['samples_dropped']} well-formed samples dropped: {out['dropped_reasons']} "
            f"(e.g. {out['dropped_ids'][:3]})"
        )


def entry() -> None:
    command.run(
        "rehearse",
        main,
        doc=__doc__,
        example=EXAMPLE,
        define_flags=define_flags,
        config_flags=("config",),
    )
