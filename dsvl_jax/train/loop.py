"""The training program: config -> mesh, state, data -> jitted steps -> metrics, eval, checkpoints.

Start-up order: resume the latest checkpoint in `workdir` (state + data iterator) > `init_from`
(previous stage's params or an HF folder; fresh optimizer state) > random init. The host loop
only feeds batches and reads metrics one step late, so it never waits on the device; the input
pipeline runs in grain threads ahead of the step (data_wait_fraction shows when it does not).
SIGTERM saves a checkpoint and exits; a run of non-finite steps stops the run.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any

import jax
import numpy as np

from dsvl_jax.data import pipeline
from dsvl_jax.model.config import ModelConfig, model_config_from_dict
from dsvl_jax.model.params import flatten
from dsvl_jax.parallel import distributed
from dsvl_jax.parallel.mesh import build_mesh
from dsvl_jax.parallel.rules import rules_from_config
from dsvl_jax.parallel.sharding import batch_shards, shard_host_batch
from dsvl_jax.train import metrics as M
from dsvl_jax.train.logger import MetricsLogger
from dsvl_jax.train.run_checkpoints import RunCheckpoints
from dsvl_jax.train.state import StateFactory, TrainState
from dsvl_jax.train.step import CompiledStep

log = logging.getLogger(__name__)
FINAL_DIR = "final"  # params + model_config.json of the last step: the next stage's init_from


class RunError(RuntimeError):
    """The run cannot go on (bad config, too many non-finite steps)."""


class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint was saved."""


@dataclasses.dataclass
class RunResult:
    workdir: str
    step: int
    final_dir: str
    last_metrics: dict
    skipped_steps: int
    compiles: int


def validate(cfg) -> ModelConfig:
    """Config checks that need no compile: model, stage, batch vs mesh, data sources. Raises with one line."""
    from dsvl_jax.train.optim import trainable_paths
    from dsvl_jax.model.params import abstract_params

    mcfg = model_config_from_dict(cfg.model)
    t = cfg.train
    if not tuple(t.trainable):
        raise RunError("train.trainable is empty: the stage would train nothing")
    if not trainable_paths(flatten(abstract_params(mcfg)).keys(), tuple(t.trainable)):
        raise RunError(f"train.trainable={tuple(t.trainable)} selects no parameter of model {mcfg.vision}")
    if t.batch_size % t.microbatches:
        raise RunError(f"train.batch_size={t.batch_size} is not divisible by train.microbatches={t.microbatches}")
    if t.steps <= 0:
        raise RunError(f"train.steps={t.steps} must be > 0")
    if not cfg.data.sources:
        raise RunError("data.sources is empty: nothing to train on")
    return mcfg


def _host_stats(batch: dict, image_token_id: int) -> dict:
    """Token counts of this host's rows, scaled to the global batch (hosts feed equal shares)."""
    seg = batch["segments"] > 0
    img = (batch["ids"] == image_token_id) & seg
    n = jax.process_count()
    return {"text_tokens": n * int(seg.sum() - img.sum()), "image_tokens": n * int(img.sum())}


def _load_init(path: str, cfg: ModelConfig, shardings) -> Any:
    """Params from a previous run dir (its final/), a params checkpoint, or an HF folder."""
    from dsvl_jax.train.checkpoint import load_params

    if os.path.exists(os.path.join(path, FINAL_DIR, "model_config.json")):
        path = os.path.join(path, FINAL_DIR)
    if os.path.exists(os.path.join(path, "model_config.json")):
        return load_params(path, cfg, shardings)[1]
    if any(f.endswith(".safetensors") for f in os.listdir(path)):
        from dsvl_jax.interop.hf_import import load_hf
        from dsvl_jax.train.checkpoint import check_against
        _, params = load_hf(path, scan_layers=cfg.scan_layers)
        check_against(cfg, {k: tuple(np.shape(v)) for k, v in flatten(params).items()}, path)
        return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x, np.float32), s), params, shardings)
    raise RunError(f"init_from={path}: not a run dir (final/), a dsvl_jax checkpoint or an HF folder")


class _Sigterm:
    def __init__(self):
        self.hit = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, *_):
        self.hit = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def train(cfg, workdir: str, *, sources=None, eval_sources=None, stop_at: int | None = None,
          fail_at_steps: tuple[int, ...] = ()) -> RunResult:
    """Run (or resume) the configured training in `workdir`.

    `sources` / `eval_sources` replace data.sources / eval.sources (tests); `stop_at` ends this process
    after that step with a checkpoint (the run itself continues on the next call); `fail_at_steps`
    inject non-finite batches (tests)."""
    distributed.initialize(cfg.parallel)
    mcfg = validate(cfg) if sources is None else model_config_from_dict(cfg.model)
    t = cfg.train
    workdir = os.path.abspath(workdir)
    main = jax.process_index() == 0
    if main:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))

    mesh = build_mesh(cfg.parallel)
    rules = rules_from_config(cfg.parallel.rules_override)
    batch_ways = batch_shards(mesh, rules)
    if (t.batch_size // t.microbatches) % batch_ways:
        raise RunError(f"train.batch_size={t.batch_size} / train.microbatches={t.microbatches} is not divisible by "
                       f"the {batch_ways} batch shards of the mesh {dict(mesh.shape)} (the act_batch axes)")
    factory = StateFactory(mcfg, t, mesh, rules, cfg.parallel.replicate_max_elems)
    step_fn = CompiledStep(factory)
    data = pipeline.build(cfg, host=jax.process_index(), hosts=jax.process_count(), sources=sources)
    data_iter = iter(data)

    ckpts = RunCheckpoints(os.path.join(workdir, "checkpoints"), keep=cfg.checkpoint.keep,
                           keep_period=cfg.checkpoint.keep_period, async_save=cfg.checkpoint.async_save)
    abstract = factory.abstract_sharded()
    latest = ckpts.latest_step()
    meta = {"skipped_steps": 0}
    if latest is not None:
        state, meta = ckpts.restore(latest, abstract, data_iter)
        log.info("resumed from %s step %d", ckpts.directory, latest)
    else:
        state = factory.init(jax.random.key(t.seed))
        if cfg.init_from:
            params = _load_init(cfg.init_from, mcfg, factory.shardings.params)
            state = TrainState(step=state.step, params=params, opt_state=state.opt_state)
            log.info("initialised params from %s", cfg.init_from)
    start = int(meta.get("loop_step", 0))
    skipped_total = int(meta.get("skipped_steps", 0))

    flops = M.step_flops(mcfg, tuple(t.trainable), t.batch_size, t.seq_len, t.images_per_sample)
    peak = M.peak_flops_per_device(t.peak_flops_per_device) or M.measured_matmul_peak(mcfg.dtype)
    logger = MetricsLogger(workdir, total_steps=t.steps, start_step=start, enabled=main,
                           tensorboard=cfg.log.tensorboard, progress=cfg.log.progress)
    evaluator = None
    if cfg.eval.every_steps and (cfg.eval.sources or eval_sources):
        from dsvl_jax.train.evaluate import Evaluator
        evaluator = Evaluator(cfg, mcfg, factory, sources=eval_sources)

    def save(step: int, st, *, force: bool = False):
        m = {"loop_step": step, "skipped_steps": skipped_total, "data": pipeline.iterator_stats(data_iter)}
        ckpts.save(step, st, data_iter, m, force=force)

    bad_run, pending, last = 0, None, {}
    acc = {"data_s": 0.0, "wall_s": 0.0, "text_tokens": 0, "image_tokens": 0, "n": 0}
    tick = time.perf_counter()
    step = start
    end = t.steps if stop_at is None else min(t.steps, stop_at)
    try:  # a failing run still finishes its in-flight (async) checkpoint writes
        with _Sigterm() as sig:
            while step < end:
                t0 = time.perf_counter()
                host_batch = next(data_iter)
                t1 = time.perf_counter()
                if step in fail_at_steps:  # tests: an injected bad batch
                    host_batch = dict(host_batch, loss_mask=host_batch["loss_mask"] * np.float32("nan"))
                hs = _host_stats(host_batch, mcfg.image_token_id)
                state, metrics = step_fn(state, shard_host_batch(host_batch, mesh, rules))
                step += 1
                if pending is not None:  # read the previous step's metrics while this one runs
                    last, bad_run, skipped_total = _finish(pending, last, bad_run, skipped_total, t, logger, cfg,
                                                           flops, peak, acc)
                now = time.perf_counter()
                acc["data_s"] += t1 - t0
                acc["wall_s"] += now - tick
                tick = now
                acc["text_tokens"] += hs["text_tokens"]
                acc["image_tokens"] += hs["image_tokens"]
                acc["n"] += 1
                pending = (step, metrics)
                if evaluator is not None and step % cfg.eval.every_steps == 0:
                    rec = {"step": step, **evaluator.run(state.params)}
                    logger.write(rec)
                    last.update(rec)
                ckpt_now = step % cfg.checkpoint.every_steps == 0 or step == end or sig.hit
                if ckpt_now:  # log this step first, so the checkpoint's counters include it
                    last, bad_run, skipped_total = _finish(pending, last, bad_run, skipped_total, t, logger, cfg,
                                                           flops, peak, acc, force=step == end or sig.hit)
                    pending = None
                    save(step, state, force=sig.hit)
                if sig.hit:
                    raise Preempted(f"SIGTERM at step {step}: checkpoint saved in {ckpts.directory}")
            if pending is not None:
                last, bad_run, skipped_total = _finish(pending, last, bad_run, skipped_total, t, logger, cfg, flops,
                                                       peak, acc, force=True)
    finally:
        ckpts.close()
        logger.close()
    final = ""
    if step >= t.steps:  # the stage is complete: its params are the next stage's init_from
        from dsvl_jax.train.checkpoint import save_params
        final = os.path.join(workdir, FINAL_DIR)
        save_params(final, mcfg, state.params)
        tok = cfg.data.tokenizer
        if main and tok and os.path.isfile(tok):  # the final params travel with their tokenizer (chat, export)
            import shutil
            shutil.copy(tok, os.path.join(final, os.path.basename(tok)))
    if main:
        with open(os.path.join(workdir, "data_stats.json"), "w") as f:
            json.dump(pipeline.iterator_stats(data_iter), f, indent=1)
    return RunResult(workdir, step, final, last, skipped_total, step_fn.compiles)


def _chips() -> int:
    """Devices that each reach the peak: on CPU the fake devices share one machine per process."""
    return jax.process_count() if jax.devices()[0].platform == "cpu" else jax.device_count()


def _finish(pending, last, bad_run, skipped_total, t, logger, cfg, flops, peak, acc, force: bool = False):
    """Read one step's metrics (one step late), count skips, and log every log.every_steps."""
    step, metrics = pending
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if m["skipped"]:
        skipped_total += 1
        bad_run += 1
        log.warning("step %d: non-finite loss/gradient (loss=%s grad_norm=%s): update skipped", step, m["loss"],
                    m["grad_norm"])
        if bad_run >= t.max_bad_steps:
            raise RunError(f"{bad_run} non-finite steps in a row (last: step {step}); stopping. The last "
                           f"checkpoint holds finite parameters; lower train.lr or check the data.")
    else:
        bad_run = 0
    if step % cfg.log.every_steps == 0 or force:
        n = max(acc["n"], 1)
        step_s = acc["wall_s"] / n
        rec = {"step": step, "loss": m["loss"], "learning_rate": m["learning_rate"], "grad_norm": m["grad_norm"],
               "z_loss": m["z_loss"], "loss_tokens": int(m["tokens"]) if np.isfinite(m["tokens"]) else 0,
               "skipped_steps": skipped_total,
               "step_s": step_s, "tokens_per_s": (acc["text_tokens"] + acc["image_tokens"]) / max(acc["wall_s"], 1e-9),
               "text_tokens_per_s": acc["text_tokens"] / max(acc["wall_s"], 1e-9),
               "image_tokens_per_s": acc["image_tokens"] / max(acc["wall_s"], 1e-9),
               "mfu": M.mfu(flops, step_s, _chips(), peak) if peak else float("nan"),
               "data_wait_fraction": acc["data_s"] / max(acc["wall_s"], 1e-9)}
        logger.write(rec)
        logger.progress(step, loss=m["loss"], tok_s=rec["tokens_per_s"])
        last = {**last, **rec}
        acc.update(data_s=0.0, wall_s=0.0, text_tokens=0, image_tokens=0, n=0)
    return last, bad_run, skipped_total
