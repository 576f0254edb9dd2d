"""Synthetic batches with the exact shapes of real ones: for tests and throughput benchmarks.

Each sample: BOS, a few text tokens, `images_per_sample` blocks of image tokens, text up to seq_len.
Loss on text targets only (never on image positions, never on padding). Deterministic from a seed.
"""

from __future__ import annotations

import numpy as np

from dsvl_jax.model.config import ModelConfig


def synthetic_batch(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    images_per_sample: int = 1,
    seed: int = 0,
    pad: int = 0,
    rows: slice | None = None,
) -> dict[str, np.ndarray]:
    """Global batch as numpy (or the `rows` slice of it, for one host's share). `pad` left-pads row 0."""
    rng = np.random.default_rng(seed)
    n = cfg.num_image_tokens * images_per_sample
    if n + 3 > seq_len:
        raise ValueError(
            f"train.seq_len={seq_len} cannot hold {images_per_sample} image(s) of "
            f"{cfg.num_image_tokens} tokens plus text"
        )
    v = cfg.llm.vocab_size
    low = min(cfg.image_token_id + 1, v - 2)
    ids = rng.integers(low, v, (batch_size, seq_len + 1)).astype(np.int32)
    ids[:, 0] = 1
    ids[:, 2 : 2 + n] = cfg.image_token_id
    inputs, targets = ids[:, :-1].copy(), ids[:, 1:].copy()
    segments = np.ones((batch_size, seq_len), np.int32)
    if pad:
        segments[0, :pad] = 0
        inputs[0] = np.concatenate([np.zeros(pad, np.int32), inputs[0, :-pad]])
        targets[0] = np.concatenate([np.zeros(pad, np.int32), targets[0, :-pad]])
    loss_mask = (
        (targets != cfg.image_token_id) & (inputs != cfg.image_token_id) & (segments > 0)
    ).astype(np.float32)
    positions = np.maximum(np.cumsum(segments, 1) - 1, 0).astype(np.int32)
    s = cfg.siglip.image_size
    out = dict(
        ids=inputs,
        targets=targets,
        positions=positions,
        segments=segments,
        loss_mask=loss_mask,
        pixels=rng.uniform(-1, 1, (batch_size, images_per_sample, s, s, 3)).astype(np.float32),
    )
    if cfg.hybrid:
        sh = cfg.sam.image_size
        out["high_pixels"] = rng.normal(0, 1, (batch_size, images_per_sample, sh, sh, 3)).astype(
            np.float32
        )
    if rows is not None:
        out = {k: v[rows] for k, v in out.items()}
    return out
