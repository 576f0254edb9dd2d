"""OCR kind: sentences rendered with Pillow's bundled font; the target is exactly the text drawn.

Canvases range from wide strips (a line or two, like a cropped text line) to portrait blocks; ink
and paper colours, font size and alignment vary. Only lines that fit are drawn, and the target
lists those lines in order, joined by "\n". Record: one "text" message, IMAGE_TAG + text.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from dsvl_jax.data import records
from dsvl_jax.data.corpus import canvas, words

_ASPECTS = (4.0, 3.0, 2.0, 3 / 2, 1.0, 3 / 4)
# (paper, ink): mostly dark on light, some light on dark
_PALETTES = (
    ((255, 255, 255), (0, 0, 0)),
    ((250, 246, 235), (40, 40, 60)),
    ((235, 240, 245), (20, 40, 90)),
    ((255, 255, 220), (90, 30, 30)),
    ((30, 30, 30), (240, 240, 240)),
    ((20, 50, 90), (255, 255, 255)),
)


def render(rng: np.random.Generator, image_size: int) -> tuple[Image.Image, str]:
    """(image, transcription): the lines drawn, top to bottom, joined by "\n"."""
    w, h = canvas.canvas_size(rng, image_size, _ASPECTS)
    paper, ink = words.pick(rng, _PALETTES)
    short = min(w, h)
    size = int(np.clip(rng.uniform(image_size / 20, image_size / 10), 8, short / 2))
    f = canvas.font(size)
    margin = max(2, int(short * rng.uniform(0.04, 0.1)))
    lh = canvas.line_height(f)
    while lh > h - 2 * margin and size > 6:  # a strip lower than one line: shrink the font
        size -= 1
        f, lh = canvas.font(size), canvas.line_height(canvas.font(size))
    text = " ".join(words.sentence(rng) for _ in range(12))
    n_lines = max(1, (h - 2 * margin) // lh)
    lines = []
    for line in canvas.wrap(text, f, w - 2 * margin)[:n_lines]:
        if f.getlength(line) > w - 2 * margin:  # a word wider than the canvas: stop before it
            break
        lines.append(line)
    lines = lines or [canvas.clip(text, f, w - 2 * margin)]
    align = words.pick(rng, ("left", "left", "center"))
    im = Image.new("RGB", (w, h), paper)
    d = ImageDraw.Draw(im)
    spare = h - 2 * margin - len(lines) * lh
    top = margin + (int(rng.integers(0, spare + 1)) if spare > 0 else 0)
    for i, line in enumerate(lines):
        x = margin if align == "left" else (w - f.getlength(line)) / 2
        d.text((x, top + i * lh), line, font=f, fill=ink)
    return im, "\n".join(lines)


def example(rng: np.random.Generator, record_id: str, image_size: int) -> records.Example:
    im, text = render(rng, image_size)
    return records.Example(
        record_id,
        "ocr",
        (records.Message("text", f"{records.IMAGE_TAG}{text}"),),
        (canvas.png(im),),
    )
