"""The hand-written cross-entropy backward equals autodiff of the plain formula."""

import jax
import jax.numpy as jnp
import numpy as np

from dsvl_jax.train.loss import cross_entropy


def _plain(logits, targets):
    logz = jax.nn.logsumexp(logits, -1)
    return logz - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0], logz


def test_values_and_gradients_match_autodiff():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 37)) * 3
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 37)
    w = jax.random.uniform(jax.random.key(2), (2, 5))

    def loss(fn, x):
        ce, logz = fn(x, targets)
        return jnp.sum(ce * w) + 1e-2 * jnp.sum(jnp.square(logz) * w)  # CE + z-loss

    for a, b in zip(cross_entropy(logits, targets), _plain(logits, targets)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    ga = jax.grad(lambda x: loss(cross_entropy, x))(logits)
    gb = jax.grad(lambda x: loss(_plain, x))(logits)
    np.testing.assert_allclose(ga, gb, rtol=1e-5, atol=1e-6)
    gbf = jax.grad(lambda x: loss(cross_entropy, x))(logits.astype(jnp.bfloat16))
    assert gbf.dtype == jnp.bfloat16


def test_chunked_head_cross_entropy_matches_materialised_logits():
    from dsvl_jax.train.loss import head_cross_entropy

    x = jax.random.normal(jax.random.key(0), (12, 16))
    w = jax.random.normal(jax.random.key(1), (16, 40)) * 0.5
    t = jax.random.randint(jax.random.key(2), (12,), 0, 40)
    wt = jax.random.uniform(jax.random.key(3), (12,))

    def loss(ce_logz):
        ce, logz = ce_logz
        return jnp.sum(ce * wt) + 1e-2 * jnp.sum(jnp.square(logz) * wt)

    ref = jax.value_and_grad(lambda x, w: loss(_plain(x @ w, t)), argnums=(0, 1))(x, w)
    for chunk in (3, 12):
        got = jax.value_and_grad(
            lambda x, w, chunk=chunk: loss(head_cross_entropy(x, w, t, chunk)), argnums=(0, 1)
        )(x, w)
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
        for a, b in zip(got[1], ref[1]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_step_loss_with_loss_chunk_equals_logits_path():
    from dsvl_jax.data.synthetic import synthetic_batch
    from dsvl_jax.model.params import flatten, init_params
    from dsvl_jax.model.sizes import model_config
    from dsvl_jax.train.step import loss_sums

    for size in ("tiny", "tiny_siglip"):  # untied and tied output heads
        cfg = model_config(size)
        params = flatten(init_params(cfg, 0))
        b = {k: jnp.asarray(v) for k, v in synthetic_batch(cfg, 2, 32).items()}
        # the lambda runs in this iteration only
        g = jax.jit(jax.grad(lambda p, c: loss_sums(p, {}, b, cfg, 1e-3, c)[0]), static_argnums=1)  # noqa: B023
        ref, got = g(params, 0), g(params, 16)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
