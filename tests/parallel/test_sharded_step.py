"""The sharded train step on a fake 8-device CPU mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_config

from dsvl_jax.model.config import model_config_from_dict
from dsvl_jax.model.params import flatten
from dsvl_jax.parallel import (
    MeshError,
    ShardingError,
    build_mesh,
    per_device_bytes,
    rules_from_config,
    shard_host_batch,
)
from dsvl_jax.train.state import StateFactory
from dsvl_jax.train.step import CompiledStep, loss_sums, split_trainable

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)]


def _factory(c, devices=None):
    mesh = build_mesh(c.parallel, devices)
    return StateFactory(model_config_from_dict(c.model), c.train, mesh, rules_from_config(None))


def _loss_and_grads(f: StateFactory, params, batch):
    """Mean loss and gradients wrt every trainable parameter, jitted on the factory's mesh."""
    import flax.linen as nn

    def fn(p, b):
        train, frozen = split_trainable(p, f.trainable)
        total = jnp.sum(b["loss_mask"])
        (s, _), g = jax.value_and_grad(loss_sums, has_aux=True)(train, frozen, b, f.cfg, 0.0)
        return s / total, jax.tree.map(lambda x: x / total, g)

    with jax.set_mesh(f.mesh), nn.logical_axis_rules(f.rules):
        return jax.jit(fn)(params, batch)


@pytest.fixture(scope="module")
def reference(devices, batch_np):
    f = _factory(make_config(ici=(1, 1, 1)), devices[:1])
    params = f.init(jax.random.key(0)).params
    host = jax.tree.map(np.asarray, params)
    loss, grads = _loss_and_grads(f, params, shard_host_batch(batch_np, f.mesh, f.rules))
    return host, float(loss), jax.tree.map(np.asarray, grads)


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_loss_and_grads_match_single_device(shape, reference, batch_np):
    host, ref_loss, ref_grads = reference
    f = _factory(make_config(ici=shape))
    params = jax.device_put(host, f.shardings.params)
    batch = shard_host_batch(batch_np, f.mesh, f.rules)
    # The batch is split over the data axes, and parameters over fsdp/tensor (not silently replicated).
    assert batch["ids"].sharding.shard_shape(batch["ids"].shape)[0] == 8 // (shape[0] * shape[1])
    if shape[1] * shape[2] > 1:
        assert any(not a.sharding.is_fully_replicated for a in jax.tree.leaves(params))
    loss, grads = _loss_and_grads(f, params, batch)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
    flat_ref, flat = flatten(ref_grads), flatten(jax.tree.map(np.asarray, grads))
    assert flat.keys() == flat_ref.keys()
    for k in flat:
        np.testing.assert_allclose(flat[k], flat_ref[k], atol=2e-6, rtol=1e-4, err_msg=k)


def test_fsdp_shards_params_and_optimizer_state(devices):
    f = _factory(make_config(ici=(1, 8, 1)))
    state = f.init(jax.random.key(0))
    total = sum(a.nbytes for a in jax.tree.leaves(state))
    per_dev = per_device_bytes(state)
    assert len(per_dev) == 8
    worst = max(per_dev.values())
    print(
        f"FSDP(8): total {total} B, per device max {worst} B = {worst / (total / 8):.3f} x total/8"
    )
    # Only 1-D norms, positions and the 3-channel patch convs stay replicated: within 10% of total/8.
    assert worst <= 1.10 * total / 8
    assert min(per_dev.values()) >= 0.95 * total / 8


def test_stage1_freezes_everything_but_the_adaptor(devices, batch_np):
    c = make_config(trainable=("adaptor", "sam_adaptor"), ici=(2, 2, 2), warmup_steps=0, lr=1e-2)
    f = _factory(c)
    state = f.init(jax.random.key(1))
    before = {k: np.asarray(v) for k, v in flatten(state.params).items()}
    # Frozen parameters have no optimizer state at all.
    mu = state.opt_state.mu
    assert set(mu) == set(f.trainable)
    assert all(k.startswith(("adaptor/", "sam/neck", "sam/downsample", "sam/hd_alpha")) for k in mu)
    step = CompiledStep(f)
    batch = shard_host_batch(batch_np, f.mesh, f.rules)
    losses = []
    for _ in range(5):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    after = {k: np.asarray(v) for k, v in flatten(state.params).items()}
    for k in before:
        if k in f.trainable:
            assert not np.array_equal(before[k], after[k]), f"trainable {k} did not move"
        else:
            assert np.array_equal(before[k], after[k]), f"frozen {k} changed"
    assert losses[-1] < losses[0]
    # One compile for the whole run, whatever the step count.
    assert step.compiles == 1
    assert int(state.step) == 5


def test_microbatch_accumulation_equals_full_batch(devices, batch_np):
    out = {}
    for m in (1, 2):
        f = _factory(make_config(ici=(2, 2, 2), microbatches=m, warmup_steps=0))
        state = f.init(jax.random.key(0))
        state, metrics = CompiledStep(f)(state, shard_host_batch(batch_np, f.mesh, f.rules))
        out[m] = (
            float(metrics["loss"]),
            float(metrics["grad_norm"]),
            {k: np.asarray(v) for k, v in flatten(state.params).items()},
        )
    assert out[1][0] == pytest.approx(out[2][0], rel=1e-6)
    assert out[1][1] == pytest.approx(out[2][1], rel=1e-5)
    # Adam's first update is ~lr * g/|g|: parameters agree to 1% of one update (lr = 1e-3).
    for k in out[1][2]:
        np.testing.assert_allclose(out[1][2][k], out[2][2][k], atol=1e-5, err_msg=k)


def test_mesh_that_does_not_match_devices(devices):
    c = make_config(ici=(3, 1, 1))
    with pytest.raises(MeshError, match=r"mesh 3x1x1 = 3 devices does not match the 8 devices"):
        build_mesh(c.parallel)
    c = make_config(ici=(3, -1, 1))
    with pytest.raises(
        MeshError, match=r"8 devices are not divisible by the fixed axes' product 3"
    ):
        build_mesh(c.parallel)


def test_dim_not_divisible_by_mesh_axis(devices):
    c = make_config(ici=(1, 1, 8))  # tiny LLM has 4 heads, 2 kv heads
    with pytest.raises(
        ShardingError,
        match=r"dim \d+ \(logical '(heads|kv_heads|vit_heads)'\) is not divisible by "
        r"mesh axes \('tensor',\) of size 8",
    ):
        _factory(c)


def test_nothing_trainable_is_refused(devices):
    c = make_config(trainable=("sam_trunk",))
    c.model.vision = "siglip"
    c.model.adaptor.kind = "mlp"
    with pytest.raises(ValueError, match="selects no parameter"):
        _factory(c)


def test_splash_on_a_mesh_matches_xla(devices, tiny_model_cfg):
    """Splash runs per (batch, head) shard inside shard_map: same loss and grads as XLA attention on a
    (2, 2, 2) mesh, with padding and packed documents (seq 128, the kernel's block multiple)."""
    from dsvl_jax.data.synthetic import synthetic_batch

    batch_np = synthetic_batch(tiny_model_cfg, 8, 128, pad=9, seed=4)
    batch_np["segments"][1, 60:] = 2  # a second packed document in row 1
    out = {}
    for impl in ("xla", "splash"):
        c = make_config(ici=(2, 2, 2))
        c.train.seq_len = 128
        c.model.attention = impl
        f = _factory(c)
        params = f.init(jax.random.key(0)).params
        out[impl] = _loss_and_grads(f, params, shard_host_batch(batch_np, f.mesh, f.rules))
    np.testing.assert_allclose(float(out["splash"][0]), float(out["xla"][0]), rtol=1e-5)
    ref, got = (
        flatten(jax.tree.map(np.asarray, out["xla"][1])),
        flatten(jax.tree.map(np.asarray, out["splash"][1])),
    )
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], atol=1e-5, rtol=1e-3, err_msg=k)
