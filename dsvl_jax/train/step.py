"""The pure train step: next-token cross-entropy on masked targets, micro-batch gradient accumulation,
global-norm clipping and AdamW over the trainable subset.

Batch (global arrays, leading axis = sequences, sharded over the act_batch mesh axes):
  ids, targets, positions, segments [B, T] int32; loss_mask [B, T] float32
  pixels [B, I, S, S, 3], high_pixels [B, I, Sh, Sh, 3] (I images per sample; absent for text-only);
  uint8 views from the loader are normalised here, on device (per-tower mean/std), floats pass as they are
  source_ids [B, T] int32 (optional): the data source of each position + 1 (0 = padding)
Loss = (sum of token CE + z_loss * logZ^2 over loss_mask) / (number of loss tokens in the whole batch),
so accumulation over micro-batches is exactly the full-batch gradient. With source_ids the step also
returns the CE sum and the loss-token count of each source (up to MAX_SOURCES), from which the
host reports the loss per source and per modality (train/tracker.py).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dsvl_jax.data import pipeline
from dsvl_jax.data.preprocess import image_spec, normalize_batch
from dsvl_jax.errors import ConfigError
from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.llm import head_kernel
from dsvl_jax.model.params import unflatten
from dsvl_jax.model.vlm import DeepseekVL
from dsvl_jax.parallel.sharding import batch_sharding
from dsvl_jax.train.loss import cross_entropy, head_cross_entropy
from dsvl_jax.train.state import StateFactory, TrainState, split_trainable

# data sources a run reports the loss of (source_ids 1..MAX_SOURCES; the pipeline allows no more)
MAX_SOURCES = pipeline.MAX_SOURCES


def _forward(cfg: ModelConfig, params: Any, mb: dict, output: str = "logits") -> jax.Array:
    # loader batches: normalise on device
    if mb.get("pixels") is not None and mb["pixels"].dtype == jnp.uint8:
        mb = normalize_batch(mb, image_spec(cfg))
    return DeepseekVL(cfg).apply(
        {"params": params},
        mb["ids"],
        mb["positions"],
        mb["segments"],
        pixels=mb.get("pixels"),
        high_pixels=mb.get("high_pixels"),
        output=output,
    )[0]


def loss_sums(
    train: dict, frozen: dict, mb: dict, cfg: ModelConfig, z_loss: float, loss_chunk: int = 0
):
    """(sum of weighted loss, aux sums) for one micro-batch.

    loss_chunk > 0 applies the output head inside the loss, `loss_chunk` tokens at a time
    (train/loss.py:head_cross_entropy); 0 materialises the [B, T, V] logits.
    """
    params = unflatten({**train, **frozen})
    if loss_chunk:
        h = _forward(cfg, params, mb, output="hidden")
        n = h.shape[0] * h.shape[1]
        if n % loss_chunk:
            raise ConfigError(
                f"train.loss_chunk={loss_chunk} must divide the tokens per micro-batch ({n})"
            )
        w = head_kernel(params, cfg.llm.tie_embeddings).astype(h.dtype)
        ce, logz = head_cross_entropy(h.reshape(n, -1), w, mb["targets"].reshape(n), loss_chunk)
        ce, logz = ce.reshape(mb["targets"].shape), logz.reshape(mb["targets"].shape)
    else:
        ce, logz = cross_entropy(_forward(cfg, params, mb), mb["targets"])
    w = mb["loss_mask"].astype(jnp.float32)
    ce_sum, z_sum = jnp.sum(ce * w), jnp.sum(jnp.square(logz) * w)
    aux = {"ce_sum": ce_sum, "z_sum": z_sum}
    if "source_ids" in mb:
        onehot = jax.nn.one_hot(mb["source_ids"] - 1, MAX_SOURCES, dtype=jnp.float32)
        aux["source_ce"] = jnp.einsum("bt,bts->s", jax.lax.stop_gradient(ce) * w, onehot)
        aux["source_tokens"] = jnp.einsum("bt,bts->s", w, onehot)
    return ce_sum + z_loss * z_sum, aux


def _microbatches(batch: dict, m: int) -> dict:
    """[B, ...] -> [M, B/M, ...] taking rows j*M + i into micro-batch i, so every device keeps its own rows."""

    def split(x):
        x = x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)
        return nn.with_logical_constraint(x, (None, "act_batch") + (None,) * (x.ndim - 2))

    return jax.tree.map(split, batch)


def train_step(
    state: TrainState,
    batch: dict,
    *,
    cfg: ModelConfig,
    t,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    trainable: frozenset[str],
) -> tuple[TrainState, dict]:
    train, frozen = split_trainable(state.params, trainable)
    total = jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)
    grad_fn = jax.grad(loss_sums, has_aux=True)
    m, chunk = int(t.microbatches), int(t.loss_chunk)
    if m == 1:
        grads, aux = grad_fn(train, frozen, batch, cfg, t.z_loss, chunk)
    else:
        mbs = _microbatches(batch, m)

        def body(acc, mb):
            g, a = grad_fn(train, frozen, mb, cfg, t.z_loss, chunk)
            return jax.tree.map(jnp.add, acc, (g, a)), None

        aux0 = {"ce_sum": jnp.zeros(()), "z_sum": jnp.zeros(())}
        if "source_ids" in batch:
            aux0 |= {"source_ce": jnp.zeros(MAX_SOURCES), "source_tokens": jnp.zeros(MAX_SOURCES)}
        zeros = (jax.tree.map(jnp.zeros_like, train), aux0)
        (grads, aux), _ = jax.lax.scan(body, zeros, mbs)
    gnorm = optax.global_norm(grads) / total
    # Normalise by the token count and clip to train.clip_norm in one scale (fused into the update).
    scale = 1.0 / total
    if t.clip_norm > 0:
        scale = scale * jnp.minimum(1.0, t.clip_norm / jnp.maximum(gnorm, 1e-12))
    grads = jax.tree.map(lambda g: g * scale, grads)
    # A step whose loss, gradient, update or new parameters would be non-finite is skipped (state
    # unchanged, counted): the optimizer keeps its moments, the select below keeps the parameters (fused
    # into the in-place update), and no NaN ever reaches the parameters or a checkpoint. A finite
    # gradient can still give a non-finite update: an lr that overflows (1e39 is inf in float32), a NaN
    # in a restored optimizer moment, p + u overflowing in bfloat16.
    ok = jnp.isfinite(aux["ce_sum"]) & jnp.isfinite(gnorm)
    ok = ok & _update_finite(tx, grads, state.opt_state, train, ok)
    updates, opt_state = tx.update(grads, state.opt_state, train, ok=ok)
    train = jax.tree.map(lambda p, u: jnp.where(ok, p + u.astype(p.dtype), p), train, updates)
    params = unflatten({**train, **frozen})
    lr = schedule(state.step)
    metrics = {
        "loss": aux["ce_sum"] / total,
        "z_loss": aux["z_sum"] / total,
        "grad_norm": gnorm,
        "tokens": total,
        "learning_rate": lr,
        "skipped": 1 - ok.astype(jnp.int32),
    }
    if "source_ce" in aux:
        metrics["source_ce"], metrics["source_tokens"] = aux["source_ce"], aux["source_tokens"]
    return TrainState(
        step=state.step + ok.astype(jnp.int32), params=params, opt_state=opt_state
    ), metrics


def _update_finite(tx, grads: dict, opt_state, train: dict, ok: jax.Array) -> jax.Array:
    """Whether the update would leave every trainable parameter finite (a scalar bool, on device).

    A probe run of the optimizer whose new moments are discarded and whose parameters are only reduced:
    XLA fuses it into one read of the gradients, moments and parameters, with no [param]-sized buffer
    and without keeping the old moments alive next to the new ones, so the real update below stays in
    place (optim.adamw). Checking p + u covers the update too: an inf or NaN in u makes p + u one.
    """
    probe, _ = tx.update(grads, opt_state, train, ok=ok)
    finite = [jnp.all(jnp.isfinite(p + probe[k].astype(p.dtype))) for k, p in train.items()]
    return jnp.all(jnp.stack(finite)) if finite else jnp.asarray(True)


# train.lr above this is refused at start (check_lr): no real AdamW run uses more than ~1e-2, and a
# finite but absurd lr (1e30) explodes the parameters without ever making them non-finite.
MAX_LR = 10.0


def check_lr(t) -> None:
    """Refuse a train section whose learning rate is not a finite number in [0, MAX_LR] (train.lr, and
    the peak of its schedule: train.step_factor multiplies it at each milestone). 0 is allowed (a run
    that measures throughput or eval only). ConfigError naming the field."""

    def real(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    lr = t.lr
    if not (real(lr) and 0 <= lr <= MAX_LR):
        raise ConfigError(
            f"train.lr={lr!r}: must be a finite number in [0, {MAX_LR:g}] (AdamW runs use ~1e-5 to "
            "1e-3; a larger lr makes the parameters explode or become non-finite)"
        )
    if t.schedule == "step":
        f, n = t.step_factor, len(t.step_milestones)
        if not (real(f) and f >= 0):
            raise ConfigError(f"train.step_factor={f!r}: must be a finite number >= 0")
        try:
            peak = lr * max(1.0, f) ** n
        except OverflowError:
            peak = math.inf
        if peak > MAX_LR:
            raise ConfigError(
                f"train.lr={lr:g} x train.step_factor={f:g} at {n} milestones peaks at {peak:g} > "
                f"{MAX_LR:g}"
            )
    if t.schedule == "cosine" and not (real(t.end_lr_frac) and 0 <= t.end_lr_frac <= 1):
        raise ConfigError(f"train.end_lr_frac={t.end_lr_frac!r}: must be a number in [0, 1]")


def batch_shardings(factory: StateFactory, batch_like: dict) -> dict:
    return {k: batch_sharding(factory.mesh, factory.rules, v.ndim) for k, v in batch_like.items()}


class CompiledStep:
    """The jitted step with explicit in/out shardings and the state donated; enters the mesh and rule
    contexts around every call so logical constraints resolve. `compiles` counts traces (must stay 1
    per batch signature)."""

    def __init__(self, factory: StateFactory):
        self.factory = factory
        self.compiles = 0

        def step(state, batch):
            self.compiles += 1
            return train_step(
                state,
                batch,
                cfg=factory.cfg,
                t=factory.t,
                tx=factory.tx,
                schedule=factory.schedule,
                trainable=frozenset(factory.trainable),
            )

        self._step = step
        self._jitted: dict = {}

    def _jit(self, batch: dict):
        sig = tuple(sorted((k, v.shape) for k, v in batch.items()))
        if sig not in self._jitted:
            rep = jax.sharding.NamedSharding(self.factory.mesh, jax.sharding.PartitionSpec())
            self._jitted[sig] = jax.jit(
                self._step,
                in_shardings=(self.factory.shardings, batch_shardings(self.factory, batch)),
                out_shardings=(self.factory.shardings, rep),
                donate_argnums=0,
            )
        return self._jitted[sig]

    def __call__(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        fn = self._jit(batch)
        with jax.set_mesh(self.factory.mesh), nn.logical_axis_rules(self.factory.rules):
            return fn(state, batch)

    def lower(self, state_like, batch_like):
        fn = self._jit(batch_like)
        with jax.set_mesh(self.factory.mesh), nn.logical_axis_rules(self.factory.rules):
            return fn.lower(state_like, batch_like)
