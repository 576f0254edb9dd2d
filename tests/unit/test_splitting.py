"""Nothing is lost at real shapes: documents with more images than a row's slots are split at image
boundaries, long texts are chunked into windows, conversations are cut between turns; every image and
every target token reaches exactly one batch, and what cannot fit is counted with its id."""

import grain
import numpy as np
import pytest

from dsvl_jax.data.mixture import MULTIMODAL, TEXT, RatioSchedule
from dsvl_jax.data.packing import Sample
from dsvl_jax.data.pipeline import PackedBatches, SourceSpec
from dsvl_jax.data.splitting import split_sample

IMG, N_IMG, SEQ, SLOTS = 100, 16, 64, 2


def _doc(name: str, parts: list, source: int = 0) -> Sample:
    """A pretraining document: BOS, then text runs (ints: that many tokens) and images ("img"), EOS.
    Text token values count up so every token is unique; pixels hold the image's index."""
    ids, nxt, n_img = [1], 200, 0
    for p in parts:
        if p == "img":
            ids += [IMG] * N_IMG
            n_img += 1
        else:
            ids += list(range(nxt, nxt + p))
            nxt += p
    ids.append(2)
    ids = np.asarray(ids, np.int32)
    mask = (ids != IMG).astype(np.uint8)
    mask[0] = 0
    px = np.arange(n_img, dtype=np.uint8)[:, None, None, None] * np.ones((n_img, 4, 4, 3), np.uint8)
    return Sample(name, source, ids, mask, px if n_img else None)


def _targets(pieces) -> list[int]:
    return [int(t) for p in pieces for t, m in zip(p.ids[1:], p.target_mask[1:]) if m]


def _split(s):
    return split_sample(s, SEQ, SLOTS, IMG, N_IMG)


def test_six_image_document_is_split_at_image_boundaries():
    s = _doc("doc6", [5, "img", 7, "img", 3, "img", 9, "img", 4, "img", 6, "img", 8])
    sp = _split(s)
    assert not sp.lost_reason and sp.cut
    for p in sp.pieces:
        assert p.length <= SEQ and p.num_images <= SLOTS
        assert int((p.ids[:-1] == IMG).sum()) == p.num_images * N_IMG  # whole blocks as inputs
    # every image exactly once, in order, and every target token exactly once, in order
    images = np.concatenate([p.pixels[:, 0, 0, 0] for p in sp.pieces if p.pixels is not None])
    assert images.tolist() == list(range(6))
    assert _targets(sp.pieces) == [int(t) for t, m in zip(s.ids[1:], s.target_mask[1:]) if m]
    assert [p.id for p in sp.pieces] == [f"doc6#{i}" for i in range(len(sp.pieces))]


def test_text_three_rows_long_is_chunked_into_windows():
    s = _doc("long", [3 * SEQ - 10])
    sp = _split(s)
    assert not sp.lost_reason and len(sp.pieces) == 3
    assert [p.length for p in sp.pieces] == [SEQ, SEQ, s.length - 2 * SEQ]
    assert _targets(sp.pieces) == s.ids[1:].tolist()  # every token trained once
    for a, b in zip(sp.pieces, sp.pieces[1:]):  # consecutive windows share their boundary token
        assert a.ids[-1] == b.ids[0]


def test_conversation_is_cut_between_turns_only():
    # BOS sys "User: <img> q" | "Assistant:" a EOS | "User: <img> q" ... ; breaks = turn starts
    ids, mask, breaks, px = [1] + [5] * 4, [0] * 5, [], []
    for turn in range(3):
        if turn:
            breaks.append(len(ids))
        ids += [6, *[IMG] * N_IMG, 7, 7, 8]  # "User:" image question "Assistant:"
        mask += [0] * (N_IMG + 4)
        ids += [300 + 10 * turn + i for i in range(12)] + [2]  # answer + EOS
        mask += [1] * 13
        px.append(np.full((4, 4, 3), turn, np.uint8))
    s = Sample("conv", 0, np.asarray(ids, np.int32), np.asarray(mask, np.uint8), np.stack(px))
    s.breaks = np.asarray(breaks, np.int32)
    sp = split_sample(s, 2 * 36, 1, IMG, N_IMG)  # one image slot: one turn per piece
    assert not sp.lost_reason and len(sp.pieces) == 3
    for turn, p in enumerate(sp.pieces):
        assert p.num_images == 1 and p.pixels[0, 0, 0, 0] == turn  # each image with its question
        assert _targets([p]) == [300 + 10 * turn + i for i in range(12)] + [2]
    # a turn longer than a row cannot be cut inside: counted, with what fitted kept
    short = split_sample(s, 30, 1, IMG, N_IMG)
    assert short.lost_reason == "too_long" and "turn" in short.lost_detail


def test_what_cannot_be_placed_is_reported():
    # back-to-back images open the document and one slot per row: the first piece would hold an image
    # and nothing to predict
    sp = split_sample(_doc("wall", ["img", "img", 3]), SEQ, 1, IMG, N_IMG)
    assert sp.lost_reason == "images_without_text" and not sp.pieces
    # touching blocks are still separate images: two slots take both
    sp = split_sample(_doc("wall", [2, "img", "img", "img", 3]), 40, 2, IMG, N_IMG)
    assert not sp.lost_reason and [p.num_images for p in sp.pieces] == [2, 1]


def _samples(k: int, make) -> grain.IterDataset:
    return grain.MapDataset.range(10**6).map(lambda i: make(i, k)).to_iter_dataset()


def _iter():
    def mm(i, k):
        if i % 3 == 0:  # a 6-image document every third sample
            return _doc(
                f"mm{i}", [4, "img", 5, "img", 3, "img", 6, "img", 2, "img", 3, "img", 5], k
            )
        return _doc(f"mm{i}", [6, "img", 9], k)

    def text(i, k):
        return _doc(f"t{i}", [3 * SEQ - 10 if i % 2 == 0 else 20], k)

    specs = [SourceSpec("text", None, 1.0, TEXT), SourceSpec("mm", None, 1.0, MULTIMODAL)]
    return iter(
        PackedBatches(
            [_samples(0, text), _samples(1, mm)],
            specs,
            schedule=RatioSchedule(end=0.5),
            rows=4,
            seq_len=SEQ,
            image_slots=SLOTS,
            low_size=4,
            high_size=None,
            image_token_id=IMG,
            num_image_tokens=N_IMG,
            pack=True,
        )
    )


def test_pipeline_delivers_every_piece_and_counts_them():
    it = _iter()
    batches = [next(it) for _ in range(12)]
    st = it.stats()
    assert st["mm"]["split"] > 0 and st["text"]["chunked"] > 0
    assert not st["mm"]["skipped"] and not st["text"]["skipped"]
    # the pieces of the long texts: windows trained in order with nothing dropped
    assert st["text"]["chunks"] == 3 * st["text"]["chunked"]
    # image blocks in the batches match the images handed over (slot by slot)
    for b in batches:
        for r in range(b["ids"].shape[0]):
            blocks = int((b["ids"][r] == IMG).sum()) // N_IMG
            assert blocks <= SLOTS
            assert (b["source_ids"][r] > 0).sum() == (b["segments"][r] > 0).sum()


@pytest.mark.parametrize("draws", [1, 2, 5])
def test_restore_inside_a_cut_sample_continues_exactly(draws):
    it = _iter()
    for _ in range(draws):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    it2 = _iter()
    it2.set_state(state)
    for a, b in zip(expected, (next(it2) for _ in range(4))):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert it2.get_state() == it.get_state()
