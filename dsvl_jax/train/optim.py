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

import optax

from dsvl_jax.train.schedules import make_schedule

GROUPS: dict[str, re.Pattern] = {
    "siglip": re.compile(r"^siglip/"),
    "sam_trunk": re.compile(r"^sam/(patch_embed|pos_embed|blocks_\d+)(/|$)"),
    "sam_adaptor": re.compile(r"^sam/(neck|neck_hd|downsample|hd_alpha)(/|$)"),
    "adaptor": re.compile(r"^adaptor/"),
    "llm": re.compile(r"^llm/"),
}

# The paper's stages (spec §5.1), as data. Stage configs copy these into train.trainable.
STAGE_TRAINABLE = {
    1: ("adaptor", "sam_adaptor"),
    2: ("llm", "adaptor", "sam_adaptor"),
    3: ("llm", "adaptor", "sam_adaptor", "siglip"),
}


def group_of(path: str) -> str:
    hits = [g for g, rx in GROUPS.items() if rx.search(path)]
    if len(hits) != 1:
        raise ValueError(f"parameter {path!r} matches groups {hits}; it must match exactly one of {list(GROUPS)}")
    return hits[0]


def trainable_paths(paths, trainable: tuple[str, ...]) -> set[str]:
    """The subset of flat parameter paths that train under `train.trainable`."""
    unknown = sorted(set(trainable) - set(GROUPS))
    if unknown:
        raise ValueError(f"train.trainable: unknown group(s) {unknown}; known: {list(GROUPS)}")
    out = {p for p in paths if group_of(p) in trainable}
    if not out:
        raise ValueError(f"train.trainable={tuple(trainable)} selects no parameter of this model: nothing would train")
    return out


def _decay_mask(tree: dict[str, Any]) -> dict[str, bool]:
    """Weight decay on matrices only (kernels, embeddings), not on norms, biases, scalars."""
    return {k: k.endswith(("kernel", "embedding")) for k in tree}


def make_optimizer(t) -> optax.GradientTransformation:
    """AdamW with the configured schedule over a flat {path: array} dict.

    Global-norm clipping happens in the step (train/step.py), which needs the norm for its metrics
    anyway; decoupled weight decay is only added when non-zero (the paper uses 0.0 in every stage),
    so the update is one fused pass over the parameters.
    """
    parts = [optax.scale_by_adam(b1=t.b1, b2=t.b2, eps=t.eps)]
    if t.weight_decay:
        parts.append(optax.add_decayed_weights(t.weight_decay, mask=_decay_mask))
    parts.append(optax.scale_by_learning_rate(make_schedule(t)))
    return optax.chain(*parts)
