"""The training program: config -> mesh, state, data -> jitted steps -> metrics, eval, checkpoints.

`train(cfg, workdir)` is the one entry (the `train` command, the demo and the tests call it): it
validates the config, sets the run up (`setup`), runs the loop (`run_loop`), and writes `final/`.

Start-up order: resume the latest checkpoint in `workdir` (state + data iterator) > `init_from`
(any model folder: a previous stage's run dir, a params checkpoint, an HF folder; fresh optimizer
state) > random init. The host loop only feeds batches; metrics are read one step late
(train/tracker.py), so the host never waits on the device, and the input pipeline runs ahead in
grain threads (data_wait_fraction shows when it does not). A run of non-finite steps stops the run;
with train.spike_patience > 0 a loss spike rolls the run back to the checkpoint before it and skips the
batches that led to it (train/spikes.py; each rollback is a line of WORKDIR/rollbacks.jsonl). A full disk
under the logs ends the run with one line after an attempt to save the step it reached.

One run per workdir: process 0 holds WORKDIR/run.lock for the whole run (train/workdir_lock.py).
SIGTERM / SIGINT at every phase (`_Interrupts`): during set-up and the first compile the run exits at
once with nothing saved (Interrupted, exit 143 / 130); during training the loop saves the step it
reached and raises Preempted (SIGTERM, 143) / Interrupted (SIGINT, 130); during the final save final/
is finished first, then Interrupted; a second signal exits at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax

from dsvl_jax.checkpoints import FINAL_DIR, ModelSource, RunCheckpoints, open_model, save_params
from dsvl_jax.checkpoints.run import QUARANTINE_DIR, record_config_changes, saved_steps, short_error
from dsvl_jax.checkpoints.sources import RUN_CONFIG, STEPS_DIR
from dsvl_jax.checkpoints.talk import TALK_DIR, write_talk
from dsvl_jax.data import pipeline
from dsvl_jax.errors import SIGNAL_EXIT, CheckpointError, ConfigError, Interrupted, Preempted
from dsvl_jax.model.config import ModelConfig, architecture_diff, model_config_from_dict
from dsvl_jax.model.params import abstract_params, flatten
from dsvl_jax.parallel import compile_cache, distributed
from dsvl_jax.parallel.mesh import build_mesh
from dsvl_jax.parallel.rules import rules_from_config
from dsvl_jax.parallel.sharding import batch_shards, shard_host_batch
from dsvl_jax.train import metrics as M
from dsvl_jax.train import spikes, workdir_lock
from dsvl_jax.train.evaluate import Evaluator
from dsvl_jax.train.logger import LogWriteError, MetricsLogger
from dsvl_jax.train.optim import trainable_paths
from dsvl_jax.train.state import StateFactory, TrainState
from dsvl_jax.train.step import CompiledStep, check_lr
from dsvl_jax.train.tracker import RunError, StepTracker, batch_counts

log = logging.getLogger(__name__)

__all__ = ["Interrupted", "Preempted", "RunError", "RunResult", "train", "validate"]


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
    check_lr(t)  # a non-finite or absurd learning rate is refused before anything compiles
    spikes.check_config(t)
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


def setup(cfg, workdir: str, held: contextlib.ExitStack) -> Run:
    """Mesh, sharded state (resumed, initialised from init_from, or random), data, logging. Process 0
    takes the workdir's lock first; `held` releases it when the run ends, however it ends."""
    distributed.initialize(cfg.parallel)
    compile_cache.enable(cfg.parallel.get("compilation_cache_dir", ""))
    mcfg = validate(cfg)
    workdir = os.path.abspath(workdir)
    if jax.process_index() == 0:  # one run per workdir (a second one refuses, naming this one)
        held.callback(workdir_lock.acquire(workdir).release)
    init = _init_source(cfg, workdir)
    main = jax.process_index() == 0
    factory = _state_factory(cfg, mcfg)
    data_iter = iter(pipeline.build(cfg, host=jax.process_index(), hosts=jax.process_count()))
    evaluator = Evaluator(cfg, mcfg, factory) if cfg.eval.every_steps and cfg.eval.sources else None
    if main:
        os.makedirs(workdir, exist_ok=True)
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
    if main:  # once the resume's config check passed: a refused config leaves config.json as it was
        with open(os.path.join(workdir, RUN_CONFIG), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))
        if "config_changes" in meta:
            record_config_changes(workdir, **meta["config_changes"])
    start = int(meta.get("loop_step", 0))
    tracker = _tracker(cfg, mcfg, workdir, main, start, meta, data_iter)
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
    """(state, checkpoint meta): the latest good checkpoint (the data iterator is positioned with it;
    bad steps are moved aside, a config that differs from the checkpoint's is refused unless
    resume_overrides accepts it: checkpoints/run.py), else a random init whose params come from
    init_from when one is given. meta["config_changes"]: what setup records in config_history.jsonl."""
    ckpts.config = json.loads(cfg.to_json_best_effort())  # saved with every step, checked on resume
    got = ckpts.restore_latest(
        factory.abstract_sharded(), data_iter, accept=cfg.get("resume_overrides", "")
    )
    if got is not None:
        log.info("resumed from %s step %d", ckpts.directory, got.step)
        changes = dict(step=got.step, accepted=got.accepted, unchecked=got.unchecked)
        return got.state, {**got.meta, "config_changes": changes}
    state = factory.init(jax.random.key(cfg.train.seed))
    if init is not None:
        params = init.params(mcfg, factory.shardings.params)
        state = TrainState(step=state.step, params=params, opt_state=state.opt_state)
        log.info("initialised params from %s", cfg.init_from)
    return state, {}


def _tracker(cfg, mcfg, workdir: str, main: bool, start: int, meta: dict, data_iter) -> StepTracker:
    """The step tracker with its logger; its skip count and spike guard as the checkpoint left them."""
    t = cfg.train
    guard = spikes.SpikeGuard.from_config(t)
    guard.load(meta.get("spike", {}))
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
        skipped_total=int(meta.get("skipped_steps", 0)),
        spikes=guard,
        sources=pipeline.source_labels(cfg.data),
        data_stats=lambda: pipeline.iterator_stats(data_iter),
    )


def _init_source(cfg, workdir: str) -> ModelSource | None:
    """The model folder init_from names, opened before anything compiles (a fresh run only: a run with
    checkpoints resumes from them and never reads init_from; one whose steps were all moved aside as
    bad stops in _initial_state, it does not start over from init_from)."""
    steps_dir = os.path.join(workdir, STEPS_DIR)
    if (
        not cfg.init_from
        or saved_steps(steps_dir)
        or os.path.isdir(os.path.join(steps_dir, QUARANTINE_DIR))
    ):
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


SETUP, TRAINING, FINAL_SAVE = "set-up", "training", "final save"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HARD_EXIT_GRACE_S = 2.0  # set-up: how long the main thread gets to unwind before the watcher exits


class _Interrupts:
    """SIGTERM and SIGINT at every phase of a run (installed from the main thread only; elsewhere the
    signals keep their handlers).

    set-up (up to the end of the first step's compile): nothing to save. The handler raises
      Interrupted in the main thread. While that thread sits in a long C call (an XLA compile: minutes
      for 7B, longer than a preemption's grace period) no Python handler runs, so a watcher thread,
      woken by the signal itself through signal.set_wakeup_fd, prints the same one line, releases the
      workdir lock and ends the process when the run has not unwound within HARD_EXIT_GRACE_S.
    training: `hit` is set; the loop saves the step it reached and raises Preempted (SIGTERM) /
      Interrupted (SIGINT, exit 130).
    final save (with the last step, or in finish()): `hit` is set; final/ is finished, then train raises
      Interrupted with the signal's exit code.
    A second signal in any phase exits at once with its code: a step checkpoint being written is left
    uncommitted (orbax commits a step atomically: the rerun resumes from the last complete one), an
    unfinished final/ is written again by the rerun.
    """

    def __init__(self, before_exit: Callable[[], None]):
        self.phase = SETUP
        self.hit: str | None = None  # the first signal's name, once training is under way
        self._before_exit = before_exit
        self._raised = False
        self._signals = 0
        self._done = threading.Event()
        self._old: dict = {}
        self._old_fd = -1
        self._pipe: tuple[socket.socket, socket.socket] | None = None
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is not threading.main_thread():
            return self
        r, w = socket.socketpair()
        w.setblocking(False)
        self._pipe = (r, w)
        self._old_fd = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        self._old = {s: signal.signal(s, self._handle) for s in _SIGNALS}
        self._watcher = threading.Thread(target=self._watch, name="signal-watcher", daemon=True)
        self._watcher.start()
        return self

    def _handle(self, signum, _frame) -> None:  # the main thread, between two bytecodes
        name = signal.Signals(signum).name
        if self.phase != SETUP:
            self.hit = self.hit or name
        elif not self._raised:
            self._raised = True
            raise Interrupted.before_first_step(name)

    def _watch(self) -> None:  # each signal as it arrives, whatever the main thread is doing
        while True:
            try:
                got = self._pipe[0].recv(1)
            except OSError:
                return
            if not got or got == b"\0":  # __exit__
                return
            if got[0] not in _SIGNALS:
                continue
            name = signal.Signals(got[0]).name
            self._signals += 1
            if self._signals > 1:
                self._exit(name, self._second(name))
            if self.phase != SETUP:
                self.hit = self.hit or name
            elif not self._done.wait(HARD_EXIT_GRACE_S):  # the main thread is stuck in a C call
                self._exit(name, str(Interrupted.before_first_step(name)))

    def _second(self, name: str) -> str:
        if self.phase == SETUP:
            return f"second {name} during set-up: exiting at once, nothing saved"
        if self.phase == FINAL_SAVE:
            return (
                f"second {name} during the final save: exiting at once; final/ may be incomplete "
                "(rerunning the command writes it again)"
            )
        return (
            f"second {name}: exiting at once without waiting for a checkpoint; rerunning the "
            "command resumes from the last complete one"
        )

    def _exit(self, name: str, message: str) -> None:
        print(f"train: {message}", file=sys.stderr, flush=True)
        # the workdir lock (exiting anyway: a lock left behind is taken over by the next run)
        with contextlib.suppress(Exception):
            self._before_exit()
        os._exit(SIGNAL_EXIT[name])

    def stopped(self, step: int, directory: str) -> Interrupted:
        msg = (
            f"{self.hit} at step {step}: checkpoint saved in {directory}; rerunning the command "
            "resumes from it"
        )
        return Preempted(msg) if self.hit == "SIGTERM" else Interrupted(msg, SIGNAL_EXIT[self.hit])

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._pipe is None:
            return
        for s, old in self._old.items():
            signal.signal(s, old)
        signal.set_wakeup_fd(self._old_fd)
        r, w = self._pipe
        with contextlib.suppress(OSError):
            w.send(b"\0")
        self._watcher.join(timeout=HARD_EXIT_GRACE_S + 1)
        r.close()
        w.close()


def run_loop(run: Run, sig: _Interrupts) -> int:
    """Steps from run.start to train.steps; -> the last step reached. Checkpoints every
    checkpoint.every_steps (deferred while a loss spike is under watch), at the end, and on SIGTERM /
    SIGINT once the first step has compiled (then raises Preempted / Interrupted; before that the
    signal ends the run at once: `_Interrupts`). A spike the guard calls rolls the loop back
    (`_roll_back`); a full disk under the logs ends it after an attempt to save (`_saved_after`)."""
    cfg, f, tr = run.cfg, run.factory, run.tracker
    end, step = cfg.train.steps, run.start

    def save(force: bool) -> None:
        meta = {
            "loop_step": step,
            "skipped_steps": tr.skipped_total,
            "data": pipeline.iterator_stats(run.data_iter),
            "spike": tr.spikes.state(),
        }
        run.ckpts.save(step, run.state, run.data_iter, meta, force=force)

    if step < end:
        log.info("compiling the train step (step %d)", step + 1)
    try:
        while step < end:
            t0 = time.perf_counter()
            batch = next(run.data_iter)
            data_s = time.perf_counter() - t0
            counts = batch_counts(batch, run.mcfg.image_token_id, run.mcfg.num_image_tokens)
            run.state, metrics = run.step_fn(run.state, shard_host_batch(batch, f.mesh, f.rules))
            sig.phase = TRAINING  # compiled: from now on a signal stops the run with a checkpoint
            step += 1
            tr.dispatched(step, metrics, data_s, counts)
            if tr.spike is not None:
                step = _roll_back(run, step)
                continue
            if run.evaluator is not None and step % cfg.eval.every_steps == 0:
                tr.record({"step": step, **run.evaluator.run(run.state.params)})
            if step % cfg.checkpoint.every_steps == 0 or step == end or sig.hit:
                # the checkpoint's counters include this step
                tr.settle(force=step == end or bool(sig.hit))
                if tr.spike is not None:
                    step = _roll_back(run, step)
                    continue
                if tr.spikes.suspect and step < end and not sig.hit:
                    log.warning(
                        "step %d: checkpoint deferred, the loss is above its running mean since "
                        "step %d",
                        step,
                        tr.spikes.streak[0][0],
                    )
                else:
                    save(force=bool(sig.hit))
            if (
                sig.hit and step < end
            ):  # at the last step the run goes on to final/ (train raises after)
                raise sig.stopped(step, run.ckpts.directory)
        tr.settle(force=True)
    except LogWriteError as e:
        raise _saved_after(e, save, step, run.ckpts) from None
    return step


ROLLBACKS = "rollbacks.jsonl"


def _roll_back(run: Run, step: int) -> int:
    """The spike guard called a rollback at `step` (train/spikes.py): restore the newest good checkpoint
    before the spike's first step, keep the data iterator where it is (the batches in between are
    skipped), log one line and a line of rollbacks.jsonl; -> the step the loop goes on from. With no
    checkpoint before the spike the run goes on where it is (the spike's losses become the guard's new
    normal)."""
    tr = run.tracker
    spike, guard = tr.spike, tr.spikes
    accept = run.cfg.get("resume_overrides", "")
    got = run.ckpts.restore_before(spike.first, run.factory.abstract_sharded(), accept=accept)
    where = (
        f"loss spike at steps {spike.first}-{spike.last} (losses "
        + ", ".join(f"{x:.4g}" for x in spike.losses)
        + f" > {guard.factor:g} x the running mean {spike.mean:.4g})"
    )
    if got is None:
        log.warning(
            "%s: no checkpoint before step %d to roll back to; going on", where, spike.first
        )
        guard.forgive()
        tr.spike = None
        return step
    guard.rolled_back(got.meta.get("spike"))  # SpikeError past train.spike_max_rollbacks
    run.state = got.state
    tr.skipped_total = int(got.meta.get("skipped_steps", 0))
    skipped = step - got.step
    log.warning(
        "%s: rolled back to step %d, skipping the %d batches after it (rollback %d of at most %d)",
        where,
        got.step,
        skipped,
        guard.rollbacks,
        guard.max_rollbacks,
    )
    if run.main:
        rec = dict(
            at_step=step,
            spike_steps=[spike.first, spike.last],
            losses=list(spike.losses),
            running_mean=spike.mean,
            to_step=got.step,
            skipped_batches=skipped,
            rollback=guard.rollbacks,
        )
        with open(os.path.join(run.workdir, ROLLBACKS), "a") as fh:
            fh.write(json.dumps(rec) + "\n")
    tr.rewind(got.step)
    return got.step


def _saved_after(e: LogWriteError, save: Callable[[bool], None], step: int, ckpts) -> LogWriteError:
    """The run's records could not be written (disk full): try to save the step reached, since the
    checkpoints may live on another file system or fit where a log line did not; -> the error to
    raise, saying whether that worked and where a rerun resumes."""
    if step in ckpts.all_steps():
        return LogWriteError(f"{e} (step {step} is saved)")
    try:
        save(True)
        ckpts.wait()
        if step in ckpts.all_steps():
            return LogWriteError(f"{e} (step {step} was saved before stopping)")
        why = "the checkpoint manager did not keep it"
    except Exception as se:  # noqa: BLE001 - the original error is the one to report
        why = short_error(se)
    latest = ckpts.latest_step()
    resumes = f"step {latest}" if latest is not None else "the start (no checkpoint was saved)"
    return LogWriteError(
        f"{e} (saving step {step} failed too: {why}; a rerun resumes from {resumes})"
    )


def finish(run: Run, step: int) -> str:
    """After the last step: final/ (params + tokenizer: the next stage's init_from) and data stats.
    A signal meanwhile does not stop it: train raises Interrupted once it is written."""
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
    """Run (or resume) the configured training stage in `workdir`. Holds the workdir lock (process 0)
    and handles SIGTERM / SIGINT (`_Interrupts`) from set-up to the end of the final save."""
    with contextlib.ExitStack() as held, _Interrupts(before_exit=held.close) as sig:
        run = setup(cfg, workdir, held)
        try:  # a failing run still finishes its in-flight (async) checkpoint writes
            step = run_loop(run, sig)
            sig.phase = FINAL_SAVE
        finally:
            run.ckpts.close()
            run.tracker.logger.close()
        final = finish(run, step)
        if sig.hit:  # with the last step or during the final save: the run is complete
            raise Interrupted(
                f"{sig.hit} during the final save: final/ was completed first ({final}); the run "
                "is complete",
                SIGNAL_EXIT[sig.hit],
            )
    return RunResult(
        run.workdir, step, final, run.tracker.last, run.tracker.skipped_total, run.step_fn.compiles
    )
