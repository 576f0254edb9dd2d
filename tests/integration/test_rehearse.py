"""Every shipped recipe runs at its real shapes (`python -m dsvl_jax.rehearse`): row length, image sizes
and 576-token images, image slots, packing, mixture and modality warm-up, DeepSeek's vocabulary, stage
freezing and micro-batches, with widths shrunk, on the embedded corpus — and loses no sample.
"""

import json
import os

import pytest

import commands

STAGES = ("stage1_aligner", "stage2_pretrain", "stage3_sft")
STEPS = {
    "stage1_aligner": 2,
    "stage2_pretrain": 3,
    "stage3_sft": 2,
}  # stage 2: reach a multimodal batch


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    """One corpus folder per size (384 px for 1.3b, 1024 px for 7b), shared by its three stages."""
    root = tmp_path_factory.mktemp("rehearsal_data")
    return {size: str(root / size) for size in ("1.3b", "7b")}


def _rehearse(config, workdir, data, *extra, steps=3):
    p = commands.run(
        "rehearse",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--data={data}",
        f"--steps={steps}",
        *extra,
        devices=1,
        timeout=900,
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    return p, (json.loads(lines[-1]) if lines else None)


@pytest.mark.parametrize("size", ["1.3b", "7b"])
@pytest.mark.parametrize("stage", STAGES)
def test_shipped_recipe_rehearses_without_losing_data(stage, size, data_dirs, tmp_path):
    config = f"experiments/{stage}.py:{size}"
    p, out = _rehearse(config, tmp_path, data_dirs[size], steps=STEPS[stage])
    assert p.returncode == 0 and out is not None, p.stderr[-3000:]
    assert out["config"] == config and out["steps"] == STEPS[stage]
    assert out["samples_dropped"] == 0 and out["samples_seen"] > 0
    assert 0.0 < out["row_fill"] <= 1.0 and 0.0 < out["image_slot_fill"] <= 1.0
    assert out["loss_first"] > 0 and out["loss_last"] > 0
    assert out["eval_loss"] > 0 and out["eval_sources"]  # held-out split of the sources
    with open(os.path.join(tmp_path, "run", "config.json")) as f:
        run = json.load(f)
    # the real geometry: 576-token images at 384 px (and 1024 px on 7b), DeepSeek's vocabulary
    assert run["model"]["llm"]["vocab_size"] == 102400 and run["model"]["image_token_id"] == 100015
    assert run["model"]["siglip"]["image_size"] == 384
    assert (run["model"]["vision"] == "hybrid") == (size == "7b")
    with open(os.path.join(tmp_path, "run", "metrics.jsonl")) as f:
        recs = [json.loads(ln) for ln in f]
    train_recs = [r for r in recs if "loss_step" in r]
    assert len(train_recs) == STEPS[stage]
    # every record: interval loss, per-source losses, fill, and the pipeline's counters
    sources = set(run["data"]["sources"])
    for r in train_recs:
        assert {"loss", "row_fill", "samples_seen", "samples_dropped", "samples_split"} <= set(r)
        assert {k.split("/", 1)[1] for k in r if k.startswith("loss/")} <= sources
        assert any(k.startswith("loss/") for k in r)
    (ev,) = [r for r in recs if "eval_loss" in r]
    assert {f"eval_loss/{s}" for s in out["eval_sources"]} <= set(ev)
    if stage == "stage1_aligner":
        assert run["train"]["seq_len"] == 1152 and out["row_fill"] > 0.5  # 576 + 512, padded to 128
    if stage == "stage2_pretrain":
        # modality groups: text batches and multimodal batches both ran, each loss reported apart
        assert any("loss_text" in r for r in train_recs)
        assert any("loss_multimodal" in r for r in train_recs)
        assert out["row_fill"] > 0.5  # packing
        # held-out batches at the settled mix: text and multimodal sources evaluated apart
        assert "text" in out["eval_sources"] and len(out["eval_sources"]) > 1
    if stage == "stage3_sft":
        # in-house documents carry several images for one slot: split at image boundaries
        assert out["samples_split"] > 0


def test_a_recipe_that_drops_data_fails(data_dirs, tmp_path):
    """Stage 1 at the paper's 512 read as the row length (the shipped bug): every image sample is too long
    for its row, the rehearsal reports the drops with ids and exits 1."""
    config = "experiments/stage1_aligner.py:1.3b"
    p, out = _rehearse(config, tmp_path, data_dirs["1.3b"], "--config.train.seq_len=512", steps=1)
    assert p.returncode == 1, p.stderr[-3000:]
    assert out["samples_dropped"] > 0 and "too_long" in out["dropped_reasons"]
    assert out["dropped_ids"] and p.stderr.strip().splitlines()[-1].startswith("rehearse: error: ")
