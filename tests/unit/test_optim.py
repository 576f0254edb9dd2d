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
    s = make_schedule(_t(lr=4.2e-5, warmup_steps=0, steps=1000, schedule="step", step_milestones=(0.8, 0.9),
                         step_factor=0.316))
    assert float(s(799)) == pytest.approx(4.2e-5)
    assert float(s(800)) == pytest.approx(4.2e-5 * 0.316)
    assert float(s(950)) == pytest.approx(4.2e-5 * 0.316 ** 2)


def test_every_parameter_is_in_exactly_one_group():
    for size in ("tiny", "7b"):
        from dsvl_jax.model.params import abstract_params
        paths = flatten(abstract_params(model_config(size))).keys()
        groups = {group_of(p) for p in paths}
        assert groups <= set(GROUPS)
    assert trainable_paths(paths, STAGE_TRAINABLE[1]) == {p for p in paths if p.startswith(
        ("adaptor/", "sam/neck/", "sam/neck_hd/", "sam/downsample/", "sam/hd_alpha"))}
    with pytest.raises(ValueError, match="unknown group"):
        trainable_paths(paths, ("vision",))


def test_z_loss_adds_mean_squared_log_partition():
    cfg = model_config("tiny")
    params = flatten(init_params(cfg, 0))
    b = {k: jnp.asarray(v) for k, v in synthetic_batch(cfg, 2, 32).items()}
    f = jax.jit(lambda z: loss_sums(params, {}, b, cfg, z))
    plain, aux = f(0.0)
    with_z, aux_z = f(1e-2)
    assert float(aux["z_sum"]) > 0
    np.testing.assert_allclose(float(with_z), float(plain) + 1e-2 * float(aux["z_sum"]), rtol=1e-6)
