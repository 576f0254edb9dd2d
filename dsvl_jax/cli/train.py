"""Run (or resume) one training stage.

Rerunning the same command continues from the workdir's latest checkpoint. Writes WORKDIR/config.json,
metrics.jsonl, tensorboard/, checkpoints/<step>/ and, when the stage completes, final/ (params +
tokenizer: the next stage's --config.init_from=WORKDIR). Config errors fail before anything
compiles (exit 2). A second run on a workdir in use refuses with one line naming the first (host, pid,
since; exit 1). SIGTERM exits 143 and SIGINT (Ctrl-C) 130, with one line saying what was saved: nothing
during set-up and the first compile, a checkpoint of the step reached during training (rerunning
resumes from it), final/ when it came during the final save; a second signal exits at once. The last
stdout line is one JSON object: workdir, step, final, skipped_steps, compiles and the last logged
metrics.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

from absl import flags
from ml_collections import config_flags

from dsvl_jax.cli import command
from dsvl_jax.errors import Interrupted

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
    for s in (signal.SIGTERM, signal.SIGINT):  # until train() takes over: while jax loads
        signal.signal(s, _before_train)
    try:
        from dsvl_jax.train.spikes import check_config as check_spike_fields  # no jax

        check_spike_fields(FLAGS.config.train)  # config errors first, then the data
        check_data(FLAGS.config)
        command.setup_device_process()
        from dsvl_jax.train.loop import train

        res = train(FLAGS.config, FLAGS.workdir)
    except Interrupted as e:  # SIGTERM 143 (Preempted included), SIGINT 130
        print(f"train: {command.one_line(str(e))}", file=sys.stderr, flush=True)
        # whatever was to be saved is saved (train closes its checkpoints before raising); the
        # interpreter's own exit would wait for an XLA compile still running in the background (23 s
        # for the tiny model, minutes for 7B) before the process ends
        logging.shutdown()
        sys.stdout.flush()
        os._exit(e.code)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
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


def _before_train(signum, _frame) -> None:
    raise Interrupted.before_first_step(signal.Signals(signum).name)


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
