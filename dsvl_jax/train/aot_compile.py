"""Compile the real train step for a TPU slice from a CPU host: memory per chip, FLOPs, projected step time,
and a bounded search for the batch layout that fits.

The inputs are exactly what a run feeds the step: the StateFactory's abstract state with its shardings, and
the loader's batch as ShapeDtypeStructs with the batch sharding (int32 ids/targets/positions/segments,
float32 loss_mask, uint8 pixels [B, I, S, S, 3] and, for hybrid models, uint8 high_pixels). Nothing is
allocated; `CompiledStep.lower(...).compile()` is the same jit the loop runs. A layout that does not fit
fails inside XLA with RESOURCE_EXHAUSTED, as on hardware; that is recorded as `fits=False`, not raised.

`compiled.memory_analysis()` is per device (= per chip: one device per chip on every TPU in
parallel/topologies.py). `cost_analysis()` counts a scanned layer once, so FLOPs come from the analytic
counter (train/metrics.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from dsvl_jax.errors import ConfigError
from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.params import flatten
from dsvl_jax.train import metrics as M
from dsvl_jax.train.optim import group_of
from dsvl_jax.train.state import StateFactory
from dsvl_jax.train.step import CompiledStep, batch_shardings

# Projection assumptions (stated in the JSON next to the numbers they produce).
# share of peak the compiled FLOPs reach: MaxText's dense v5p runs sit at 55-71% MFU
DEFAULT_EFFICIENCY = 0.65
RECOMPUTE = {"full": 1.0, "save_attn_out": 1.0, "dots": 0.0, "dots_no_batch": 0.0, "none": 0.0}


@dataclasses.dataclass
class Attempt:
    """One compile of the step for (batch_size, microbatches)."""

    batch_size: int
    microbatches: int
    fits: bool
    bytes_per_chip: int  # total per chip (0 when XLA refused without naming a figure)
    memory: dict  # argument / output / alias / temp / code bytes per chip
    compile_s: float


def with_train(cfg: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
    """A copy of `cfg` with train.<field> replaced (the original stays untouched)."""
    c = cfg.copy_and_resolve_references()
    for k, v in fields.items():
        setattr(c.train, k, v)
    return c


def batch_like(
    mcfg: ModelConfig, batch_size: int, seq_len: int, images: int, with_images: bool = True
) -> dict:
    """The loader's batch (data/packing.py RowPacker.emit) as ShapeDtypeStructs, without shardings."""
    s = jax.ShapeDtypeStruct
    keys = ("ids", "targets", "positions", "segments", "source_ids")
    out = {k: s((batch_size, seq_len), jnp.int32) for k in keys}
    out["loss_mask"] = s((batch_size, seq_len), jnp.float32)
    if with_images:
        n = mcfg.siglip.image_size
        out["pixels"] = s((batch_size, images, n, n, 3), jnp.uint8)
        if mcfg.hybrid:
            h = mcfg.sam.image_size
            out["high_pixels"] = s((batch_size, images, h, h, 3), jnp.uint8)
    return out


def memory_stats(compiled) -> dict:
    """Per-chip bytes from memory_analysis(); total = arguments + outputs - donated aliases + temporaries
    + generated code (what must sit in HBM at the peak)."""
    ma = compiled.memory_analysis()
    m = {
        k: int(getattr(ma, f"{k}_size_in_bytes", 0) or 0)
        for k in ("argument", "output", "alias", "temp", "generated_code")
    }
    m["total"] = m["argument"] + m["output"] - m["alias"] + m["temp"] + m["generated_code"]
    # XLA's own heap peak, for reference
    m["xla_peak"] = int(getattr(ma, "peak_memory_in_bytes", 0) or 0)
    return m


_OOM = re.compile(r"RESOURCE_EXHAUSTED|Ran out of memory|out of memory", re.I)
# libtpu 0.0.42: "Ran out of memory on HBM, the total memory required for HLO temporaries (36.00G) exceeds
# available HBM (15.75G)"; older releases: "Used 120.5G of 95.7G hbm"
_USED = re.compile(r"required[^(]*\(([\d.]+)\s*([KMGT])i?B?\)|Used\s+([\d.]+)\s*([KMGT])", re.I)
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def oom_bytes(message: str) -> int:
    """The bytes an out-of-memory error says the program needs, else 0."""
    m = _USED.search(message)
    if not m:
        return 0
    num, unit = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return int(float(num) * _UNITS[unit.upper()])


def compile_step(
    cfg: ml_collections.ConfigDict,
    mcfg: ModelConfig,
    mesh,
    rules,
    hbm_bytes: int,
    log: Callable[[str], None] = print,
) -> Attempt:
    """Lower and compile the real train step for cfg.train's batch layout on `mesh`."""
    t = cfg.train
    factory = StateFactory(mcfg, t, mesh, rules, cfg.parallel.replicate_max_elems)
    state_like = factory.abstract_sharded()
    raw = batch_like(mcfg, t.batch_size, t.seq_len, t.images_per_sample)
    sh = batch_shardings(factory, raw)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh[k]) for k, v in raw.items()}
    start = time.perf_counter()
    try:
        compiled = CompiledStep(factory).lower(state_like, batch).compile()
    except Exception as e:
        msg = str(e)
        if not _OOM.search(msg):
            raise
        secs = time.perf_counter() - start
        line = next((ln for ln in msg.splitlines() if _OOM.search(ln)), msg.splitlines()[0])
        log(
            f"  batch {t.batch_size} x {t.microbatches} micro-batches: does not fit ({secs:.0f} s): {line[:200]}"
        )
        return Attempt(t.batch_size, t.microbatches, False, oom_bytes(msg), {}, secs)
    secs = time.perf_counter() - start
    mem = memory_stats(compiled)
    fits = mem["total"] <= hbm_bytes
    log(
        f"  batch {t.batch_size} x {t.microbatches} micro-batches: {mem['total'] / 2**30:.2f} GiB/chip of "
        f"{hbm_bytes / 2**30:.1f} ({'fits' if fits else 'too big'}; compiled in {secs:.0f} s)"
    )
    return Attempt(t.batch_size, t.microbatches, fits, mem["total"], mem, secs)


def microbatch_candidates(batch_size: int, shards: int) -> list[int]:
    """Micro-batch counts m (ascending) for which every micro-batch splits evenly over the batch shards."""
    if batch_size % shards:
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by the {shards} batch shards of the "
            f"mesh (parallel.ici/dcn data x fsdp)"
        )
    per = batch_size // shards
    return [m for m in range(1, per + 1) if per % m == 0]


class Search:
    """Compiles candidates with a budget; remembers every attempt."""

    def __init__(self, cfg, mcfg, mesh, rules, hbm_bytes: int, max_compiles: int, log=print):
        self.cfg, self.mcfg, self.mesh, self.rules, self.hbm = cfg, mcfg, mesh, rules, hbm_bytes
        self.left, self.log = max_compiles, log
        self.attempts: dict[tuple[int, int], Attempt] = {}

    def __call__(self, batch_size: int, microbatches: int) -> Attempt:
        key = (batch_size, microbatches)
        if key not in self.attempts:
            self.left -= 1
            c = with_train(self.cfg, batch_size=batch_size, microbatches=microbatches)
            self.attempts[key] = compile_step(
                c, self.mcfg, self.mesh, self.rules, self.hbm, self.log
            )
        return self.attempts[key]

    @property
    def exhausted(self) -> bool:
        return self.left <= 0


def fewest_microbatches(s: Search, batch_size: int, start: int, shards: int) -> Attempt:
    """The configured global batch with the fewest micro-batches that fit (memory falls as m grows).
    From the configured m: if it fits, bisect below it; if not, double m until one fits, then bisect in
    between. Returns the best fitting attempt, or the failing one at one micro-batch row per shard."""
    cand = microbatch_candidates(batch_size, shards)
    i = next((k for k, m in enumerate(cand) if m >= start), len(cand) - 1)
    if s(batch_size, cand[i]).fits:
        lo, hi = 0, i  # cand[hi] fits, everything below lo is known not to
    else:
        while True:
            if i == len(cand) - 1 or s.exhausted:
                return s(batch_size, cand[i])
            lo = i + 1
            i = next((k for k, m in enumerate(cand) if m >= 2 * cand[i]), len(cand) - 1)
            if s(batch_size, cand[i]).fits:
                hi = i
                break
    while lo < hi and not s.exhausted:
        mid = (lo + hi) // 2
        if s(batch_size, cand[mid]).fits:
            hi = mid
        else:
            lo = mid + 1
    return s(batch_size, cand[hi])


def largest_batch(s: Search, batch_size: int, microbatches: int, shards: int) -> Attempt:
    """The largest global batch (a multiple of shards x microbatches) that fits at a fixed micro-batch count:
    doubling from the configured batch, then bisection; halving first if the configured one does not fit."""
    unit = shards * microbatches
    n = max(1, batch_size // unit)
    a = s(n * unit, microbatches)
    if a.fits:
        good, bad = n, None
        while not s.exhausted:
            if s(2 * n * unit, microbatches).fits:
                n *= 2
                good = n
            else:
                bad = 2 * n
                break
    else:
        good, bad = None, n
        while n > 1 and not s.exhausted:
            n //= 2
            if s(n * unit, microbatches).fits:
                good = n
                break
            bad = n
        if good is None:
            return s.attempts[(bad * unit, microbatches)]
    while bad is not None and bad - good > 1 and not s.exhausted:
        mid = (good + bad) // 2
        if s(mid * unit, microbatches).fits:
            good = mid
        else:
            bad = mid
    return s.attempts[(good * unit, microbatches)]


def projection(
    mcfg: ModelConfig,
    t,
    factory_params: dict,
    trainable: set[str],
    mesh,
    *,
    chips: int,
    peak: float,
    ici_bytes_per_s: float,
    efficiency: float = DEFAULT_EFFICIENCY,
) -> dict:
    """Analytic step time and MFU for one optimizer step of cfg.train's layout.

    Compute: model FLOPs (train/metrics.step_flops) plus the forward recomputed by remat in every part that
    runs a backward pass, at `efficiency` x peak. Communication (FSDP): per micro-batch one all-gather of
    every parameter for the forward (compute dtype), one more for the remat'd backward of parts that run
    one, and one reduce-scatter of the trainable gradients (float32), each moving (n-1)/n of the bytes per
    chip over ICI;
    plus one all-reduce of the gradients over the data axis per step. Step time = max(compute, comm): the
    collectives overlap the matmuls. DCN (multi-slice) traffic is not modelled.
    """
    b, seq, img = t.batch_size, t.seq_len, t.images_per_sample
    model = M.step_flops(mcfg, tuple(t.trainable), b, seq, img)
    fwd = M.forward_flops(mcfg, b, seq, img)
    backward = M.backward_parts(tuple(t.trainable))
    remat = RECOMPUTE.get(mcfg.remat_policy, 1.0)
    hw = model + remat * sum(v for p, v in fwd.items() if p in backward)
    compute_s = hw / (chips * peak * efficiency)

    cdt = jnp.dtype(mcfg.dtype).itemsize
    gathered = grads = 0
    for path, v in flatten(factory_params).items():
        n = math.prod(v.shape)
        gathered += n * cdt * (1 + (remat if group_of(path) in backward else 0))
        grads += n * 4 if path in trainable else 0
    f, tp, d = mesh.shape.get("fsdp", 1), mesh.shape.get("tensor", 1), mesh.shape.get("data", 1)
    per_mb = (gathered + grads) / tp * (f - 1) / f
    comm_bytes = t.microbatches * per_mb + 2 * grads / (f * tp) * (d - 1) / d
    comm_s = comm_bytes / ici_bytes_per_s
    step_s = max(compute_s, comm_s)
    return {
        "flops_per_step": model,
        "hw_flops_per_step": hw,
        "compute_s": compute_s,
        "comm_bytes_per_chip": comm_bytes,
        "comm_s": comm_s,
        "projected_step_s": step_s,
        "projected_mfu": model / (step_s * chips * peak),
        "projected_tokens_per_s": b * seq / step_s,
        "peak_flops_per_chip": peak,
        "assumption": f"compiled FLOPs (model + remat recompute) at {efficiency:.0%} of peak; FSDP/data "
        f"collectives at full ICI bandwidth, overlapped with compute; DCN not modelled",
    }
