"""Image preprocessing (dsvl_jax.data.preprocess) against HF's DeepSeek-VL image processors.

Reference: HF transformers 5.23 `DeepseekVLHybridImageProcessorPil` (7B layout) and
`DeepseekVLImageProcessorPil` (1.3B layout), built with the constants HF's converter sets (low view
mean=std=0.5 with BILINEAR resample for the hybrid; high view CLIP mean/std, bicubic). Without torchvision
the default class names `DeepseekVL*ImageProcessor` fall back to exactly these PIL backends.

Tolerance: the uint8 views are compared for EXACT equality (HF's PIL backend resizes uint8 with the same
PIL calls), after recovering HF's uint8 from its float output by round((v*std + mean) * 255). The
normalised float32 tensors are compared at max |diff| <= 1e-5: the only difference is float32 rounding of
the fused x*a+b against HF's float64 rescale then float32 normalize (observed <= 5e-7), far below one
uint8 level (1/255/std >= 0.0146).
"""

import numpy as np
import pytest
from PIL import Image

from dsvl_jax.data import preprocess as PP
from dsvl_jax.model.sizes import model_config

TINY = PP.image_spec(model_config("tiny"))  # hybrid: SigLIP 32 px, SAM 64 px
TINY_SIGLIP = PP.image_spec(model_config("tiny_siglip"))  # SigLIP 32 px only
REAL_7B = PP.image_spec(model_config("7b"))  # 384 / 1024
REAL_13B = PP.image_spec(model_config("1.3b"))  # 384
FLOAT_ATOL = 1e-5

# (width, height): landscape, portrait, square, thin both ways, odd pads, larger-than-target (downscale).
SMALL_SHAPES = [
    (50, 30),
    (30, 50),
    (40, 40),
    (5, 40),
    (40, 5),
    (64, 31),
    (33, 64),
    (300, 200),
    (1, 1),
]
REAL_SHAPES = [(211, 97), (1100, 1400)]


def _random_image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _hf_processor(spec: PP.ImageSpec):
    transformers = pytest.importorskip("transformers")
    low = {"height": spec.low_size, "width": spec.low_size}
    if spec.hybrid:
        return transformers.DeepseekVLHybridImageProcessorPil(
            size=low,
            high_res_size={"height": spec.high_size, "width": spec.high_size},
            image_mean=spec.low_mean,
            image_std=spec.low_std,
            resample=PP.RESAMPLE[spec.low_resample],
            high_res_image_mean=spec.high_mean,
            high_res_image_std=spec.high_std,
            high_res_resample=PP.RESAMPLE[spec.high_resample],
        )
    return transformers.DeepseekVLImageProcessorPil(
        size=low,
        image_mean=spec.low_mean,
        image_std=spec.low_std,
        resample=PP.RESAMPLE[spec.low_resample],
    )


def _hf_views(proc, img, spec):
    """HF output as HWC float32 {"pixels", "high_pixels"} (HF returns NCHW)."""
    out = proc(images=[img], return_tensors="np")
    views = {"pixels": out["pixel_values"][0].transpose(1, 2, 0)}
    if spec.hybrid:
        views["high_pixels"] = out["high_res_pixel_values"][0].transpose(1, 2, 0)
    return views


def _to_uint8(x, mean, std):
    return np.round((x * np.asarray(std) + np.asarray(mean)) * 255.0).astype(np.int64)


def _check_parity(spec, shapes, seed0):
    proc = _hf_processor(spec)
    consts = {
        "pixels": (spec.low_mean, spec.low_std),
        "high_pixels": (spec.high_mean, spec.high_std),
    }
    for i, (w, h) in enumerate(shapes):
        img = _random_image(w, h, seed0 + i)
        ours, ref = PP.preprocess(img, spec), _hf_views(proc, img, spec)
        assert set(ours) == set(ref)
        for key, (mean, std) in consts.items():
            if key not in ref:
                continue
            np.testing.assert_array_equal(
                ours[key].astype(np.int64),
                _to_uint8(ref[key], mean, std),
                err_msg=f"{key} uint8 of a {w}x{h} image",
            )
            diff = np.abs(PP.normalize(ours[key], mean, std) - ref[key]).max()
            assert diff <= FLOAT_ATOL, (key, (w, h), diff)


@pytest.mark.parametrize("spec", [TINY, TINY_SIGLIP], ids=["hybrid", "siglip"])
def test_parity_with_hf_tiny_sizes(spec):
    _check_parity(spec, SMALL_SHAPES, seed0=0)


@pytest.mark.parametrize("spec", [REAL_7B, REAL_13B], ids=["7b", "1.3b"])
def test_parity_with_hf_real_sizes(spec):
    _check_parity(spec, REAL_SHAPES, seed0=100)


def test_image_spec_from_configs():
    assert (TINY.low_size, TINY.high_size, TINY.hybrid) == (32, 64, True)
    assert (TINY_SIGLIP.low_size, TINY_SIGLIP.high_size, TINY_SIGLIP.hybrid) == (32, None, False)
    assert (REAL_7B.low_size, REAL_7B.high_size) == (384, 1024)
    # docs/recipe.md#image-preprocessing: 7B pads on int(CLIP_mean*255), 1.3B on int(0.5*255).
    assert REAL_7B.background == (122, 116, 104) and REAL_13B.background == (127, 127, 127)
    assert (REAL_7B.low_resample, REAL_7B.high_resample, REAL_13B.low_resample) == (
        "bilinear",
        "bicubic",
        "bicubic",
    )
    assert (
        REAL_7B.low_mean == REAL_7B.low_std == (0.5, 0.5, 0.5) and REAL_7B.high_std == PP.CLIP_STD
    )


def test_fit_size_rounds_half_to_even_with_min_size():
    assert PP.fit_size(640, 480, 1024) == (1024, 768)
    assert PP.fit_size(5, 40, 64) == (14, 64)  # round(8) < min_size 14
    assert PP.fit_size(128, 45, 64) == (64, 22)  # exactly 22.5 -> 22 (half to even)
    # exactly 23.5 -> 24; the original DeepSeek `int` gives 23
    assert PP.fit_size(128, 47, 64) == (64, 24)


@pytest.mark.parametrize("spec", [TINY, TINY_SIGLIP], ids=["hybrid", "siglip"])
def test_image_is_centred_on_background(spec):
    color = (200, 10, 50)
    size = spec.high_size or spec.low_size
    first = "high_pixels" if spec.hybrid else "pixels"
    # Already at target size on the long side, so the resize is the identity and edges are exact.
    for w, h in [(size, size // 2 - 1), (size // 2 + 1, size)]:
        out = PP.preprocess(Image.new("RGB", (w, h), color), spec)[first]
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
        top, left = (size - h) // 2, (size - w) // 2
        inside = np.zeros((size, size), bool)
        inside[top : top + h, left : left + w] = True
        np.testing.assert_array_equal(out[inside], np.broadcast_to(color, (inside.sum(), 3)))
        np.testing.assert_array_equal(
            out[~inside], np.broadcast_to(spec.background, ((~inside).sum(), 3))
        )
    if spec.hybrid:  # the low view is the padded square resized: background shows in its bands too
        low = PP.preprocess(Image.new("RGB", (size, size // 4), color), spec)["pixels"]
        s = spec.low_size
        np.testing.assert_array_equal(low[0], np.broadcast_to(spec.background, (s, 3)))
        np.testing.assert_array_equal(low[s // 2], np.broadcast_to(color, (s, 3)))


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "1", "I;16"])
def test_non_rgb_modes_become_rgb(mode):
    rgb = _random_image(37, 23, seed=7)
    img = (
        rgb.convert(mode)
        if mode != "I;16"
        else Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 200)
    )
    assert img.mode == mode
    out = PP.preprocess(img, TINY)
    ref = PP.preprocess(img.convert("RGB"), TINY)  # alpha dropped, as records.decode_image does
    for key, size in [("pixels", 32), ("high_pixels", 64)]:
        assert out[key].shape == (size, size, 3) and out[key].dtype == np.uint8
        np.testing.assert_array_equal(out[key], ref[key])


def test_output_shapes_dtypes_and_writable():
    out = PP.preprocess(_random_image(70, 20, seed=1), TINY)
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        "pixels": ((32, 32, 3), np.uint8),
        "high_pixels": ((64, 64, 3), np.uint8),
    }
    assert all(v.flags.writeable and v.flags.c_contiguous for v in out.values())
    out = PP.preprocess(_random_image(20, 70, seed=2), TINY_SIGLIP)
    assert list(out) == ["pixels"] and out["pixels"].shape == (32, 32, 3)


def test_normalize_numpy_and_jax_any_leading_dims():
    import jax
    import jax.numpy as jnp

    # [B, I, S, S, 3]
    x = np.random.default_rng(3).integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8)
    want = (x.astype(np.float64) / 255 - np.asarray(PP.CLIP_MEAN)) / np.asarray(PP.CLIP_STD)
    got_np = PP.normalize(x, PP.CLIP_MEAN, PP.CLIP_STD)
    got_jax = jax.jit(lambda a: PP.normalize(a, PP.CLIP_MEAN, PP.CLIP_STD))(jnp.asarray(x))
    for got in (got_np, np.asarray(got_jax)):
        assert got.dtype == np.float32 and got.shape == x.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    assert float(PP.normalize(np.uint8(255), (0.5,) * 3, (0.5,) * 3)[0]) == 1.0


def test_normalize_batch_uses_each_towers_constants():
    x = np.full((1, 2, 4, 4, 3), 255, np.uint8)
    batch = {"pixels": x, "high_pixels": x, "tokens": np.arange(3)}
    out = PP.normalize_batch(batch, TINY)
    np.testing.assert_allclose(out["pixels"], 1.0, atol=1e-6)
    np.testing.assert_allclose(
        out["high_pixels"][..., 0], (1 - PP.CLIP_MEAN[0]) / PP.CLIP_STD[0], atol=1e-6
    )
    # input not mutated
    assert out["tokens"] is batch["tokens"] and batch["pixels"].dtype == np.uint8
    with pytest.raises(ValueError, match="high_pixels"):
        PP.normalize_batch(batch, TINY_SIGLIP)
