"""Interleaved kind: a short document whose paragraphs surround 1-2 pictures, each with a caption.

The pictures are caption-kind scenes; each is followed by "Figure k: <its description>", the way
figures sit in web articles and papers. Record: one "text" message, the title, paragraphs and
figures separated by blank lines, with IMAGE_TAG where each picture goes.
"""

from __future__ import annotations

import numpy as np

from dsvl_jax.data import records
from dsvl_jax.data.corpus import canvas, captions, words


def example(rng: np.random.Generator, record_id: str, image_size: int) -> records.Example:
    paragraphs = [words.paragraph(rng, 2, 4) for _ in range(int(rng.integers(2, 4)))]
    # a figure goes after a paragraph (never before the first); at most one per slot
    n_images = int(rng.integers(1, 3))
    slots = sorted(int(s) for s in rng.choice(len(paragraphs), n_images, replace=False))
    parts, images = [words.title(rng)], []
    for i, para in enumerate(paragraphs):
        parts.append(para)
        if i in slots:
            scene = captions.make_scene(rng)
            images.append(
                canvas.png(captions.draw_scene(scene, canvas.canvas_size(rng, image_size)))
            )
            parts.append(f"{records.IMAGE_TAG}\nFigure {len(images)}: {captions.describe(scene)}")
    return records.Example(
        record_id, "interleaved", (records.Message("text", "\n\n".join(parts)),), tuple(images)
    )
