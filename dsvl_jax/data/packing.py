"""Pack tokenized samples into fixed-shape rows: segment ids and positions keep documents apart.

A row holds `seq_len` positions and `image_slots` images. A sample of n tokens takes n-1
positions (inputs ids[:-1], targets ids[1:]). Segment ids count samples within a row from 1
(0 = padding), positions restart at 0 for every sample, so attention (which only joins equal,
non-zero segments) and RoPE never cross a document. `source_ids` (source index + 1, 0 = padding)
lets the step report the loss per source and per modality. The k-th image of a row belongs to the k-th
run of image tokens in that row, which is how the model splices image embeddings.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Sample:
    """One tokenized example. `target_mask[t]` = 1 where token t is a supervised target."""

    id: str
    source: int
    ids: np.ndarray  # [n] int32
    target_mask: np.ndarray  # [n] uint8
    pixels: np.ndarray | None  # [m, S, S, 3] uint8 (None or m = 0: text-only)
    high_pixels: np.ndarray | None = None  # [m, H, H, 3] uint8 (hybrid models)
    # where a conversation may be cut between turns (data/splitting.py); None: pretraining text
    breaks: np.ndarray | None = None

    @property
    def num_images(self) -> int:
        return 0 if self.pixels is None else int(self.pixels.shape[0])

    @property
    def length(self) -> int:
        """Positions taken in a row."""
        return int(self.ids.shape[0]) - 1


class RowPacker:
    """First-fit packing of samples into a batch of `rows` x `seq_len` with `image_slots` per row.

    pack=False puts one sample per row (padded), as the paper's stages 1 and 3 do."""

    def __init__(
        self,
        rows: int,
        seq_len: int,
        image_slots: int,
        low_size: int,
        high_size: int | None,
        pack: bool = True,
    ):
        self.rows, self.seq_len, self.image_slots, self.pack = rows, seq_len, image_slots, pack
        self.low_size, self.high_size = low_size, high_size
        self.reset()

    def reset(self) -> None:
        self.used = [0] * self.rows
        self.images = [0] * self.rows
        self.placed: list[list[Sample]] = [[] for _ in range(self.rows)]

    @property
    def empty(self) -> bool:
        return not any(self.placed)

    def add(self, s: Sample) -> bool:
        """Place `s` in the first row with room for its tokens and images; False if none has."""
        for r in range(self.rows):
            if (
                (self.pack or not self.placed[r])
                and self.used[r] + s.length <= self.seq_len
                and self.images[r] + s.num_images <= self.image_slots
            ):
                self.placed[r].append(s)
                self.used[r] += s.length
                self.images[r] += s.num_images
                return True
        return False

    def emit(self, with_images: bool = True) -> dict[str, np.ndarray]:
        """The batch as numpy arrays; resets the packer. Without images: no pixel arrays at all."""
        b, t = self.rows, self.seq_len
        out = dict(
            ids=np.zeros((b, t), np.int32),
            targets=np.zeros((b, t), np.int32),
            positions=np.zeros((b, t), np.int32),
            segments=np.zeros((b, t), np.int32),
            loss_mask=np.zeros((b, t), np.float32),
            # the source of every position (its index + 1; 0 = padding): loss per source and modality
            source_ids=np.zeros((b, t), np.int32),
        )
        if with_images:
            i, s = self.image_slots, self.low_size
            out["pixels"] = np.zeros((b, i, s, s, 3), np.uint8)
            if self.high_size:
                out["high_pixels"] = np.zeros((b, i, self.high_size, self.high_size, 3), np.uint8)
        for r, samples in enumerate(self.placed):
            pos, img = 0, 0
            for seg, smp in enumerate(samples, start=1):
                n = smp.length
                sl = slice(pos, pos + n)
                out["ids"][r, sl] = smp.ids[:-1]
                out["targets"][r, sl] = smp.ids[1:]
                out["loss_mask"][r, sl] = smp.target_mask[1:]
                out["segments"][r, sl] = seg
                out["source_ids"][r, sl] = smp.source + 1
                out["positions"][r, sl] = np.arange(n, dtype=np.int32)
                pos += n
                m = smp.num_images
                if m:
                    if not with_images:
                        raise ValueError(f"sample {smp.id} has images but the batch is text-only")
                    out["pixels"][r, img : img + m] = smp.pixels
                    if self.high_size:
                        out["high_pixels"][r, img : img + m] = smp.high_pixels
                    img += m
        self.reset()
        return out
