"""Drawing helpers shared by the image kinds: canvas sizes, the bundled font, wrapping, PNG bytes.

Canvases have `image_size` on the long side and a varied aspect ratio, so the preprocessor's
pad-to-square path is exercised by every kind.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageFont

from dsvl_jax.data.corpus.words import pick

# width / height ratios: landscape, square and portrait
ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16, 2.0, 1 / 2)

# named colours, so captions and questions can say what was drawn
COLORS = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 119, 180),
    "yellow": (240, 200, 30),
    "orange": (255, 127, 14),
    "purple": (148, 103, 189),
    "pink": (227, 119, 194),
    "brown": (140, 86, 75),
    "black": (20, 20, 20),
    "gray": (127, 127, 127),
}
BACKGROUNDS = {
    "white": (255, 255, 255),
    "light gray": (225, 225, 225),
    "beige": (245, 240, 220),
    "pale blue": (220, 235, 250),
}


def canvas_size(
    rng: np.random.Generator, image_size: int, aspects: tuple[float, ...] = ASPECTS
) -> tuple[int, int]:
    """(width, height) with `image_size` on the long side and an aspect ratio drawn from `aspects`."""
    r = pick(rng, aspects)
    if r >= 1:
        return image_size, max(16, round(image_size / r))
    return max(16, round(image_size * r)), image_size


def png(im: Image.Image) -> bytes:
    """RGB PNG bytes (no metadata, so equal pixels give equal bytes)."""
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at `size` px (pillow >= 10.1); the fixed-size bitmap font without FreeType."""
    try:
        return ImageFont.load_default(size=max(6, int(size)))
    except (TypeError, ImportError, OSError):  # old pillow or no FreeType: one bitmap size
        return ImageFont.load_default()


def line_height(f) -> int:
    """Baseline-to-baseline distance for `f`, in px."""
    top, bottom = f.getbbox("Ag")[1], f.getbbox("Ag")[3]
    return max(1, round((bottom - top) * 1.35))


def clip(text: str, f, width: float) -> str:
    """`text` cut to the longest prefix no wider than `width` px (what a clipped label shows)."""
    while text and f.getlength(text) > width:
        text = text[:-1]
    return text


def wrap(text: str, f, width: float) -> list[str]:
    """Greedy word wrap of `text` to lines no wider than `width` px; a word wider than `width` gets a
    line of its own and stays too wide (callers stop there, so targets only hold visible text)."""
    lines: list[str] = []
    cur = ""
    for w in text.split():
        cand = f"{cur} {w}" if cur else w
        if cur and f.getlength(cand) > width:
            lines.append(cur)
            cur = w
        else:
            cur = cand
    if cur:
        lines.append(cur)
    return lines
