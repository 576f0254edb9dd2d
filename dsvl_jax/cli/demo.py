"""`python -m dsvl_jax.demo --config=experiments/demo.py:tiny`: the main job on the embedded default.

Builds the configured model with random weights, captions a synthetic image with greedy decoding
(KV cache), then saves an orbax checkpoint and exports it as an HF folder, printing one JSON line.
Until the training loop lands the caption is noise from untrained weights; the plumbing is real.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app
from ml_collections import config_flags

from dsvl_jax.cli.common import setup_logging

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/demo.py:tiny", "Demo config file.")

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """An RGB image in [0, 1], [size, size, 3]: colour gradients plus a bright square."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    img = np.stack([x, y, 1 - x * y], -1)
    a, b = sorted(rng.integers(0, size, 2))
    img[a:b + 1, a:b + 1] = 1.0
    return img.astype(np.float32)


def to_pixels(img: np.ndarray, size: int, mean, std) -> np.ndarray:
    """[H, W, 3] in [0, 1] -> normalised NCHW [1, 3, size, size] (bilinear resize)."""
    import jax
    im = np.asarray(jax.image.resize(img, (size, size, 3), "linear"))
    return ((im - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)[None].astype(np.float32)


def main(argv) -> None:
    del argv
    setup_logging()
    import jax
    from dsvl_jax import api
    from dsvl_jax.interop.hf_export import save_hf
    from dsvl_jax.model.config import model_config_from_dict
    from dsvl_jax.model.params import count_params, init_params
    from dsvl_jax.train.checkpoint import save_params

    c = _CONFIG.value
    cfg = model_config_from_dict(c.model)
    t0 = time.time()
    params = init_params(cfg, c.seed)
    img = synthetic_image(max(cfg.siglip.image_size, cfg.sam.image_size if cfg.hybrid else 0), c.seed)
    pixels = to_pixels(img, cfg.siglip.image_size, SIGLIP_MEAN, SIGLIP_STD)
    high = to_pixels(img, cfg.sam.image_size, CLIP_MEAN, CLIP_STD) if cfg.hybrid else None
    prompt = np.asarray([[c.bos_id] + [cfg.image_token_id] * cfg.num_image_tokens + list(c.prompt_ids)], np.int32)
    t1 = time.time()
    caption = api.generate(cfg, params, prompt, pixels, high, max_new_tokens=c.max_new_tokens)
    t2 = time.time()
    out = {"model": cfg.vision, "params": count_params(params), "devices": jax.device_count(),
           "prompt_tokens": int(prompt.shape[1]), "caption_ids": caption[0].tolist(),
           "init_s": round(t1 - t0, 2), "generate_s_incl_compile": round(t2 - t1, 2)}
    if c.out_dir:
        save_params(os.path.join(c.out_dir, "checkpoint"), cfg, params)
        save_hf(os.path.join(c.out_dir, "hf"), cfg, params)
        out["out_dir"] = os.path.abspath(c.out_dir)
    print(f"caption token ids for a synthetic {img.shape[0]}px image: {caption[0].tolist()}")
    print(json.dumps(out))


def entry() -> None:
    app.run(main)
