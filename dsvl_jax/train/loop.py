"""The training program: config -> mesh, state, data -> jitted steps -> metrics, eval, checkpoints.

`train(cfg, workdir)` is the one entry (the `train` command, the demo and the tests call it): it
validates the config, sets the run up (`setup`), runs the loop (`run_loop`), and writes `final/`.

Start-up order: resume the latest checkpoint in `workdir` (state + data iterator) > `init_from`
(any model folder: a previous stage's run dir, a params checkpoint, an HF folder; fresh optimizer
state) > random init. The host loop only feeds batches; metrics are read one step late
(train/tracker.py), so the host never waits on the device, and the input pipeline runs ahead in
grain threads (data_wait_fraction shows when it does not). SIGTERM saves a checkpoint and raises
Preempted; a run of non-finite steps stops the run.
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

from dsvl_jax.checkpoints import FINAL_DIR, ModelSource, RunCheckpoints, open_model, save_params
from dsvl_jax.checkpoints.run import saved_steps
from dsvl_jax.checkpoints.sources import RUN_CONFIG, STEPS_DIR
from dsvl_jax.checkpoints.talk import TALK_DIR, write_talk
from dsvl_jax.data import pipeline
from dsvl_jax.errors import CheckpointError, ConfigError, Preempted
from dsvl_jax.model.config import ModelConfig, architecture_diff, model_config_from_dict
from dsvl_jax.model.params import abstract_params, flatten
from dsvl_jax.parallel import distributed
from dsvl_jax.parallel.mesh import build_mesh
from dsvl_jax.parallel.rules import rules_from_config
from dsvl_jax.parallel.sharding import batch_shards, shard_host_batch
from dsvl_jax.train import metrics as M
from dsvl_jax.train.evaluate import Evaluator
from dsvl_jax.train.logger import MetricsLogger
from dsvl_jax.train.optim import trainable_paths
from dsvl_jax.train.state import StateFactory, TrainState
from dsvl_jax.train.step import CompiledStep
from dsvl_jax.train.tracker import RunError, StepTracker, batch_counts

log = logging.getLogger(__name__)

__all__ = ["Preempted", "RunError", "RunResult", "train", "validate"]


@dataclasses.dataclass
class RunResult:
    workdir: str
    step: int
    final_dir: str
    last_metrics: dict
    skipped_steps: int
    compiles: int


def validate(cfg) -> ModelConfig:
    """Config checks that need no compile: model, stage, batch, data sources. Raises ConfigError."""
    mcfg = model_config_from_dict(cfg.model)
    t = cfg.train
    if not tuple(t.trainable):
        raise ConfigError("train.trainable is empty: the stage would train nothing")
    if not trainable_paths(flatten(abstract_params(mcfg)).keys(), tuple(t.trainable)):
        raise ConfigError(
            f"train.trainable={tuple(t.trainable)} selects no parameter of model {mcfg.vision}"
        )
    if t.batch_size % t.microbatches:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is not divisible by train.microbatches={t.microbatches}"
        )
    if t.steps <= 0:
        raise ConfigError(f"train.steps={t.steps} must be > 0")
    if not cfg.data.sources:
        raise ConfigError("data.sources is empty: nothing to train on")
    return mcfg


@dataclasses.dataclass
class Run:
    """Everything `setup` builds for one process of a run; `run_loop` drives it."""

    cfg: Any
    mcfg: ModelConfig
    workdir: str
    main: bool  # process 0 writes the shared files
    factory: StateFactory
    step_fn: CompiledStep
    data_iter: Any
    ckpts: RunCheckpoints
    state: TrainState
    start: int
    tracker: StepTracker
    evaluator: Evaluator | None


def setup(cfg, workdir: str) -> Run:
    """Mesh, sharded state (resumed, initialised from init_from, or random), data, logging."""
    distributed.initialize(cfg.parallel)
    mcfg = validate(cfg)
    workdir = os.path.abspath(workdir)
    init = _init_source(cfg, workdir)
    main = jax.process_index() == 0
    factory = _state_factory(cfg, mcfg)
    data_iter = iter(pipeline.build(cfg, host=jax.process_index(), hosts=jax.process_count()))
    evaluator = Evaluator(cfg, mcfg, factory) if cfg.eval.every_steps and cfg.eval.sources else None
    if main:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, RUN_CONFIG), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))
        # how this model talks, for every step checkpoint of the run (checkpoints/talk.py)
        write_talk(os.path.join(workdir, TALK_DIR), cfg.data.system_prompt, cfg.data.tokenizer)
    c = cfg.checkpoint
    ckpts = RunCheckpoints(
        os.path.join(workdir, STEPS_DIR),
        keep=c.keep,
        keep_period=c.keep_period,
        async_save=c.async_save,
    )
    state, meta = _initial_state(cfg, mcfg, factory, ckpts, data_iter, init)
    start = int(meta.get("loop_step", 0))
    tracker = _tracker(
        cfg, mcfg, workdir, main, start, int(meta.get("skipped_steps", 0)), data_iter
    )
    return Run(
        cfg,
        mcfg,
        workdir,
        main,
        factory,
        CompiledStep(factory),
        data_iter,
        ckpts,
        state,
        start,
        tracker,
        evaluator,
    )


def _state_factory(cfg, mcfg: ModelConfig) -> StateFactory:
    """The mesh, the rules and the sharded abstract state; the batch must split over the batch shards."""
    t = cfg.train
    mesh = build_mesh(cfg.parallel)
    rules = rules_from_config(cfg.parallel.rules_override)
    ways = batch_shards(mesh, rules)
    if (t.batch_size // t.microbatches) % ways:
        raise ConfigError(
            f"train.batch_size={t.batch_size} / train.microbatches={t.microbatches} is not divisible "
            f"by the {ways} batch shards of the mesh {dict(mesh.shape)} (the act_batch axes)"
        )
    return StateFactory(mcfg, t, mesh, rules, cfg.parallel.replicate_max_elems)


def _initial_state(cfg, mcfg, factory, ckpts, data_iter, init) -> tuple[TrainState, dict]:
    """(state, checkpoint meta): the latest checkpoint (the data iterator is positioned with it), else
    a random init whose params come from init_from when one is given."""
    latest = ckpts.latest_step()
    if latest is not None:
        state, meta = ckpts.restore(latest, factory.abstract_sharded(), data_iter)
        log.info("resumed from %s step %d", ckpts.directory, latest)
        return state, meta
    state = factory.init(jax.random.key(cfg.train.seed))
    if init is not None:
        params = init.params(mcfg, factory.shardings.params)
        state = TrainState(step=state.step, params=params, opt_state=state.opt_state)
        log.info("initialised params from %s", cfg.init_from)
    return state, {}


def _tracker(
    cfg, mcfg, workdir: str, main: bool, start: int, skipped: int, data_iter
) -> StepTracker:
    t = cfg.train
    logger = MetricsLogger(
        workdir,
        total_steps=t.steps,
        start_step=start,
        enabled=main,
        tensorboard=cfg.log.tensorboard,
        progress=cfg.log.progress,
    )
    flops = M.step_flops(mcfg, tuple(t.trainable), t.batch_size, t.seq_len, t.images_per_sample)
    peak = M.peak_flops_per_device(t.peak_flops_per_device) or M.measured_matmul_peak(mcfg.dtype)
    return StepTracker(
        logger,
        log_every=cfg.log.every_steps,
        max_bad_steps=t.max_bad_steps,
        flops_per_step=flops,
        peak_flops=peak,
        skipped_total=skipped,
        sources=pipeline.source_labels(cfg.data),
        data_stats=lambda: pipeline.iterator_stats(data_iter),
    )


def _init_source(cfg, workdir: str) -> ModelSource | None:
    """The model folder init_from names, opened before anything compiles (a fresh run only: a run with
    checkpoints resumes from them and never reads init_from)."""
    if not cfg.init_from or saved_steps(os.path.join(workdir, STEPS_DIR)):
        return None
    try:
        src = open_model(cfg.init_from)
    except CheckpointError as e:
        raise ConfigError(f"init_from={cfg.init_from}: {e}") from e
    diff = architecture_diff(model_config_from_dict(cfg.model), src.cfg)
    if diff:
        fix = " ".join(f"--config.model.{k}={_flag_value(v)}" for k, (_, v) in diff.items())
        raise ConfigError(
            f"init_from={cfg.init_from}: its model differs from this run's in "
            + ", ".join(f"model.{k} (config {a!r}, checkpoint {b!r})" for k, (a, b) in diff.items())
            + f"; run with the checkpoint's: {fix}"
        )
    return src


def _flag_value(v) -> str:
    """A value as --config.x= takes it: tuples as (1,2) / (1,)."""
    if isinstance(v, tuple):
        return "(" + ",".join(map(str, v)) + ("," if len(v) == 1 else "") + ")"
    return str(v)


class _Sigterm:
    """Turns SIGTERM into a flag the loop checks after each step (main thread only)."""

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


def run_loop(run: Run) -> int:
    """Steps from run.start to train.steps; -> the last step reached. Checkpoints every
    checkpoint.every_steps, at the end and on SIGTERM (then raises Preempted)."""
    cfg, f, tr = run.cfg, run.factory, run.tracker
    end, step = cfg.train.steps, run.start

    def save(force: bool) -> None:
        meta = {
            "loop_step": step,
            "skipped_steps": tr.skipped_total,
            "data": pipeline.iterator_stats(run.data_iter),
        }
        run.ckpts.save(step, run.state, run.data_iter, meta, force=force)

    with _Sigterm() as sig:
        while step < end:
            t0 = time.perf_counter()
            batch = next(run.data_iter)
            data_s = time.perf_counter() - t0
            counts = batch_counts(batch, run.mcfg.image_token_id, run.mcfg.num_image_tokens)
            run.state, metrics = run.step_fn(run.state, shard_host_batch(batch, f.mesh, f.rules))
            step += 1
            tr.dispatched(step, metrics, data_s, counts)
            if run.evaluator is not None and step % cfg.eval.every_steps == 0:
                tr.record({"step": step, **run.evaluator.run(run.state.params)})
            if step % cfg.checkpoint.every_steps == 0 or step == end or sig.hit:
                # the checkpoint's counters include this step
                tr.settle(force=step == end or sig.hit)
                save(force=sig.hit)
            if sig.hit:
                raise Preempted(
                    f"SIGTERM at step {step}: checkpoint saved in {run.ckpts.directory}"
                )
        tr.settle(force=True)
    return step


def finish(run: Run, step: int) -> str:
    """After the last step: final/ (params + tokenizer: the next stage's init_from) and data stats."""
    final = ""
    if step >= run.cfg.train.steps:
        final = os.path.join(run.workdir, FINAL_DIR)
        save_params(final, run.mcfg, run.state.params)
        # the params travel with their tokenizer and system prompt (chat, evaluate, export)
        if run.main:
            write_talk(final, run.cfg.data.system_prompt, run.cfg.data.tokenizer)
    if run.main:
        with open(os.path.join(run.workdir, "data_stats.json"), "w") as fh:
            json.dump(pipeline.iterator_stats(run.data_iter), fh, indent=1)
    return final


def train(cfg, workdir: str) -> RunResult:
    """Run (or resume) the configured training stage in `workdir`."""
    run = setup(cfg, workdir)
    try:  # a failing run still finishes its in-flight (async) checkpoint writes
        step = run_loop(run)
    finally:
        run.ckpts.close()
        run.tracker.logger.close()
    final = finish(run, step)
    return RunResult(
        run.workdir, step, final, run.tracker.last, run.tracker.skipped_total, run.step_fn.compiles
    )
