"""Mixture ratio + warm-up, packing (segments/positions, no attention across documents), iterator state."""

import grain
import numpy as np
import pytest

from dsvl_jax.data.mixture import MULTIMODAL, TEXT, Credits, Mixer, RatioSchedule
from dsvl_jax.data.packing import RowPacker, Sample
from dsvl_jax.data.pipeline import DataError, PackedBatches, Skipped, SourceSpec

IMG, N_IMG = 100, 4  # image token id, tokens per image (toy)


def test_ratio_within_2_percent_over_5000_samples():
    mixer = Mixer(
        [TEXT, MULTIMODAL, MULTIMODAL, TEXT], [1.0, 3.0, 1.0, 1.0], RatioSchedule(end=0.7)
    )
    picks = np.array([mixer.choose(step=0) for _ in range(5000)])
    text_share = np.isin(picks, [0, 3]).mean()
    assert abs(text_share - 0.7) <= 0.02
    # within groups, by weight: mm sources 3:1, text sources 1:1
    assert abs((picks == 1).sum() / np.isin(picks, [1, 2]).sum() - 0.75) <= 0.02
    assert abs((picks == 0).sum() / np.isin(picks, [0, 3]).sum() - 0.5) <= 0.02


def test_warmup_schedule_is_followed():
    sched = RatioSchedule(end=0.7, start=1.0, warmup_steps=100)
    assert (
        sched(0) == 1.0
        and sched(50) == pytest.approx(0.85)
        and sched(100) == 0.7
        and sched(10**6) == 0.7
    )
    mixer = Mixer([TEXT, MULTIMODAL], [1.0, 1.0], sched)
    per_step = 200  # samples drawn at each step
    shares = []
    for step in range(0, 120, 10):
        picks = [mixer.choose(step) for _ in range(per_step)]
        shares.append((step, picks.count(0) / per_step))
    for step, share in shares:
        assert abs(share - sched(step)) <= 0.02, (step, share, sched(step))
    with pytest.raises(ValueError, match="must be in"):
        RatioSchedule(end=1.3)


def test_credits_state_round_trip():
    a = Credits(3)
    for _ in range(7):
        a.choose([0.2, 0.5, 0.3])
    b = Credits(3)
    b.set_state(a.get_state())
    assert [a.choose([0.2, 0.5, 0.3]) for _ in range(50)] == [
        b.choose([0.2, 0.5, 0.3]) for _ in range(50)
    ]


def _sample(i: int, n_tokens: int, n_images: int = 0, source: int = 0, size: int = 8) -> Sample:
    ids = np.full(n_tokens, 10 + i % 50, np.int32)
    ids[0] = 1
    ids[1 : 1 + n_images * N_IMG] = IMG
    mask = (ids != IMG).astype(np.uint8)
    mask[0] = 0
    px = np.full((n_images, size, size, 3), i % 255, np.uint8) if n_images else None
    return Sample(f"s{i}", source, ids, mask, px, None)


def test_packing_segments_positions_and_images():
    p = RowPacker(rows=2, seq_len=16, image_slots=2, low_size=8, high_size=None)
    samples = [_sample(0, 7, 1), _sample(1, 5), _sample(2, 9, 1), _sample(3, 6, 1)]
    assert [p.add(s) for s in samples] == [True, True, True, True]
    assert not p.add(_sample(4, 12))  # no row has 11 free positions
    b = p.emit()
    # row 0: s0 (6 positions) + s1 (4) + s3 (5) = 15; row 1: s2 (8)
    assert b["segments"][0].tolist() == [1] * 6 + [2] * 4 + [3] * 5 + [0]
    assert b["positions"][0].tolist() == list(range(6)) + list(range(4)) + list(range(5)) + [0]
    assert b["segments"][1].tolist() == [1] * 8 + [0] * 8
    # targets are next tokens within the sample, loss only on supervised, in-segment targets
    np.testing.assert_array_equal(b["targets"][0, :6], samples[0].ids[1:])
    assert b["loss_mask"][0, 15] == 0 and b["loss_mask"][1, 8:].sum() == 0
    assert not np.any((b["targets"] == IMG) & (b["loss_mask"] > 0))
    # image slots in order of the image-token runs: row 0 holds s0's then s3's image
    assert b["pixels"][0, 0, 0, 0, 0] == 0 and b["pixels"][0, 1, 0, 0, 0] == 3
    assert b["pixels"][1, 0, 0, 0, 0] == 2 and not b["pixels"][1, 1].any()
    assert p.empty
    text_only = RowPacker(1, 16, 1, 8, None)
    text_only.add(_sample(5, 4))
    assert "pixels" not in text_only.emit(with_images=False)


def test_packed_attention_never_crosses_documents():
    """Logits of each document inside a packed row equal the logits of that document alone."""
    import jax

    from dsvl_jax.model.params import init_params
    from dsvl_jax.model.sizes import model_config
    from dsvl_jax.model.vlm import DeepseekVL

    cfg = model_config("tiny")
    model, params = DeepseekVL(cfg), {"params": init_params(cfg, 0)}

    rng = np.random.default_rng(0)
    docs = [rng.integers(101, 256, n).astype(np.int32) for n in (9, 13, 7)]
    p = RowPacker(rows=1, seq_len=32, image_slots=1, low_size=8, high_size=None)
    for i, d in enumerate(docs):
        assert p.add(Sample(f"d{i}", 0, d, np.ones_like(d, np.uint8), None))
    b = p.emit(with_images=False)
    # one shape, one compile
    logits = jax.jit(lambda ids, pos, seg: model.apply(params, ids, pos, seg)[0])
    packed = logits(b["ids"], b["positions"], b["segments"])
    start = 0
    for d in docs:
        n = len(d) - 1
        ids, pos, seg = (np.zeros((1, 32), np.int32) for _ in range(3))
        ids[0, :n], pos[0, :n], seg[0, :n] = d[:-1], np.arange(n), 1  # the document alone, padded
        alone = logits(ids, pos, seg)
        np.testing.assert_allclose(
            np.asarray(packed[0, start : start + n]), np.asarray(alone[0, :n]), atol=2e-5, rtol=0
        )
        start += n


# --- PackedBatches over in-memory sample sources ------------------------------------------------


def _source(k: int, n: int, images: int, bad_every: int = 0):
    def make(i):
        if bad_every and i % bad_every == 0:
            return Skipped(f"src{k}-{i}", k, "image_corrupt", "planted")
        return _sample(i + 1000 * k, 5 + i % 7, images, source=k)

    return grain.MapDataset.range(n).shuffle(seed=k).repeat().map(make).to_iter_dataset()


def _packed(one_modality=False, warmup=0, bad_every=0, max_skip_rate=0.5):
    specs = [SourceSpec("text", None, 1.0, TEXT), SourceSpec("mm", None, 1.0, MULTIMODAL)]
    parents = [_source(0, 50, 0), _source(1, 40, 1, bad_every)]
    return PackedBatches(
        parents,
        specs,
        schedule=RatioSchedule(end=0.7, warmup_steps=warmup),
        rows=4,
        seq_len=32,
        image_slots=2,
        low_size=8,
        high_size=None,
        image_token_id=IMG,
        num_image_tokens=N_IMG,
        one_modality_per_batch=one_modality,
        max_skip_rate=max_skip_rate,
        min_seen=20,
    )


@pytest.mark.parametrize("one_modality", [False, True])
def test_restore_continues_with_the_same_batches(one_modality):
    it = iter(_packed(one_modality, bad_every=9))
    for _ in range(7):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(6)]
    it2 = iter(_packed(one_modality, bad_every=9))
    it2.set_state(state)
    for a, b in zip(expected, (next(it2) for _ in range(6))):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert it2.get_state() == it.get_state()


def test_one_modality_batches_and_skip_counts():
    it = iter(_packed(one_modality=True, bad_every=9))
    kinds = []
    for _ in range(40):
        b = next(it)
        kinds.append("pixels" in b)
        if "pixels" not in b:
            assert not np.any(b["ids"] == IMG)
    assert 0.55 <= 1 - np.mean(kinds) <= 0.85  # text batches at ~0.7 of steps
    stats = it.stats()
    assert (
        stats["mm"]["skipped"]["image_corrupt"] > 0
        and "image_corrupt" not in stats["text"]["skipped"]
    )
    assert stats["mm"]["seen"] == stats["mm"]["used"] + stats["mm"]["skipped"]["image_corrupt"]


def test_skip_rate_cap_is_a_clear_error():
    it = iter(_packed(bad_every=2, max_skip_rate=0.1))
    with pytest.raises(
        DataError,
        match=r"source 'mm': 9 of 21 records skipped \(42.9%\) > data.max_skip_rate=10.0%",
    ):
        for _ in range(50):
            next(it)
