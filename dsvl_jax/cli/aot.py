"""`python -m dsvl_jax.aot --config=experiments/<stage>.py:<size> --topology=v5p-256 [--config.key=value ...]`.

Checks that a stage fits a TPU slice before any pod hours are spent: compiles the real train step for the
slice's compile-only devices on this (CPU) host (needs libtpu: `pip install -e .[tpu]`), reports HBM per
chip, analytic FLOPs, a projected step time / MFU, and searches the batch layout that fits:
  --search=microbatches  (default) the stage's global batch with the fewest micro-batches that fit
  --search=batch         the largest global batch that fits at the configured micro-batch count
  --search=none          compile the configured layout once
The compiled batch is a multimodal one (pixels for every sample): with data.one_modality_per_batch the
text-only batches compile a second, smaller program. The last stdout line is one JSON object
(topology, bytes_per_chip, hbm_bytes_per_chip, fits,
flops_per_step, projected_mfu, global_batch, microbatches, compile_s, attempts, ...). Exit code 0 when it
fits, 1 when nothing tried fits, 2 on a bad config or topology.
"""
from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined on entry, not at import, so this module imports next to other CLIs' `--config` flags."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Stage config: experiments/<file>.py:<arg>.", lock_config=True)
    flags.DEFINE_string("topology", None, "TPU slice: v5p-256, v5e-256, v4-128, v6e-256, or gen:shape (v5e:2x2).")
    flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN (mesh axes from parallel.dcn).")
    flags.DEFINE_enum("search", "microbatches", ["microbatches", "batch", "none"], "What to search (see --help).")
    flags.DEFINE_integer("max_compiles", 5, "Upper bound on compiles for the search.")
    flags.DEFINE_enum("attention", "auto", ["auto", "config", "xla", "splash"],
                      "LLM attention kernel: auto = splash on TPU (needs seq_len % 128 == 0), config = as configured.")
    from dsvl_jax.train.aot_compile import DEFAULT_EFFICIENCY

    flags.DEFINE_float("efficiency", DEFAULT_EFFICIENCY,
                       "Assumed share of peak the compiled FLOPs reach (for the projection).")
    flags.DEFINE_string("json_out", "", "Also append the JSON line to this file.")


def main(argv) -> None:
    del argv
    from dsvl_jax.cli.common import setup_logging

    setup_logging()
    if not FLAGS.topology:
        raise app.UsageError("--topology is required (e.g. v5p-256)")
    try:
        res = run(FLAGS.config)
    except ValueError as e:  # ConfigError, MeshError, ShardingError, TopologyError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    line = json.dumps(res)
    print(line, flush=True)
    if FLAGS.json_out:
        with open(FLAGS.json_out, "a") as f:
            f.write(line + "\n")
    sys.exit(0 if res["fits"] else 1)


def run(cfg) -> dict:
    import jax

    from dsvl_jax.model.config import model_config_from_dict
    from dsvl_jax.parallel import topologies
    from dsvl_jax.parallel.mesh import build_mesh
    from dsvl_jax.parallel.rules import rules_from_config
    from dsvl_jax.parallel.sharding import batch_shards
    from dsvl_jax.train import aot_compile as A
    from dsvl_jax.train.loop import RunError, validate
    from dsvl_jax.train.metrics import peak_for_kind
    from dsvl_jax.train.state import StateFactory

    topo = topologies.parse(FLAGS.topology, FLAGS.num_slices)
    try:
        validate(cfg)
    except RunError as e:
        raise ValueError(str(e)) from e
    if FLAGS.attention != "config":
        attn = FLAGS.attention
        if attn == "auto":
            attn = "splash" if cfg.train.seq_len % 128 == 0 else cfg.model.attention
        cfg = cfg.copy_and_resolve_references()
        cfg.model.attention = attn
    mcfg = model_config_from_dict(cfg.model)
    t = cfg.train
    devices = topologies.devices(topo)
    kind = devices[0].device_kind
    mesh = build_mesh(cfg.parallel, devices)
    rules = rules_from_config(cfg.parallel.rules_override)
    hbm = topo.gen.hbm_bytes
    shards = batch_shards(mesh, rules)
    print(f"{topo.name} x{topo.num_slices}: {len(devices)} chips ({kind}, {hbm / 2**30:.2f} GiB usable HBM each), mesh "
          f"{dict(mesh.shape)}; {mcfg.vision} model, stage {t.stage} trains {tuple(t.trainable)}; batch "
          f"{t.batch_size} x {t.seq_len} tokens, {t.images_per_sample} image(s)/sample, attention {mcfg.attention}",
          flush=True)

    start = time.perf_counter()
    search = A.Search(cfg, mcfg, mesh, rules, hbm, max(1, FLAGS.max_compiles))
    if FLAGS.search == "microbatches":
        best = A.fewest_microbatches(search, t.batch_size, t.microbatches, shards)
    elif FLAGS.search == "batch":
        best = A.largest_batch(search, t.batch_size, t.microbatches, shards)
    else:
        best = search(t.batch_size, t.microbatches)
    total_s = time.perf_counter() - start

    chosen = A.with_train(cfg, batch_size=best.batch_size, microbatches=best.microbatches)
    factory = StateFactory(mcfg, chosen.train, mesh, rules, cfg.parallel.replicate_max_elems)
    peak = peak_for_kind(kind)
    proj = A.projection(mcfg, chosen.train, factory.abstract.params, factory.trainable, mesh, chips=len(devices),
                        peak=peak, ici_bytes_per_s=topo.gen.ici_bytes_per_s, efficiency=FLAGS.efficiency)
    fit_mb = [a for a in search.attempts.values() if a.fits]
    res = {
        "topology": topo.name, "num_slices": topo.num_slices, "libtpu_topology": topo.libtpu_name,
        "chips": len(devices),
        "device_kind": kind, "mesh": dict(mesh.shape), "stage": int(t.stage), "model": mcfg.vision,
        "llm_layers": mcfg.llm.layers, "attention": mcfg.attention, "remat_policy": mcfg.remat_policy,
        "bytes_per_chip": best.bytes_per_chip, "hbm_bytes_per_chip": hbm, "fits": best.fits,
        "memory": best.memory, "global_batch": best.batch_size, "microbatches": best.microbatches,
        "rows_per_chip_per_microbatch": best.batch_size / best.microbatches / shards,
        "configured_batch": int(t.batch_size), "configured_microbatches": int(t.microbatches),
        "max_microbatch_rows_fit": max((a.batch_size // a.microbatches for a in fit_mb), default=0),
        "seq_len": int(t.seq_len), "images_per_sample": int(t.images_per_sample),
        "tokens_per_step": best.batch_size * int(t.seq_len),
        **proj, "search": FLAGS.search, "search_budget_used_up": search.exhausted,
        "compile_s": round(best.compile_s, 1), "search_s": round(total_s, 1),
        "attempts": [{"global_batch": a.batch_size, "microbatches": a.microbatches, "fits": a.fits,
                      "bytes_per_chip": a.bytes_per_chip, "compile_s": round(a.compile_s, 1)}
                     for a in search.attempts.values()],
        "jax": jax.__version__, "libtpu": _libtpu_version(),
    }
    verdict = "fits" if best.fits else "does NOT fit"
    print(f"{verdict}: {best.batch_size} sequences as {best.microbatches} micro-batch(es) "
          f"({res['rows_per_chip_per_microbatch']:g} rows/chip each), {best.bytes_per_chip / 2**30:.2f} GiB/chip of "
          f"{hbm / 2**30:.2f}; {proj['flops_per_step']:.3g} FLOPs/step, "
          f"projected {proj['projected_step_s']:.3g} s/step, "
          f"MFU {proj['projected_mfu']:.0%} ({proj['assumption']})", flush=True)
    return res


def _libtpu_version() -> str:
    try:
        from importlib.metadata import version
        return version("libtpu")
    except Exception:  # noqa: BLE001
        return "unknown"


def entry() -> None:
    # Several AOT checks may run side by side on one host; libtpu's process lock would refuse the second.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    _define_flags()
    app.run(main)
