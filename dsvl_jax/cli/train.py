"""Run (or resume) one training stage.

Rerunning the same command continues from the workdir's latest checkpoint. Writes WORKDIR/config.json,
metrics.jsonl, tensorboard/, checkpoints/<step>/ and, when the stage completes, final/ (params +
tokenizer: the next stage's --config.init_from=WORKDIR). Config errors fail before anything
compiles (exit 2); SIGTERM saves a checkpoint and exits 143. The last stdout line is one JSON
object: workdir, step, final, skipped_steps, compiles and the last logged metrics.
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from dsvl_jax.cli import command

FLAGS = flags.FLAGS
EXAMPLE = "python -m dsvl_jax.train --config=experiments/stage1_aligner.py:tiny --workdir=runs/s1"


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Stage config: experiments/<file>.py:<size> (override fields with --config.train.lr=...).",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, final params).")


def main(argv: list[str]) -> None:
    command.check_usage(argv, required=("config", "workdir"))
    check_data(FLAGS.config)
    command.setup_device_process()
    from dsvl_jax.train.loop import train

    res = train(FLAGS.config, FLAGS.workdir)
    print(
        json.dumps(
            {
                "workdir": res.workdir,
                "step": res.step,
                "final": res.final_dir,
                "skipped_steps": res.skipped_steps,
                "compiles": res.compiles,
                **{k: v for k, v in res.last_metrics.items() if k != "step"},
            }
        ),
        flush=True,
    )


def check_data(cfg) -> None:
    """Every source the run reads (and, when it evaluates, their held-out splits) is prepared: one
    error naming the missing ones and the commands that write them, before jax loads."""
    from dsvl_jax.data.shards import check_sources

    evaluating = bool(cfg.eval.every_steps and cfg.eval.sources)
    check_sources(cfg.data.sources, holdout=evaluating)
    if evaluating:
        check_sources(cfg.eval.sources)


def entry() -> None:
    command.run(
        "train",
        main,
        doc=__doc__,
        example=EXAMPLE,
        define_flags=define_flags,
        config_flags=("config",),
    )
