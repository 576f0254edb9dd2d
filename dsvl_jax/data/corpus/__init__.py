"""The embedded default corpus: synthetic records of every kind in `records.KINDS`, no downloads.

It stands in for the DeepSeek-VL pretraining and SFT mix (web screenshots, PDF pages, OCR, charts,
interleaved documents, captions, text) so every data path runs on a laptop. What each kind draws
and what its target is lives in the module docstring of that kind:

    screenshot -> screenshots.py   pdf -> pdfs.py   ocr -> ocr.py   chart -> charts.py
    interleaved -> interleaved.py  caption -> captions.py           text -> text.py

Image tags: pretraining kinds ("text" role) put IMAGE_TAG straight before the target, as the PDF
importer does; interleaved documents put it where the picture goes; chart QA opens its first user
turn with IMAGE_TAG + "\n" + question.

Deterministic and random-access: record `index` of a kind is built from its own generator seeded
by (seed, kind, index), so `make_example(kind, seed, i)` equals the i-th record of
`generate(kind, n, seed)` byte for byte, on any machine with the same library versions (matplotlib,
Pillow and PDFium rasterisation can differ across versions). Images are PNG bytes with
`image_size` on the long side and varied aspect ratios.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dsvl_jax.data import records
from dsvl_jax.data.corpus import captions, charts, interleaved, ocr, pdfs, screenshots, text

_BUILDERS = {
    "screenshot": screenshots.example,
    "pdf": pdfs.example,
    "ocr": ocr.example,
    "chart": charts.example,
    "interleaved": interleaved.example,
    "caption": captions.example,
    "text": text.example,
}
assert set(_BUILDERS) == set(records.KINDS), "every record kind needs a corpus generator"
MIN_IMAGE_SIZE = 64

__all__ = ["MIN_IMAGE_SIZE", "example_rng", "generate", "generate_all", "make_example"]


def example_rng(kind: str, seed: int, index: int) -> np.random.Generator:
    """The generator record `index` of `kind` is drawn from (tests use it to rebuild what was drawn)."""
    return np.random.default_rng([seed, records.KINDS.index(kind), index])


def make_example(kind: str, seed: int, index: int, *, image_size: int = 256) -> records.Example:
    """Record `index` of `kind` for `seed`, id f"{kind}-{seed}-{index}"; it passes `records.validate`."""
    _check(kind, seed, image_size)
    if index < 0:
        raise ValueError(f"corpus index must be >= 0, got {index}")
    ex = _BUILDERS[kind](example_rng(kind, seed, index), f"{kind}-{seed}-{index}", image_size)
    return records.validate(ex)


def generate(kind: str, n: int, seed: int, *, image_size: int = 256) -> Iterator[records.Example]:
    """Records 0..n-1 of `kind` for `seed` (arguments are checked at the call, not at the first next())."""
    _check(kind, seed, image_size)
    return (make_example(kind, seed, i, image_size=image_size) for i in range(n))


def generate_all(n_per_kind: int, seed: int, image_size: int = 256) -> Iterator[records.Example]:
    """`n_per_kind` records of every kind, kind by kind in `records.KINDS` order."""
    for kind in records.KINDS:
        yield from generate(kind, n_per_kind, seed, image_size=image_size)


def _check(kind: str, seed: int, image_size: int) -> None:
    if kind not in _BUILDERS:
        raise ValueError(f"corpus kind {kind!r} is not one of {records.KINDS}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"corpus seed must be an integer >= 0, got {seed!r}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"corpus image_size must be >= {MIN_IMAGE_SIZE} px, got {image_size}")
