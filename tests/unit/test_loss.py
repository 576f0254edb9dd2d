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
