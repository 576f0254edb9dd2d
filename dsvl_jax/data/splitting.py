"""Cut a tokenized sample that does not fit one row into consecutive row-sized pieces, losing nothing.

A row holds `seq_len` positions and `image_slots` images. A sample of n tokens takes n - 1
positions (inputs ids[:-1], targets ids[1:]). Pieces overlap by one token: piece [a, b] trains
targets ids[a+1..b], the next one starts at b, so every target of the sample is trained exactly
once, in order, and the pieces together carry every image of the sample, each exactly once.

Where a piece may end (its last token b is the next piece's first input):
- never inside an image block (b is a text token or the first token of a block, which then opens
  the next piece with all its image tokens), so an image keeps the text around it;
- pretraining text (`Sample.breaks is None`): anywhere else, so a long document becomes
  consecutive windows ("text chunks") and a document with more images than slots is cut at image
  boundaries into consecutive samples;
- conversations (`Sample.breaks` = the start of every user turn after the first answer): only
  between turns, so each image stays with its question and each answer with its question.
What still cannot fit (one turn longer than a row, more images in one turn than slots, a run of
image blocks without text that fills a row) is reported with a reason; the caller counts it with
the record's id.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dsvl_jax.data.packing import Sample


@dataclasses.dataclass(frozen=True)
class Split:
    """The pieces of one sample (the sample itself when it fits) and what could not be placed."""

    pieces: list[Sample]
    lost_reason: str = ""  # "" = nothing lost
    lost_detail: str = ""

    @property
    def cut(self) -> bool:
        return len(self.pieces) > 1


def fits(s: Sample, seq_len: int, image_slots: int) -> bool:
    return s.length <= seq_len and s.num_images <= image_slots


def split_sample(
    s: Sample, seq_len: int, image_slots: int, image_token_id: int, num_image_tokens: int
) -> Split:
    """`s` as pieces that each fit a row (see the module docstring); `lost_reason` says why part of
    it (or all of it: no pieces) could not be placed."""
    if fits(s, seq_len, image_slots):
        return Split([s])
    ids = s.ids
    n = int(ids.shape[0])
    is_img = ids == image_token_id
    if is_img[-1] or int(is_img.sum()) % num_image_tokens:
        return Split([], "bad_image_blocks", f"image tokens do not form {num_image_tokens}-blocks")
    # the k-th image is the k-th group of num_image_tokens image ids (blocks may touch)
    block_start = is_img & ((np.cumsum(is_img) - 1) % num_image_tokens == 0)
    # images_before[t]: image blocks that start at an index < t
    images_before = np.concatenate([[0], np.cumsum(block_start)])
    allowed = ~is_img | block_start
    if s.breaks is not None:
        turn = np.zeros(n, bool)
        turn[np.asarray(s.breaks, np.int64)] = True
        allowed &= turn
    allowed[n - 1] = True
    ends = np.flatnonzero(allowed)
    pieces: list[Sample] = []
    a = 0
    while a < n - 1:
        # furthest end b: b - a <= seq_len positions and at most image_slots blocks in ids[a..b-1]
        hi = min(a + seq_len, n - 1)
        hi = min(
            hi, int(np.searchsorted(images_before, images_before[a] + image_slots, "right")) - 1
        )
        j = int(np.searchsorted(ends, hi, "right")) - 1
        b = int(ends[j]) if j >= 0 else -1
        if b <= a:
            what = "turn" if s.breaks is not None else "stretch without a cut point"
            return Split(
                pieces,
                "too_long",
                f"a {what} from token {a} does not fit {seq_len} positions / {image_slots} images "
                f"({n - 1 - a} positions and {int(images_before[-1] - images_before[a])} images left)",
            )
        if s.target_mask[a + 1 : b + 1].any():
            pieces.append(_piece(s, a, b, images_before, len(pieces)))
        elif images_before[b] > images_before[a]:
            return Split(
                pieces,
                "images_without_text",
                f"tokens {a}..{b} hold {int(images_before[b] - images_before[a])} images and no target",
            )
        a = b
    return Split(pieces)


def _piece(s: Sample, a: int, b: int, images_before: np.ndarray, index: int) -> Sample:
    i0, i1 = int(images_before[a]), int(images_before[b])
    px = None if s.pixels is None or i1 == i0 else s.pixels[i0:i1]
    hp = None if s.high_pixels is None or i1 == i0 else s.high_pixels[i0:i1]
    return dataclasses.replace(
        s,
        id=f"{s.id}#{index}",
        ids=s.ids[a : b + 1],
        target_mask=s.target_mask[a : b + 1],
        pixels=px,
        high_pixels=hp,
        breaks=None,
    )
