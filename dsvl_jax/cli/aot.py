"""Does a stage fit a TPU slice? Compile its real train step for the slice on this CPU host.

Needs libtpu (`pip install -e .[tpu]`); no TPU is attached. Reports HBM per chip, analytic FLOPs, a
projected step time and MFU, and searches the batch layout that fits:
  --search=microbatches  (default) the stage's global batch with the fewest micro-batches that fit
  --search=batch         the largest global batch that fits at the configured micro-batch count
  --search=none          compile the configured layout once
The compiled batch is a multimodal one (pixels for every sample): with data.one_modality_per_batch
the text-only batches compile a second, smaller program. The last stdout line is one JSON object
(topology, bytes_per_chip, hbm_bytes_per_chip, fits, flops_per_step, projected_mfu, global_batch,
microbatches, compile_s, attempts, ...). Exit code 0 when it fits, 1 when nothing tried fits, 2 on
a bad config or topology.
"""

from __future__ import annotations

import json
import os

from absl import flags
from ml_collections import config_flags

from dsvl_jax.cli import command

FLAGS = flags.FLAGS
EXAMPLE = "python -m dsvl_jax.aot --config=experiments/stage2_pretrain.py:7b --topology=v5p-256"
SEARCHES = ("microbatches", "batch", "none")
ATTENTION = ("auto", "config", "xla", "splash")


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Stage config: experiments/<file>.py:<size>.", lock_config=True
    )
    flags.DEFINE_string(
        "topology", None, "TPU slice: v5p-256, v5e-256, v4-128, v6e-256, or gen:shape (v5e:2x2)."
    )
    flags.DEFINE_integer(
        "num_slices", 1, "Slices joined over DCN (mesh axes from parallel.dcn).", lower_bound=1
    )
    flags.DEFINE_enum("search", "microbatches", list(SEARCHES), "What to search (see --help).")
    flags.DEFINE_integer(
        "max_compiles", 5, "Upper bound on compiles for the search.", lower_bound=1
    )
    flags.DEFINE_enum(
        "attention",
        "auto",
        list(ATTENTION),
        "LLM attention kernel: auto = splash on TPU (needs "
        "seq_len % 128 == 0), config = as configured.",
    )
    flags.DEFINE_float(
        "efficiency", 0.65, "Assumed share of peak the compiled FLOPs reach (for the projection)."
    )
    flags.DEFINE_string("json_out", "", "Also append the JSON line to this file.")


def main(argv: list[str]) -> int:
    command.check_usage(argv, required=("config", "topology"))
    # Several AOT checks may run side by side on one host; libtpu's process lock would refuse the second.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    command.setup_logging()
    from dsvl_jax.train.aot_report import fit_report

    res = fit_report(
        FLAGS.config,
        FLAGS.topology,
        num_slices=FLAGS.num_slices,
        search=FLAGS.search,
        max_compiles=FLAGS.max_compiles,
        attention=FLAGS.attention,
        efficiency=FLAGS.efficiency,
        log=lambda line: print(line, flush=True),
    )
    line = json.dumps(res)
    print(line, flush=True)
    if FLAGS.json_out:
        with open(FLAGS.json_out, "a") as f:
            f.write(line + "\n")
    return 0 if res["fits"] else 1


def entry() -> None:
    command.run(
        "aot",
        main,
        doc=__doc__,
        example=EXAMPLE,
        define_flags=define_flags,
        config_flags=("config",),
    )
