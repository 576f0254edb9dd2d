"""Schedules, parameter groups and the z-loss term."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsvl_jax.config import train_defaults
from dsvl_jax.data.synthetic import synthetic_batch
from dsvl_jax.model.params import flatten, init_params
from dsvl_jax.model.sizes import model_config
from dsvl_jax.train.optim import GROUPS, STAGE_TRAINABLE, group_of, trainable_paths
from dsvl_jax.train.schedules import make_schedule
from dsvl_jax.train.step import loss_sums


def _t(**kw):
    t = train_defaults()
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def test_cosine_with_linear_warmup():
    s = make_schedule(_t(lr=1e-3, warmup_steps=10, steps=110, schedule="cosine", end_lr_frac=0.1))
    assert float(s(0)) == 0.0
    assert float(s(5)) == pytest.approx(5e-4)
    assert float(s(10)) == pytest.approx(1e-3)
    assert float(s(60)) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5), rel=1e-5)
    assert float(s(110)) == pytest.approx(1e-4, rel=1e-5)


def test_step_decay_milestones():
    s = make_schedule(
        _t(
            lr=4.2e-5,
            warmup_steps=0,
            steps=1000,
            schedule="step",
            step_milestones=(0.8, 0.9),
            step_factor=0.316,
        )
    )
    assert float(s(799)) == pytest.approx(4.2e-5)
    assert float(s(800)) == pytest.approx(4.2e-5 * 0.316)
    assert float(s(950)) == pytest.approx(4.2e-5 * 0.316**2)


def test_every_parameter_is_in_exactly_one_group():
    for size in ("tiny", "7b"):
        from dsvl_jax.model.params import abstract_params

        paths = flatten(abstract_params(model_config(size))).keys()
        groups = {group_of(p) for p in paths}
        assert groups <= set(GROUPS)
    assert trainable_paths(paths, STAGE_TRAINABLE[1]) == {
        p
        for p in paths
        if p.startswith(
            ("adaptor/", "sam/neck/", "sam/neck_hd/", "sam/downsample/", "sam/hd_alpha")
        )
    }
    with pytest.raises(ValueError, match="unknown group"):
        trainable_paths(paths, ("vision",))


def test_z_loss_adds_mean_squared_log_partition():
    cfg = model_config("tiny")
    params = flatten(init_params(cfg, 0))
    b = {k: jnp.asarray(v) for k, v in synthetic_batch(cfg, 2, 32).items()}
    f = jax.jit(lambda z: loss_sums(params, {}, b, cfg, z))
    plain, aux = f(0.0)
    with_z, _ = f(1e-2)
    assert float(aux["z_sum"]) > 0
    np.testing.assert_allclose(float(with_z), float(plain) + 1e-2 * float(aux["z_sum"]), rtol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_inplace_adamw_equals_the_optax_chain(weight_decay):
    """train/optim.adamw is optax's scale_by_adam -> add_decayed_weights(matrices) -> scale_by_learning_rate,
    and a step flagged not ok leaves its state exactly as it was."""
    import optax

    from dsvl_jax.train.optim import _decay_mask, adamw

    t = _t(lr=1e-2, warmup_steps=2, steps=10, schedule="cosine")
    sched = make_schedule(t)
    parts = [optax.scale_by_adam(b1=0.9, b2=0.95, eps=1e-8)]
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask=_decay_mask))
    ref = optax.chain(*parts, optax.scale_by_learning_rate(sched))
    ours = adamw(sched, b1=0.9, b2=0.95, eps=1e-8, weight_decay=weight_decay)
    rng = np.random.default_rng(0)
    params = {
        "a/kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        "a/bias": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
    }
    s_ref, s_ours = ref.init(params), ours.init(params)
    upd = jax.jit(ours.update)
    for i in range(4):
        g = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in params.items()}
        u_ref, s_ref = ref.update(g, s_ref, params)
        u, s_ours = upd(g, s_ours, params, ok=True)
        for k in params:
            np.testing.assert_allclose(
                np.asarray(u[k]), np.asarray(u_ref[k]), rtol=2e-6, atol=1e-9, err_msg=f"{i} {k}"
            )
            np.testing.assert_allclose(
                np.asarray(s_ours.mu[k]), np.asarray(s_ref[0].mu[k]), rtol=1e-6
            )
            np.testing.assert_allclose(
                np.asarray(s_ours.nu[k]), np.asarray(s_ref[0].nu[k]), rtol=1e-6
            )
        params = optax.apply_updates(params, u_ref)
    assert int(s_ours.count) == 4
    bad = {k: jnp.full(v.shape, jnp.nan) for k, v in params.items()}
    _, kept = upd(bad, s_ours, params, ok=False)
    assert int(kept.count) == 4
    for k in params:
        assert np.array_equal(np.asarray(kept.mu[k]), np.asarray(s_ours.mu[k]))
        assert np.array_equal(np.asarray(kept.nu[k]), np.asarray(s_ours.nu[k]))
