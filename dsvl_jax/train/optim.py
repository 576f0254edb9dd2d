"""Parameter groups, stage-aware trainable sets and the optimizer.

Which parts train is config data (`train.trainable`: a tuple of group names). Frozen parameters are
split off before differentiation: they get no gradient, no optimizer state and are never updated
(and XLA skips the backward pass of frozen towers that nothing upstream needs).

Groups (every parameter belongs to exactly one):
  siglip       the low-res SigLIP tower
  sam_trunk    SAM-B pretrained trunk: patch/pos embeddings and blocks
  sam_adaptor  DeepSeek's high-res adaptor part: neck, neck_hd, downsample convs, hd_alpha. The paper
               counts the SAM-side convs as part of the "VL adaptor", and the original code's
               freeze_high=False trains exactly {neck, neck_hd, downsamples, alpha}; the downsample
               convs are new (randomly initialised), so they must train with the adaptor.
  adaptor      the MLP adaptor
  llm          the language model (embeddings, blocks, head)
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dsvl_jax.errors import ConfigError
from dsvl_jax.train.schedules import make_schedule

GROUPS: dict[str, re.Pattern] = {
    "siglip": re.compile(r"^siglip/"),
    "sam_trunk": re.compile(r"^sam/(patch_embed|pos_embed|blocks_\d+)(/|$)"),
    "sam_adaptor": re.compile(r"^sam/(neck|neck_hd|downsample|hd_alpha)(/|$)"),
    "adaptor": re.compile(r"^adaptor/"),
    "llm": re.compile(r"^llm/"),
}

# The paper's stages (docs/recipe.md#what-trains), as data. Stage configs copy these into train.trainable.
STAGE_TRAINABLE = {
    1: ("adaptor", "sam_adaptor"),
    2: ("llm", "adaptor", "sam_adaptor"),
    3: ("llm", "adaptor", "sam_adaptor", "siglip"),
}


def group_of(path: str) -> str:
    hits = [g for g, rx in GROUPS.items() if rx.search(path)]
    if len(hits) != 1:
        raise ValueError(
            f"parameter {path!r} matches groups {hits}; it must match exactly one of {list(GROUPS)}"
        )
    return hits[0]


def trainable_paths(paths, trainable: tuple[str, ...]) -> set[str]:
    """The subset of flat parameter paths that train under `train.trainable`."""
    unknown = sorted(set(trainable) - set(GROUPS))
    if unknown:
        raise ConfigError(f"train.trainable: unknown group(s) {unknown}; known: {list(GROUPS)}")
    out = {p for p in paths if group_of(p) in trainable}
    if not out:
        raise ConfigError(
            f"train.trainable={tuple(trainable)} selects no parameter of this model: nothing would train"
        )
    return out


def _decay_mask(tree: dict[str, Any]) -> dict[str, bool]:
    """Weight decay on matrices only (kernels, embeddings), not on norms, biases, scalars."""
    return {k: k.endswith(("kernel", "embedding")) for k in tree}


def make_optimizer(t) -> optax.GradientTransformationExtraArgs:
    """AdamW with the configured schedule over a flat {path: array} dict (see `adamw`)."""
    return adamw(make_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay)


def adamw(
    schedule: optax.Schedule, b1: float, b2: float, eps: float, weight_decay: float = 0.0
) -> optax.GradientTransformationExtraArgs:
    """optax's AdamW (scale_by_adam -> add_decayed_weights(mask) -> scale_by_learning_rate, same maths and the
    same ScaleByAdamState), written as one transformation so the update runs in place.

    The skip of a non-finite step is part of the moment update here. Selecting the chain's whole new state
    against the old one afterwards kept the old moments alive after their donated buffers had been
    overwritten in place, so XLA copied mu and nu every step (the 'small' CPU config: 459 copies, 0.5 GB per
    step; 10 copies now). Each moment is now read and written once, in place.

    `ok=False` (a non-finite loss or gradient) keeps moments and count as they were; the caller keeps the
    parameters (the updates of such a step are not meaningful). Global-norm clipping happens in the step
    (train/step.py), which needs the norm for its metrics anyway.
    """

    def init(params):
        return optax.ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(jnp.zeros_like, params),
            nu=jax.tree.map(jnp.zeros_like, params),
        )

    def update(grads, state, params=None, *, ok=True, **_):
        if weight_decay and params is None:
            raise ValueError("adamw with weight decay needs the parameters")
        ok = jnp.asarray(ok, bool)
        mu = jax.tree.map(lambda g, m: jnp.where(ok, (1 - b1) * g + b1 * m, m), grads, state.mu)
        nu = jax.tree.map(
            lambda g, v: jnp.where(ok, (1 - b2) * jnp.square(g) + b2 * v, v), grads, state.nu
        )
        lr = schedule(state.count)
        count = state.count + ok.astype(jnp.int32)
        # a skipped first step must not divide by zero
        c = jnp.maximum(count, 1).astype(jnp.float32)
        bc1, bc2 = 1 - b1**c, 1 - b2**c
        decay = _decay_mask(grads) if weight_decay else dict.fromkeys(grads, False)

        def one(k):
            u = (mu[k] / bc1.astype(mu[k].dtype)) / (
                jnp.sqrt(nu[k] / bc2.astype(nu[k].dtype)) + eps
            )
            if decay[k]:
                u = u + weight_decay * params[k]
            return (-lr * u).astype(grads[k].dtype)

        return {k: one(k) for k in grads}, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(init, update)
