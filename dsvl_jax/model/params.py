"""Parameter creation and inspection: abstract-first init, logical specs, counts, layer stacking."""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.vlm import DeepseekVL

Params = dict[str, Any]


def dummy_inputs(cfg: ModelConfig) -> dict[str, jax.Array]:
    """Smallest batch that touches every parameter: one image and its image tokens."""
    n = cfg.num_image_tokens
    s = cfg.siglip.image_size
    ins = dict(
        ids=jnp.full((1, n), cfg.image_token_id, jnp.int32),
        positions=jnp.arange(n)[None],
        segments=jnp.ones((1, n), jnp.int32),
        pixels=jnp.zeros((1, s, s, 3), jnp.float32),
    )
    if cfg.hybrid:
        ins["high_pixels"] = jnp.zeros((1, cfg.sam.image_size, cfg.sam.image_size, 3), jnp.float32)
    return ins


def init_boxed(cfg: ModelConfig, rng: jax.Array) -> Params:
    """Parameters as flax LogicallyPartitioned boxes (values + logical axis names); trace it, don't keep it."""
    ins = dummy_inputs(cfg)
    return DeepseekVL(cfg).init(
        rng, ins.pop("ids"), ins.pop("positions"), ins.pop("segments"), **ins
    )["params"]


def abstract_params(cfg: ModelConfig) -> Params:
    """ShapeDtypeStructs of every parameter, no allocation (jax.eval_shape)."""
    return nn.meta.unbox(jax.eval_shape(lambda r: init_boxed(cfg, r), jax.random.key(0)))


def logical_axes(cfg: ModelConfig) -> Params:
    """The logical axis names of every parameter (a PartitionSpec of names), same tree as params."""
    return nn.get_partition_spec(jax.eval_shape(lambda r: init_boxed(cfg, r), jax.random.key(0)))


def init_params(cfg: ModelConfig, rng: jax.Array | int = 0) -> Params:
    """Random parameters (plain arrays). For sharded init see parallel/ (jit with out_shardings)."""
    rng = jax.random.key(rng) if isinstance(rng, int) else rng
    return nn.meta.unbox(jax.jit(lambda r: init_boxed(cfg, r))(rng))


def init_subset(cfg: ModelConfig, paths, rng: jax.Array | int = 0) -> dict[str, jax.Array]:
    """Some parameters of `init_params(cfg, rng)`, by flat path, with the same values, without
    materialising the others: jit drops every initializer whose output is not returned, so a 7B
    model's fresh adaptor costs the adaptor's memory only."""
    rng = jax.random.key(rng) if isinstance(rng, int) else rng
    paths = tuple(paths)

    def pick(r):
        flat = flatten(nn.meta.unbox(init_boxed(cfg, r)))
        return {p: flat[p] for p in paths}

    return jax.jit(pick)(rng)


def flatten(tree: Params, sep: str = "/") -> dict[str, Any]:
    """Nested dict -> {'a/b/c': leaf}."""
    out: dict[str, Any] = {}

    def rec(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                rec(f"{prefix}{sep}{k}" if prefix else k, v)
        else:
            out[prefix] = node

    rec("", dict(tree))
    return out


def unflatten(flat: dict[str, Any], sep: str = "/") -> Params:
    out: Params = {}
    for path, leaf in flat.items():
        node = out
        *parents, last = path.split(sep)
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return out


def count_params(tree: Params, prefix: str = "") -> int:
    """Number of scalars in the leaves whose path starts with `prefix`."""
    return sum(int(np.prod(v.shape)) for k, v in flatten(tree).items() if k.startswith(prefix))


_LAYER = re.compile(r"^(.*/blocks)_(\d+)(/.*)$")
# Towers whose blocks are scanned when cfg.scan_layers (SAM blocks always stay unrolled).
SCANNED_TOWERS = ("siglip/", "llm/")


def stack_layers(flat: dict[str, Any]) -> dict[str, Any]:
    """Unrolled `x/blocks_{i}/p` leaves -> scanned `x/blocks/p` with a leading layer axis."""
    groups: dict[tuple[str, str], dict[int, Any]] = {}
    out = {}
    for k, v in flat.items():
        m = _LAYER.match(k)
        if m and k.startswith(SCANNED_TOWERS):
            groups.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = v
        else:
            out[k] = v
    for (head, tail), layers in groups.items():
        out[head + tail] = np.stack([np.asarray(layers[i]) for i in range(len(layers))])
    return out


def unstack_layers(flat: dict[str, Any]) -> dict[str, Any]:
    """Inverse of stack_layers."""
    out = {}
    for k, v in flat.items():
        if k.startswith(SCANNED_TOWERS) and "/blocks/" in k:
            head, tail = k.split("/blocks/", 1)
            for i in range(v.shape[0]):
                out[f"{head}/blocks_{i}/{tail}"] = v[i]
        else:
            out[k] = v
    return out
