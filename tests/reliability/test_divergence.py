"""Divergence never reaches the parameters: the jitted step skips an update that would make a parameter
non-finite (an lr that overflows, a NaN in a restored optimizer moment), keeps the old state and marks
the step skipped; an absurd train.lr is refused before anything starts (check_lr)."""

import math
import types

import jax
import numpy as np
import pytest

from dsvl_jax.config import base_config
from dsvl_jax.data.synthetic import synthetic_batch
from dsvl_jax.errors import ConfigError
from dsvl_jax.model.config import model_config_from_dict
from dsvl_jax.model.params import flatten
from dsvl_jax.parallel import build_mesh, rules_from_config, shard_host_batch
from dsvl_jax.train.state import StateFactory, TrainState
from dsvl_jax.train.step import MAX_LR, CompiledStep, check_lr
from dsvl_jax.train.tracker import BatchCounts, RunError, StepTracker


def _train_cfg(lr: float):
    c = base_config("tiny")
    c.train.trainable = ("llm", "adaptor")
    c.train.batch_size, c.train.seq_len = 4, 32
    c.train.lr, c.train.schedule, c.train.warmup_steps = lr, "constant", 0
    c.parallel.ici = dict(data=1, fsdp=1, tensor=1)
    return c


def _step(lr: float):
    """(factory, compiled step, batch) on one device: one compile per lr (the lr is a constant)."""
    c = _train_cfg(lr)
    mesh = build_mesh(c.parallel, jax.devices()[:1])
    f = StateFactory(model_config_from_dict(c.model), c.train, mesh, rules_from_config(None))
    batch = synthetic_batch(f.cfg, 4, 32, pad=3, seed=1)
    return f, CompiledStep(f), shard_host_batch(batch, f.mesh, f.rules)


def _host(tree) -> dict:
    return {k: np.asarray(v) for k, v in flatten(jax.device_get(tree)).items()}


def _run(step, state: TrainState, batch) -> tuple[dict, dict, dict, TrainState]:
    """(params before, params after, metrics, new state) of one step (the state is donated: the
    params are read first)."""
    before = _host(state.params)
    new, metrics = step(state, batch)
    return before, _host(new.params), {k: np.asarray(v) for k, v in metrics.items()}, new


@pytest.fixture(scope="module")
def normal_lr():
    return _step(1e-3)


@pytest.fixture(scope="module")
def initial(normal_lr):
    """One random initial state on the host, placed anew for each step (the step donates it)."""
    f = normal_lr[0]
    return f, jax.device_get(f.init(jax.random.key(0)))


def _place(f: StateFactory, host) -> TrainState:
    return jax.device_put(host, f.shardings)


def test_a_normal_step_updates_the_parameters(normal_lr, initial):
    f, step, batch = normal_lr
    before, after, m, new = _run(step, _place(f, initial[1]), batch)
    assert m["skipped"] == 0 and np.isfinite(m["loss"]) and int(new.step) == 1
    assert not np.array_equal(before["llm/blocks/q/kernel"], after["llm/blocks/q/kernel"])
    assert np.array_equal(before["siglip/pos_embed"], after["siglip/pos_embed"])  # frozen


def test_a_nan_in_a_restored_optimizer_moment_is_skipped(normal_lr, initial):
    """Loss and gradient are finite, the update is not: the step is skipped, nothing moves."""
    f, step, batch = normal_lr
    host = initial[1]
    mu = {k: np.array(v) for k, v in host.opt_state.mu.items()}
    mu["llm/blocks/up/kernel"][0, 1, 2] = np.nan
    host = host.replace(opt_state=host.opt_state._replace(mu=mu))
    before, after, m, new = _run(step, _place(f, host), batch)
    assert m["skipped"] == 1 and np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])
    assert int(new.step) == 0 and int(new.opt_state.count) == 0
    for p in before:
        np.testing.assert_array_equal(after[p], before[p], err_msg=p)
        assert np.isfinite(after[p]).all(), p


def test_an_lr_that_overflows_is_skipped(initial):
    """lr=1e39 is inf in float32: every update is inf or NaN. Built past check_lr on purpose: the
    step's own guard is what keeps the parameters."""
    f, step, batch = _step(1e39)
    before, after, m, new = _run(step, _place(f, initial[1]), batch)
    assert m["skipped"] == 1 and np.isfinite(m["loss"]) and int(new.step) == 0
    for p in before:
        np.testing.assert_array_equal(after[p], before[p], err_msg=p)
        assert np.isfinite(after[p]).all(), p


@pytest.mark.parametrize("lr", [1e39, 11.0, math.nan, math.inf, -1e-3])
def test_an_absurd_lr_is_refused(lr):
    c = _train_cfg(1e-3)
    c.train.lr = lr
    with pytest.raises(ConfigError, match=r"^train.lr="):
        check_lr(c.train)


@pytest.mark.parametrize("lr", ["abc", True, None])
def test_an_lr_that_is_no_number_is_refused(lr):
    """A ConfigDict keeps train.lr a float; a plain train section (a run's config.json) may not."""
    with pytest.raises(ConfigError, match=r"^train.lr="):
        check_lr(types.SimpleNamespace(lr=lr, schedule="constant"))


def test_a_step_schedule_that_climbs_past_the_limit_is_refused():
    c = _train_cfg(1e-2)
    c.train.schedule, c.train.step_factor = "step", 100.0  # two milestones: 1e-2 -> 100
    with pytest.raises(ConfigError, match=rf"peaks at 100 > {MAX_LR:g}"):
        check_lr(c.train)


@pytest.mark.parametrize("lr", [0.0, 1e-5, 4.2e-5, 1e-3, MAX_LR])
def test_ordinary_lrs_pass(lr):
    for schedule in ("cosine", "step", "constant"):
        c = _train_cfg(lr)
        c.train.schedule = schedule
        check_lr(c.train)


def test_the_abort_message_claims_no_checkpoint():
    class _Log:
        def write(self, rec):
            pass

        def progress(self, *a, **k):
            pass

    tr = StepTracker(_Log(), log_every=10, max_bad_steps=2, flops_per_step=1.0, peak_flops=0.0)
    m = {
        "loss": np.float32(2.0),
        "z_loss": np.float32(0),
        "grad_norm": np.float32(1.0),
        "tokens": np.float32(8),
        "learning_rate": np.float32(np.inf),
        "skipped": np.int32(1),
    }
    counts = BatchCounts(8, 0, 1.0, None)
    tr.dispatched(1, m, 0.0, counts)
    with pytest.raises(RunError) as e:
        tr.dispatched(2, m, 0.0, counts)
        tr.settle(force=True)
    msg = str(e.value)
    assert "2 non-finite steps in a row (last: step 2, non-finite update" in msg
    assert "latest saved checkpoint (if any) predates these steps" in msg
    assert "The last checkpoint holds" not in msg
