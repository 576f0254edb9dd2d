"""The metrics a run logs: interval means of the loss (overall, per modality, per source), batch fill, and
the input pipeline's counters — not one step's value."""

import numpy as np

from dsvl_jax.train.tracker import BatchCounts, StepTracker, batch_counts, data_totals


class _Logger:
    def __init__(self):
        self.records = []

    def write(self, rec):
        self.records.append(rec)

    def progress(self, *a, **k):
        pass


def _metrics(loss, tokens, src_ce, src_tok, skipped=0):
    pad = lambda v: np.asarray(v + [0.0] * (16 - len(v)), np.float32)  # noqa: E731
    return {
        "loss": np.float32(loss),
        "z_loss": np.float32(0),
        "grad_norm": np.float32(1),
        "tokens": np.float32(tokens),
        "learning_rate": np.float32(1e-3),
        "skipped": np.int32(skipped),
        "source_ce": pad(src_ce),
        "source_tokens": pad(src_tok),
    }


def test_records_hold_interval_means_per_source_and_modality():
    log = _Logger()
    stats = {
        "text": {
            "seen": 5,
            "used": 5,
            "split": 0,
            "split_pieces": 0,
            "chunked": 2,
            "chunks": 6,
            "tokens": 9,
            "skipped": {},
            "skipped_ids": [],
        },
        "mm": {
            "seen": 4,
            "used": 3,
            "split": 1,
            "split_pieces": 2,
            "chunked": 0,
            "chunks": 0,
            "tokens": 9,
            "skipped": {"too_long": 1},
            "skipped_ids": [["m1", "too_long"]],
        },
    }
    tr = StepTracker(
        log,
        log_every=3,
        max_bad_steps=5,
        flops_per_step=1.0,
        peak_flops=0.0,
        sources=[("text", "text"), ("mm", "multimodal")],
        data_stats=lambda: stats,
    )
    counts = BatchCounts(10, 6, row_fill=0.5, image_slot_fill=None)
    # step 1: text only (loss 2 over 10 tokens); 2: mm only (4 over 30); 3: both (1 over 10 + 3 over 10)
    steps = [
        _metrics(2.0, 10, [20.0], [10.0]),
        _metrics(4.0, 30, [0.0, 120.0], [0.0, 30.0]),
        _metrics(2.0, 20, [10.0, 30.0], [10.0, 10.0]),
    ]
    for i, m in enumerate(steps, start=1):
        tr.dispatched(i, m, 0.0, counts if i != 2 else BatchCounts(10, 6, 1.0, 0.75))
    tr.settle(force=False)
    (rec,) = log.records
    assert rec["step"] == 3 and rec["loss_step"] == 2.0
    np.testing.assert_allclose(
        rec["loss"], (20 + 120 + 40) / 60
    )  # token-weighted over the interval
    np.testing.assert_allclose(rec["loss_text"], 30 / 20)
    np.testing.assert_allclose(rec["loss_multimodal"], 150 / 40)
    np.testing.assert_allclose([rec["loss/text"], rec["loss/mm"]], [30 / 20, 150 / 40])
    np.testing.assert_allclose(rec["row_fill"], 2 / 3)
    assert rec["image_slot_fill"] == 0.75  # only batches with image slots count
    assert rec["samples_seen"] == 9 and rec["samples_dropped"] == 1 and rec["samples_split"] == 1
    assert rec["text_chunked"] == 2 and rec["text_chunks"] == 6
    # a skipped (non-finite) step stays out of the means
    tr.dispatched(4, _metrics(float("nan"), 10, [5.0], [10.0], skipped=1), 0.0, counts)
    tr.dispatched(5, _metrics(1.0, 10, [10.0], [10.0]), 0.0, counts)
    tr.settle(force=True)
    assert log.records[-1]["loss"] == 1.0 and log.records[-1]["loss/text"] == 1.0


def test_batch_counts_and_totals():
    ids = np.array([[1, 9, 9, 5, 6, 0], [1, 9, 9, 9, 9, 7]], np.int32)
    seg = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], np.int32)
    b = {"ids": ids, "segments": seg, "pixels": np.zeros((2, 2, 4, 4, 3), np.uint8)}
    c = batch_counts(b, image_token_id=9, num_image_tokens=2)
    assert (c.text_tokens, c.image_tokens) == (5, 6)
    assert c.row_fill == 11 / 12 and c.image_slot_fill == 3 / 4
    assert batch_counts({"ids": ids, "segments": seg}, 9, 2).image_slot_fill is None
    assert data_totals({})["samples_seen"] == 0
