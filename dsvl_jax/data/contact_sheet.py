"""A PNG grid of samples from prepared datasets: the first image (or a blank), kind, id and text start.

What `python -m dsvl_jax.data inspect DIR` draws, so a user sees what the trainer will read.
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from dsvl_jax.data.records import IMAGE_TAG, BadRecord, Example, decode_image

CELL_W, IMG_H, TEXT_H, COLS = 256, 192, 84, 4


def contact_sheet(sources: dict, out: str, n: int = 16) -> int:
    """Draw `n` samples spread over `sources` ({name: random-access source}) into `out`; -> samples drawn."""
    picks = []  # round-robin over sources, evenly spaced within each
    per = -(-n // len(sources))
    lists = [
        [
            (name, src, int(i))
            for i in np.unique(np.linspace(0, len(src) - 1, min(per, len(src))).round())
        ]
        for name, src in sources.items()
        if len(src)
    ]
    while len(picks) < n and any(lists):
        for lst in lists:
            if lst and len(picks) < n:
                picks.append(lst.pop(0))
    cols = max(1, min(COLS, len(picks)))
    rows = max(1, -(-len(picks) // cols))
    sheet = Image.new("RGB", (cols * CELL_W, rows * (IMG_H + TEXT_H)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for k, (_, src, i) in enumerate(picks):
        x, y = (k % cols) * CELL_W, (k // cols) * (IMG_H + TEXT_H)
        ex = src[i]
        draw.rectangle([x, y, x + CELL_W - 1, y + IMG_H - 1], fill=(235, 235, 235))
        if ex.images:
            thumb = _thumbnail(ex.images[0], ex.id)
            if thumb is None:
                draw.text((x + 8, y + IMG_H // 2), "undecodable image", fill="red", font=font)
            else:
                sheet.paste(
                    thumb, (x + (CELL_W - thumb.width) // 2, y + (IMG_H - thumb.height) // 2)
                )
        else:
            draw.text((x + 8, y + IMG_H // 2), "(text only)", fill="gray", font=font)
        lines = [f"{ex.kind} | {ex.id}"[:44]] + _text_lines(ex, 40, 4)
        for j, line in enumerate(lines):
            draw.text(
                (x + 4, y + IMG_H + 2 + 14 * j), line, fill="black" if j else "navy", font=font
            )
        draw.rectangle([x, y, x + CELL_W - 1, y + IMG_H + TEXT_H - 1], outline=(160, 160, 160))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    sheet.save(out)
    return len(picks)


def _thumbnail(data: bytes, record_id: str) -> Image.Image | None:
    try:
        im = decode_image(data, record_id=record_id)
    except BadRecord:
        return None
    return ImageOps.contain(im, (CELL_W - 8, IMG_H - 8))  # small images are scaled up too


def _text_lines(ex: Example, width: int, max_lines: int) -> list[str]:
    text = " ".join(
        (m.content if m.role == "text" else f"{m.role}: {m.content}") for m in ex.messages
    )
    text = " ".join(text.replace(IMAGE_TAG, "[img]").split())
    return textwrap.wrap(text, width)[:max_lines]
