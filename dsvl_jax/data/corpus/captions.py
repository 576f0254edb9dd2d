"""Caption kind: scenes of coloured shapes and a sentence that says what is where.

A scene puts 1-3 shapes (circle, square, triangle), each with a colour and a size, in distinct cells
of a 3x3 grid on a plain background. The caption names every shape with its size, colour and
position, so it is fully grounded in the pixels. Record: one "text" message, IMAGE_TAG + caption.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from dsvl_jax.data import records
from dsvl_jax.data.corpus import canvas
from dsvl_jax.data.corpus.words import article, pick, sample

SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# grid cell (row, col) -> where it is, in words
POSITIONS = {
    (0, 0): "at the top left",
    (0, 1): "at the top",
    (0, 2): "at the top right",
    (1, 0): "on the left",
    (1, 1): "in the center",
    (1, 2): "on the right",
    (2, 0): "at the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "at the bottom right",
}


@dataclasses.dataclass(frozen=True)
class Shape:
    shape: str  # one of SHAPES
    color: str  # a key of canvas.COLORS
    size: str  # one of SIZES
    cell: tuple[int, int]  # (row, col) in the 3x3 grid
    jitter: tuple[float, float]  # offset of the centre inside its cell, in [-1, 1] x [-1, 1]


@dataclasses.dataclass(frozen=True)
class Scene:
    background: str  # a key of canvas.BACKGROUNDS
    shapes: tuple[Shape, ...]


def make_scene(rng: np.random.Generator, max_shapes: int = 3) -> Scene:
    n = int(rng.integers(1, max_shapes + 1))
    cells = sample(rng, list(POSITIONS), n)
    colors = sample(rng, list(canvas.COLORS), n)
    shapes = tuple(
        Shape(
            pick(rng, SHAPES),
            c,
            pick(rng, SIZES),
            cell,
            (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))),
        )
        for c, cell in zip(colors, cells)
    )
    # reading order: top to bottom, left to right
    return Scene(pick(rng, list(canvas.BACKGROUNDS)), tuple(sorted(shapes, key=lambda s: s.cell)))


def draw_scene(scene: Scene, size: tuple[int, int]) -> Image.Image:
    """The scene on a `size` = (width, height) canvas; each shape stays inside its grid cell."""
    w, h = size
    im = Image.new("RGB", size, canvas.BACKGROUNDS[scene.background])
    d = ImageDraw.Draw(im)
    cw, ch = w / 3, h / 3
    for s in scene.shapes:
        r = min(cw, ch) * (0.42 if s.size == "large" else 0.22)
        slack_x, slack_y = max(0.0, cw / 2 - r), max(0.0, ch / 2 - r)
        cx = (s.cell[1] + 0.5) * cw + s.jitter[0] * slack_x * 0.8
        cy = (s.cell[0] + 0.5) * ch + s.jitter[1] * slack_y * 0.8
        fill, outline = canvas.COLORS[s.color], (0, 0, 0)
        if s.shape == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline)
        elif s.shape == "square":
            d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline)
        else:
            d.polygon(
                [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)],
                fill=fill,
                outline=outline,
            )
    return im


def describe(scene: Scene) -> str:
    """One sentence naming every shape's size, colour and position, and the background."""
    parts = [f"{article(s.size)} {s.color} {s.shape} {POSITIONS[s.cell]}" for s in scene.shapes]
    things = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{things[0].upper()}{things[1:]}, on a {scene.background} background."


def example(rng: np.random.Generator, record_id: str, image_size: int) -> records.Example:
    scene = make_scene(rng)
    im = draw_scene(scene, canvas.canvas_size(rng, image_size))
    return records.Example(
        record_id,
        "caption",
        (records.Message("text", f"{records.IMAGE_TAG}{describe(scene)}"),),
        (canvas.png(im),),
    )
