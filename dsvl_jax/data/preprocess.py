"""Image -> fixed-size uint8 views for the vision towers, matching HF's DeepSeek-VL processors
(docs/recipe.md#image-preprocessing).

Two layouts, picked by `ModelConfig.vision`:
- `siglip` (1.3B, HF `DeepseekVLImageProcessor`): resize the longer side to S (bicubic), pad to S×S with
  the image centred on background (127,127,127) = int(0.5·255) ⇒ "pixels" [S,S,3].
- `hybrid` (7B, HF `DeepseekVLHybridImageProcessor`): resize the longer side to H (bicubic), pad to H×H on
  int(CLIP_mean·255) = (122,116,104) ⇒ "high_pixels" [H,H,3] (SAM); then resize the whole padded square to
  S×S (bilinear, as HF's converter sets `resample`) ⇒ "pixels" [S,S,3] (SigLIP).

Resize target of the first step: (max(round(h·S/L), 14), max(round(w·S/L), 14)) with L = max(h, w), Python
`round` (half to even) as HF does; the original DeepSeek code truncates with `int`, so HF and the original
differ by one pixel row/column on some sizes.

The host only resizes and pads, all in uint8 through PIL's C resampler (the same calls HF's PIL backend
makes, so the uint8 views are bit-identical to it). Rescale + normalisation run on device in the train
step (`normalize_batch`), which keeps host work and host->device bytes 4x smaller than float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from dsvl_jax.model.config import ModelConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
MIN_SIZE = 14  # HF/original `min_size`: neither side of the first resize goes below this

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

Color = tuple[int, int, int]
Triple = tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """How one image becomes the towers' inputs. `high_size` is None for SigLIP-only models.

    `background` fills the pad of the view resized from the raw image: the high view when hybrid
    (the low view is then resized from that padded square and needs no pad), else the low view.
    Resample names are keys of `RESAMPLE`.
    """

    low_size: int
    high_size: int | None
    low_mean: Triple
    low_std: Triple
    high_mean: Triple | None
    high_std: Triple | None
    background: Color
    low_resample: str
    high_resample: str | None
    min_size: int = MIN_SIZE

    @property
    def hybrid(self) -> bool:
        return self.high_size is not None


def background_for(mean: Triple) -> Color:
    """HF/original pad colour: `tuple(int(m * 255) for m in image_mean)` (truncation, not rounding)."""
    return tuple(int(m * 255) for m in mean)  # type: ignore[return-value]


def image_spec(cfg: ModelConfig) -> ImageSpec:
    """The spec that feeds `cfg`'s towers: sizes from `cfg.siglip.image_size` / `cfg.sam.image_size`."""
    if cfg.hybrid:
        return ImageSpec(
            low_size=cfg.siglip.image_size,
            high_size=cfg.sam.image_size,
            low_mean=SIGLIP_MEAN,
            low_std=SIGLIP_STD,
            high_mean=CLIP_MEAN,
            high_std=CLIP_STD,
            background=background_for(CLIP_MEAN),
            low_resample="bilinear",
            high_resample="bicubic",
        )
    return ImageSpec(
        low_size=cfg.siglip.image_size,
        high_size=None,
        low_mean=SIGLIP_MEAN,
        low_std=SIGLIP_STD,
        high_mean=None,
        high_std=None,
        background=background_for(SIGLIP_MEAN),
        low_resample="bicubic",
        high_resample=None,
    )


def fit_size(width: int, height: int, size: int, min_size: int = MIN_SIZE) -> tuple[int, int]:
    """(w, h) after scaling the longer side to `size`, exactly as HF computes it (round half to even)."""
    delta = size / max(height, width)
    return max(round(width * delta), min_size), max(round(height * delta), min_size)


def resize_and_pad(
    img: Image.Image, size: int, resample: str, background: Color, min_size: int = MIN_SIZE
) -> Image.Image:
    """Longer side -> `size`, then centre on a `size`×`size` canvas of `background` (PIL, uint8 RGB).

    The offset along the short side is (size - short) // 2, as HF's `pad_to_square`.
    """
    w, h = fit_size(img.width, img.height, size, min_size)
    resized = img.resize((w, h), RESAMPLE[resample])
    if w == h:
        return resized
    side = max(w, h)  # == size unless min_size exceeds it
    canvas = Image.new("RGB", (side, side), background)
    canvas.paste(resized, ((side - w) // 2, (side - h) // 2))
    return canvas


def preprocess(img: Image.Image, spec: ImageSpec) -> dict[str, np.ndarray]:
    """One image -> {"pixels": [S,S,3] uint8} (+ {"high_pixels": [H,H,3] uint8} when hybrid).

    Non-RGB modes (L, P, RGBA, CMYK, ...) are converted with `Image.convert("RGB")`, which drops alpha
    like the original DeepSeek loader and `records.decode_image`.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    if spec.high_size is None:
        low = resize_and_pad(img, spec.low_size, spec.low_resample, spec.background, spec.min_size)
        return {"pixels": np.array(low)}
    high = resize_and_pad(img, spec.high_size, spec.high_resample, spec.background, spec.min_size)
    # The low view is resized from the padded high square, so its pad is already in place (HF order).
    low = high.resize((spec.low_size, spec.low_size), RESAMPLE[spec.low_resample])
    return {"pixels": np.array(low), "high_pixels": np.array(high)}


def normalize(x: Any, mean: Triple, std: Triple) -> Any:
    """uint8 [..., 3] (numpy or jax) -> float32 (x/255 - mean)/std, computed as one fused x·a + b.

    The fused form differs from the two-step formula by float32 rounding only (< 1e-6 here).
    """
    mean64, std64 = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    scale = (1.0 / (255.0 * std64)).astype(np.float32)
    offset = (-mean64 / std64).astype(np.float32)
    return x.astype(np.float32) * scale + offset


def normalize_batch(batch: Mapping[str, Any], spec: ImageSpec) -> dict[str, Any]:
    """ "pixels" / "high_pixels" ([B, I, S, S, 3] uint8) -> float32 with each tower's constants.

    Other keys pass through unchanged. Meant to run on device, inside the jitted train step.
    """
    out = dict(batch)
    if "pixels" in out:
        out["pixels"] = normalize(out["pixels"], spec.low_mean, spec.low_std)
    if "high_pixels" in out:
        if spec.high_mean is None:
            raise ValueError(
                "batch has 'high_pixels' but the image spec is SigLIP-only (model.vision != 'hybrid')"
            )
        out["high_pixels"] = normalize(out["high_pixels"], spec.high_mean, spec.high_std)
    return out
