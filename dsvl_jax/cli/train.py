"""`python -m dsvl_jax.train --config=experiments/<stage>.py:<size> --workdir=DIR [--config.key=value ...]`.

Runs (or resumes: the same command continues from DIR's latest checkpoint) one training stage.
Writes DIR/config.json, DIR/metrics.jsonl, DIR/tensorboard/, DIR/checkpoints/, DIR/final/ (the
params the next stage starts from with --config.init_from=DIR). Bad configs fail with one line
and exit code 2 before anything compiles; SIGTERM saves a checkpoint and exits with 143.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from dsvl_jax.cli.common import setup_process

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config: experiments/<file>.py:<arg>.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, final params).")


def main(argv) -> None:
    del argv
    setup_process()
    from dsvl_jax.data.pipeline import DataError
    from dsvl_jax.model.config import ConfigError
    from dsvl_jax.parallel.mesh import MeshError
    from dsvl_jax.parallel.sharding import ShardingError
    from dsvl_jax.train.loop import Preempted, RunError, train

    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    try:
        res = train(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, MeshError, ShardingError, RunError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Preempted as e:
        print(str(e), file=sys.stderr)
        sys.exit(143)
    print(json.dumps({"workdir": res.workdir, "step": res.step, "final": res.final_dir,
                      "skipped_steps": res.skipped_steps, "compiles": res.compiles,
                      **{k: v for k, v in res.last_metrics.items() if k != "step"}}))


def entry() -> None:
    app.run(main)
