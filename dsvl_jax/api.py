"""The public Python API: load a checkpoint, run the model, generate — numpy in, numpy out.

Inputs use HF's layouts so one batch feeds both implementations: `pixel_values` [N, 3, S, S] and
`high_res_pixel_values` [N, 3, Sh, Sh] already normalised as the HF processors do (SigLIP: mean = std
= 0.5; SAM: CLIP mean/std), `input_ids` [B, T] holding `num_image_tokens` image tokens per image,
`attention_mask` [B, T] (left padding for generation).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dsvl_jax.checkpoints import load_model
from dsvl_jax.errors import Error
from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.decode import greedy_generate, positions_from_mask
from dsvl_jax.model.params import Params
from dsvl_jax.model.vlm import DeepseekVL


class InputError(Error, ValueError):
    """A batch does not fit the model config (image size, image-token count, ids, padding)."""


def load(path: str, **overrides) -> tuple[ModelConfig, Params]:
    """Any model folder (a run dir, a step checkpoint, a params checkpoint, an HF folder) -> (cfg, params).

    `overrides` replace top-level config fields (e.g. dtype="bfloat16"); see checkpoints.open_model."""
    return load_model(path, **overrides)


def _images(cfg: ModelConfig, pixel_values, high_res_pixel_values):
    """Validate NCHW pixels, return NHWC jnp arrays (or Nones)."""
    if pixel_values is None:
        if high_res_pixel_values is not None:
            raise InputError("high_res_pixel_values given without pixel_values")
        return None, None
    pv = np.asarray(pixel_values, np.float32)
    s = cfg.siglip.image_size
    if pv.ndim != 4 or pv.shape[1:] != (3, s, s):
        raise InputError(
            f"pixel_values: expected shape [N, 3, {s}, {s}] (model.siglip.image_size={s}), "
            f"got {list(pv.shape)}"
        )
    hp = None
    if cfg.hybrid:
        if high_res_pixel_values is None:
            raise InputError("high_res_pixel_values is required by the hybrid (SigLIP + SAM) model")
        hp = np.asarray(high_res_pixel_values, np.float32)
        sh = cfg.sam.image_size
        if hp.ndim != 4 or hp.shape[1:] != (3, sh, sh) or hp.shape[0] != pv.shape[0]:
            raise InputError(
                f"high_res_pixel_values: expected shape [{pv.shape[0]}, 3, {sh}, {sh}] "
                f"(model.sam.image_size={sh}), got {list(hp.shape)}"
            )
        hp = jnp.asarray(hp.transpose(0, 2, 3, 1))
    elif high_res_pixel_values is not None:
        raise InputError(
            "high_res_pixel_values given, but this model has no SAM tower (model.vision='siglip')"
        )
    return jnp.asarray(pv.transpose(0, 2, 3, 1)), hp


def _text(cfg: ModelConfig, input_ids, attention_mask, n_images: int):
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise InputError(f"input_ids: expected [B, T], got shape {list(ids.shape)}")
    if ids.min() < 0 or ids.max() >= cfg.llm.vocab_size:
        raise InputError(
            f"input_ids: values must lie in [0, {cfg.llm.vocab_size}), got [{ids.min()}, {ids.max()}]"
        )
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise InputError(
            f"attention_mask shape {list(mask.shape)} != input_ids shape {list(ids.shape)}"
        )
    n_tok = int((ids == cfg.image_token_id).sum())
    if n_tok != n_images * cfg.num_image_tokens:
        raise InputError(
            f"input_ids hold {n_tok} image tokens (id {cfg.image_token_id}) but {n_images} image(s) "
            f"need {n_images} x {cfg.num_image_tokens} = {n_images * cfg.num_image_tokens}"
        )
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _forward(cfg, params, ids, positions, mask, pixels, high_pixels):
    logits, _ = DeepseekVL(cfg).apply(
        {"params": params}, ids, positions, mask, pixels=pixels, high_pixels=high_pixels
    )
    return logits


@functools.partial(jax.jit, static_argnames=("cfg",))
def _features(cfg, params, pixels, high_pixels):
    def f(m):
        out = m.towers(pixels, high_pixels)
        out["adaptor"] = m.adaptor(out["siglip"], out.get("sam"))
        return out

    return DeepseekVL(cfg).apply({"params": params}, method=f)


def forward(
    cfg: ModelConfig,
    params: Params,
    input_ids,
    pixel_values=None,
    high_res_pixel_values=None,
    attention_mask=None,
    position_ids=None,
) -> np.ndarray:
    """Logits [B, T, vocab] (float32). Positions default to the HF-generate rule (cumsum of the mask)."""
    pixels, high = _images(cfg, pixel_values, high_res_pixel_values)
    ids, mask = _text(cfg, input_ids, attention_mask, 0 if pixels is None else pixels.shape[0])
    pos = (
        positions_from_mask(mask) if position_ids is None else jnp.asarray(position_ids, jnp.int32)
    )
    return np.asarray(_forward(cfg, params, ids, pos, mask, pixels, high))


def image_features(
    cfg: ModelConfig, params: Params, pixel_values, high_res_pixel_values=None
) -> dict:
    """Per-part outputs: 'siglip' [N, 576, Ws], 'sam' [N, 576, 4C] (hybrid), 'adaptor' [N, 576, D]."""
    pixels, high = _images(cfg, pixel_values, high_res_pixel_values)
    if pixels is None:
        raise InputError("image_features needs pixel_values")
    return {k: np.asarray(v) for k, v in _features(cfg, params, pixels, high).items()}


def generate(
    cfg: ModelConfig,
    params: Params,
    input_ids,
    pixel_values=None,
    high_res_pixel_values=None,
    attention_mask=None,
    max_new_tokens: int = 16,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> np.ndarray:
    """Greedy decoding with the KV cache -> the new token ids [B, max_new_tokens] (prompt excluded).

    Rows must be left-padded. After `eos_token_id` a row emits `pad_token_id`.
    """
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    pixels, high = _images(cfg, pixel_values, high_res_pixel_values)
    ids, mask = _text(cfg, input_ids, attention_mask, 0 if pixels is None else pixels.shape[0])
    m = np.asarray(mask)
    if (np.diff(m, axis=1) < 0).any():
        rows = np.nonzero((np.diff(m, axis=1) < 0).any(axis=1))[0].tolist()
        raise InputError(
            f"attention_mask rows {rows} are right-padded; generation needs left padding"
        )
    total = ids.shape[1] + max_new_tokens
    if total > cfg.llm.max_position:
        raise InputError(
            f"prompt {ids.shape[1]} + max_new_tokens {max_new_tokens} = {total} exceeds "
            f"model.llm.max_position={cfg.llm.max_position}"
        )
    out = greedy_generate(
        cfg,
        params,
        ids,
        mask,
        pixels,
        high,
        max_new_tokens=max_new_tokens,
        eos_id=-1 if eos_token_id is None else eos_token_id,
        pad_id=pad_token_id,
    )
    return np.asarray(out)
