"""A planted loss spike rolled back and skipped, then a full disk under the logs: one tiny stage-2 run.

The spike is planted the way a bad window of data does it: the update of step 7 multiplies every
parameter by 10 (a wrapper around the compiled step), so the losses of steps 8 and 9 jump far above
their running mean. With spike_patience=2 the run must defer the checkpoint of step 8, roll back to
step 6 (the newest checkpoint before the spike), skip the 4 batches it had drawn since, and finish with
ordinary losses. Later the metrics file's disk fills up (every write fails with ENOSPC) while step 12 is
logged: the run ends with one LogWriteError after saving step 12, and the rerun resumes from it and
finishes, its spike guard (one rollback so far) restored from the checkpoint."""

import json
import os
from typing import ClassVar

import jax
import numpy as np
import pytest
from faults import FullDisk

from dsvl_jax.checkpoints.run import QUARANTINE_DIR
from dsvl_jax.config import load_experiment
from dsvl_jax.train import loop
from dsvl_jax.train.logger import LogWriteError, MetricsLogger, read_metrics
from dsvl_jax.train.step import CompiledStep

import commands

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POISON_CALL = 7  # the 7th call of the step function (step 7) returns parameters x10
FULL_AT = 12  # the record of this step meets a full disk


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return commands.tiny_corpus(tmp_path_factory.mktemp("data"))


def _cfg(data_root):
    c = load_experiment(os.path.join(ROOT, "experiments", "stage2_pretrain.py"), "tiny").unlock()
    c.data_root = data_root
    c.train.update(dict(steps=14, batch_size=8, seq_len=96, images_per_sample=1))
    c.train.update(dict(spike_patience=2, spike_factor=1.5, spike_window=3, spike_max_rollbacks=1))
    c.data.modality_warmup_steps = 4
    c.checkpoint.every_steps, c.checkpoint.keep = 2, 3
    c.log.every_steps, c.log.progress, c.eval.every_steps = 1, False, 0
    return c


class _Planted(CompiledStep):
    """The compiled step; its POISON_CALL-th call scales the new parameters by 10. Records each call's
    batch (the token ids) to tell which batches the run drew."""

    calls: ClassVar[list] = []

    def __call__(self, state, batch):
        new, metrics = super().__call__(state, batch)
        _Planted.calls.append(np.asarray(jax.device_get(batch["ids"])))
        if len(_Planted.calls) == POISON_CALL:
            new = new.replace(params=jax.tree.map(lambda p: p * 10, new.params))
        return new, metrics


@pytest.fixture(scope="module")
def spiked(data_root, tmp_path_factory):
    """-> (workdir, the LogWriteError that ended the first attempt, the rerun's result)."""
    work = tmp_path_factory.mktemp("spike") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(loop, "CompiledStep", _Planted)
    real_write = MetricsLogger.write

    def write(self, record):
        if record.get("step") == FULL_AT and "loss" in record:
            self._f.close()
            self._f = FullDisk()
        return real_write(self, record)

    mp.setattr(MetricsLogger, "write", write)
    try:
        with pytest.raises(LogWriteError) as e:
            loop.train(_cfg(data_root), str(work))
    finally:
        mp.undo()
    res = loop.train(_cfg(data_root), str(work))  # the rerun, with a disk that has room
    return work, e.value, res


def test_the_spike_is_rolled_back_once_and_its_batches_skipped(spiked):
    work = spiked[0]
    lines = (work / loop.ROLLBACKS).read_text().splitlines()
    assert len(lines) == 1
    rb = json.loads(lines[0])
    # steps 8 and 9 spiked; the guard saw step 9's loss when step 10 was dispatched
    assert rb["spike_steps"] == [8, 9] and rb["at_step"] == 10 and rb["to_step"] == 6
    assert rb["skipped_batches"] == 4 and rb["rollback"] == 1
    assert min(rb["losses"]) > 1.5 * rb["running_mean"]
    calls = _Planted.calls
    # 10 steps, then from step 7 again: the replayed step 7 trains on a batch drawn after the skipped
    # four, not on the batch the first step 7 had
    assert len(calls) >= 11
    assert not np.array_equal(calls[10], calls[6])


def test_no_checkpoint_of_the_spike_was_ever_written(spiked):
    work = spiked[0]
    ckpts = work / "checkpoints"
    assert not (ckpts / QUARANTINE_DIR).exists()  # step 8 was deferred: nothing to move aside
    assert sorted(int(s) for s in os.listdir(ckpts) if s.isdigit()) == [10, 12, 14]


def test_the_losses_after_the_rollback_are_ordinary_and_each_step_shows_once(spiked):
    work = spiked[0]
    recs = read_metrics(str(work / "metrics.jsonl"))
    steps = [r["step"] for r in recs if "loss" in r]
    # step 12's record is the one the full disk refused (its step is in the checkpoint the rerun resumed)
    assert steps == [s for s in range(1, 15) if s != FULL_AT]
    rb = json.loads((work / loop.ROLLBACKS).read_text())
    losses = {r["step"]: r["loss"] for r in recs if "loss" in r}
    assert all(losses[s] < 1.5 * rb["running_mean"] for s in steps if s > 6), losses
    assert [r for r in recs if "rollbacks" in r and "loss" not in r] == [
        {"step": 6, "rollbacks": 1}
    ]
    assert recs[-1]["rollbacks"] == 1  # counted in every later record, across the resume


def test_tensorboard_shows_each_step_once_with_the_replayed_losses(spiked):
    """The rollback's new event file purges the steps after 6; TensorBoard's own reader shows the
    replayed values, never the spike's (the writer the full disk abandoned got its queue flushed: only
    that disk was full)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    work = spiked[0]
    acc = EventAccumulator(str(work / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("train/loss_step")
    shown = {e.step: e.value for e in events}
    assert len(shown) == len(events)  # no step twice
    recs = read_metrics(str(work / "metrics.jsonl"))
    logged = {r["step"]: r["loss_step"] for r in recs if "loss" in r}
    assert sorted(shown) == sorted(logged)
    assert all(np.isclose(shown[s], logged[s]) for s in shown), (shown, logged)


def test_a_full_disk_saves_the_step_reached_and_the_rerun_finishes(spiked):
    work, err, res = spiked
    msg = str(err)
    assert "metrics.jsonl: cannot write the run's records: the disk is full" in msg
    assert f"step {FULL_AT} was saved before stopping" in msg and "\n" not in msg
    assert res.step == 14 and os.path.isdir(res.final_dir)
    # the rerun resumed from the emergency checkpoint and kept the spike guard's count
    meta = json.loads((work / "checkpoints" / "14" / "meta" / "metadata").read_text())
    assert meta["spike"]["rollbacks"] == 1
