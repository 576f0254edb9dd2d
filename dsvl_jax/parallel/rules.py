"""THE logical-axis -> mesh-axis table. Model code only names logical axes (see model/layers.py).

Defaults follow MaxText's FSDP + tensor-parallel layout: weights shard their "embed"-like axis over
`fsdp` and their heads/mlp/vocab axis over `tensor`; activations shard batch over (data, fsdp).
A rule maps to a mesh axis, a tuple of mesh axes, or None (replicated). Override per run with
`parallel.rules_override = {"vit_heads": None, ...}`.
"""

from __future__ import annotations

from collections.abc import Mapping

Rule = tuple[str, "str | tuple[str, ...] | None"]

RULES: tuple[Rule, ...] = (
    # --- activations ---
    ("act_batch", ("data", "fsdp")),  # batch is split over every data-parallel axis
    ("act_len", None),
    ("act_embed", None),  # residual stream replicated across tensor (Megatron-style)
    ("act_vocab", "tensor"),  # logits: vocab over tensor, reduced in the loss
    # --- LLM weights ---
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),  # 1-D scales: tiny, replicate
    ("layers", None),  # scan axis: never shard (each step slices one layer)
    # --- vision weights ---
    ("vit_embed", "fsdp"),
    ("vit_mlp", "tensor"),
    ("vit_heads", "tensor"),
    ("qkv", None),
    ("pos", None),
    ("pos_w", None),
    ("rel_pos", None),
    ("conv_h", None),
    ("conv_w", None),
    ("conv_in", None),  # first conv sees 3 channels: not divisible, replicate
    ("conv_out", "fsdp"),
    ("scalar", None),
)


def rules_from_config(overrides: Mapping[str, object] | None = None) -> tuple[Rule, ...]:
    """RULES with per-name overrides applied (unknown names are an error, not a silent no-op)."""
    if not overrides:
        return RULES
    known = {k for k, _ in RULES}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise KeyError(
            f"parallel.rules_override: unknown logical axes {unknown}; known: {sorted(known)}"
        )
    norm = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
    return tuple((k, norm(overrides[k]) if k in overrides else v) for k, v in RULES)
