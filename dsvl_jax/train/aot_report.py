"""Does a stage fit a TPU slice? Compile its real train step for the slice on this CPU host and report.

`fit_report(cfg, topology)` builds the slice's compile-only devices (needs libtpu), the run's mesh and
rules, searches the batch layout that fits (train/aot_compile.py: fewest micro-batches for the
configured batch, the largest batch at the configured micro-batches, or the configured layout
once), and returns the report the `aot` command prints: memory per chip vs HBM, analytic FLOPs, a
projected step time and MFU, every attempt, and the versions it was measured with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import metadata

import jax

from dsvl_jax.model.config import model_config_from_dict
from dsvl_jax.parallel import topologies
from dsvl_jax.parallel.mesh import build_mesh
from dsvl_jax.parallel.rules import rules_from_config
from dsvl_jax.parallel.sharding import batch_shards
from dsvl_jax.train import aot_compile as A
from dsvl_jax.train.loop import validate
from dsvl_jax.train.metrics import peak_for_kind
from dsvl_jax.train.state import StateFactory

SEARCHES = ("microbatches", "batch", "none")
ATTENTION = ("auto", "config", "xla", "splash")  # auto: splash on TPU when seq_len % 128 == 0


def fit_report(
    cfg,
    topology: str,
    *,
    num_slices: int = 1,
    search: str = "microbatches",
    max_compiles: int = 5,
    attention: str = "auto",
    efficiency: float = A.DEFAULT_EFFICIENCY,
    log: Callable[[str], None] = print,
) -> dict:
    """Compile cfg's train step for `topology` (x num_slices) and report whether and how it fits."""
    topo = topologies.parse(topology, num_slices)
    validate(cfg)
    if attention != "config":
        if attention == "auto":
            attention = "splash" if cfg.train.seq_len % 128 == 0 else cfg.model.attention
        cfg = cfg.copy_and_resolve_references()
        cfg.model.attention = attention
    mcfg = model_config_from_dict(cfg.model)
    t = cfg.train
    devices = topologies.devices(topo)
    kind = devices[0].device_kind
    mesh = build_mesh(cfg.parallel, devices)
    rules = rules_from_config(cfg.parallel.rules_override)
    hbm = topo.gen.hbm_bytes
    shards = batch_shards(mesh, rules)
    log(
        f"{topo.name} x{topo.num_slices}: {len(devices)} chips ({kind}, {hbm / 2**30:.2f} GiB usable HBM each), "
        f"mesh {dict(mesh.shape)}; {mcfg.vision} model, stage {t.stage} trains {tuple(t.trainable)}; batch "
        f"{t.batch_size} x {t.seq_len} tokens, {t.images_per_sample} image(s)/sample, attention {mcfg.attention}"
    )

    start = time.perf_counter()
    s = A.Search(cfg, mcfg, mesh, rules, hbm, max(1, max_compiles), log=log)
    if search == "microbatches":
        best = A.fewest_microbatches(s, t.batch_size, t.microbatches, shards)
    elif search == "batch":
        best = A.largest_batch(s, t.batch_size, t.microbatches, shards)
    else:
        best = s(t.batch_size, t.microbatches)
    total_s = time.perf_counter() - start

    chosen = A.with_train(cfg, batch_size=best.batch_size, microbatches=best.microbatches)
    factory = StateFactory(mcfg, chosen.train, mesh, rules, cfg.parallel.replicate_max_elems)
    peak = peak_for_kind(kind)
    proj = A.projection(
        mcfg,
        chosen.train,
        factory.abstract.params,
        factory.trainable,
        mesh,
        chips=len(devices),
        peak=peak,
        ici_bytes_per_s=topo.gen.ici_bytes_per_s,
        efficiency=efficiency,
    )
    fit = [a for a in s.attempts.values() if a.fits]
    rows_per_chip = best.batch_size / best.microbatches / shards
    res = {
        "topology": topo.name,
        "num_slices": topo.num_slices,
        "libtpu_topology": topo.libtpu_name,
        "chips": len(devices),
        "device_kind": kind,
        "mesh": dict(mesh.shape),
        "stage": int(t.stage),
        "model": mcfg.vision,
        "llm_layers": mcfg.llm.layers,
        "attention": mcfg.attention,
        "remat_policy": mcfg.remat_policy,
        "bytes_per_chip": best.bytes_per_chip,
        "hbm_bytes_per_chip": hbm,
        "fits": best.fits,
        "memory": best.memory,
        "global_batch": best.batch_size,
        "microbatches": best.microbatches,
        "rows_per_chip_per_microbatch": rows_per_chip,
        "configured_batch": int(t.batch_size),
        "configured_microbatches": int(t.microbatches),
        "max_microbatch_rows_fit": max((a.batch_size // a.microbatches for a in fit), default=0),
        "seq_len": int(t.seq_len),
        "images_per_sample": int(t.images_per_sample),
        "tokens_per_step": best.batch_size * int(t.seq_len),
        **proj,
        "search": search,
        "search_budget_used_up": s.exhausted,
        "compile_s": round(best.compile_s, 1),
        "search_s": round(total_s, 1),
        "attempts": [
            {
                "global_batch": a.batch_size,
                "microbatches": a.microbatches,
                "fits": a.fits,
                "bytes_per_chip": a.bytes_per_chip,
                "compile_s": round(a.compile_s, 1),
            }
            for a in s.attempts.values()
        ],
        "jax": jax.__version__,
        "libtpu": _version("libtpu"),
    }
    verdict = "fits" if best.fits else "does NOT fit"
    log(
        f"{verdict}: {best.batch_size} sequences as {best.microbatches} micro-batch(es) ({rows_per_chip:g} rows/chip "
        f"each), {best.bytes_per_chip / 2**30:.2f} GiB/chip of {hbm / 2**30:.2f}; "
        f"{proj['flops_per_step']:.3g} FLOPs/step, projected {proj['projected_step_s']:.3g} s/step, "
        f"MFU {proj['projected_mfu']:.0%} ({proj['assumption']})"
    )
    return res


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"
