"""The commands users type: `python -m dsvl_jax.convert` both ways and `python -m dsvl_jax.demo`."""

import json
import re

import numpy as np

import commands


def _run(command, *args):
    p = commands.run(command, *args, devices=1)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _strict_json(line: str) -> dict:
    """JSON as the spec has it: NaN / Infinity (which json.dumps writes by default) refused."""

    def refuse(name):
        raise ValueError(f"non-finite {name} in {line[:200]}")

    return json.loads(line, parse_constant=refuse)


# a tqdm bar with elapsed<remaining and its rate, e.g. "2/3 [00:11<00:05,  5.89s/step"
_STEP_BAR = re.compile(r"\d+/\d+ \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(s/step|step/s)")


def test_demo_then_convert_round_trip(tmp_path):
    """The main job at toy scale (3 stages, a few steps each), then its final params -> HF -> back.
    Every phase shows progress on stderr; stdout ends with one strict JSON line with a showcase; a
    rerun of the finished demo prints the same JSON from result.json without training."""
    out = tmp_path / "demo"
    small = [
        "--config.stage1.train.steps=2",
        "--config.stage2.train.steps=2",
        "--config.stage3.train.steps=3",
        "--config.stage3.eval.every_steps=3",
        "--config.stage3.eval.qa_items=4",
        "--config.stage2.train.seq_len=128",
    ]
    args = (
        "--config=experiments/demo.py:tiny",
        f"--config.out_dir={out}",
        "--config.corpus.n=8",
        "--config.corpus.n_chart=16",
        "--config.corpus.heldout_n=4",
        "--config.corpus.tokenizer_vocab=400",
        *small,
    )
    p = _run("demo", *args)
    lines = p.stdout.strip().splitlines()
    res = _strict_json(lines[-1])
    assert 0.0 <= res["accuracy"] <= 1.0 and 0.0 < res["chance"] <= 1.0 and res["qa_items"] == 4
    assert [res["stages"][s]["steps"] for s in ("stage1", "stage2", "stage3")] == [2, 2, 3]
    show = res["showcase"]
    assert len(show) == 3 and all(
        isinstance(s["question"], str)
        and s["question"]
        and isinstance(s["answer"], str)
        and isinstance(s["expected"], str)
        and s["expected"]
        and s["correct"] == (s["answer"] == s["expected"])
        and (out / "showcase" / f"{i}.png").exists()
        for i, s in enumerate(show)
    ), show
    # the human-readable lines before the JSON: the accuracy, then each item with its expected answer
    assert lines[0].startswith("held-out accuracy") and len(lines) == 2 + len(show)
    assert all(repr(s["expected"]) in ln for s, ln in zip(show, lines[1:-1]))
    # progress on stderr, phase by phase: corpus, tokenizer, each stage's step bar, the eval
    err = p.stderr
    for bar in (
        r"dsvl_chart: +\d+%",
        r"tokenizer: reading text: +\d+%",
        r"eval: held-out[^%]*100%",
    ):
        assert re.search(bar, err), bar
    assert "stage1: 2 steps" in err and "stage3: 3 steps" in err
    assert len(_STEP_BAR.findall(err)) >= 3, err[-3000:]
    # a finished demo run again: the stored result, strictly the same, nothing trained
    again = _run("demo", *args)
    assert _strict_json(again.stdout.strip().splitlines()[-1]) == res
    assert again.stdout == p.stdout
    assert "already finished" in again.stderr and not _STEP_BAR.search(again.stderr)
    for f in (
        "stage3/final/model_config.json",
        "stage3/final/tokenizer.model",
        "stage1/metrics.jsonl",
        "plots/loss.png",
        "stage2/tensorboard",
    ):
        assert (out / f).exists(), f
    _check_frozen_parts(out)
    # TensorBoard: grouped tags, and the in-run eval's answers as a text table
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "stage3" / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and "eval/accuracy" in acc.Tags()["scalars"]
    assert any(t.startswith("eval/answers") for t in acc.Tags()["tensors"])
    # the stage-3 run dir (its final params and tokenizer) -> HF folder -> dsvl_jax checkpoint -> HF folder
    hf, ckpt, hf2 = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "hf2"
    _run("convert", "to-hf", f"--checkpoint={out / 'stage3'}", f"--out={hf}")
    assert (hf / "tokenizer.json").exists() and (hf / "preprocessor_config.json").exists()
    _run("convert", "from-hf", f"--hf={hf}", f"--out={ckpt}")
    _run("convert", "to-hf", f"--checkpoint={ckpt}", f"--out={hf2}")
    from dsvl_jax.interop.hf_import import read_safetensors

    a, b = read_safetensors(str(hf)), read_safetensors(str(hf2))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _check_frozen_parts(out):
    """Across each stage the groups it freezes stay bit-identical (stage 1 starts from the seed's init)."""
    import jax

    from dsvl_jax.checkpoints import load_model
    from dsvl_jax.model.params import flatten, init_params
    from dsvl_jax.train.optim import STAGE_TRAINABLE, group_of

    cfg, _ = load_model(str(out / "stage1" / "final"))
    before = {k: np.asarray(v) for k, v in flatten(init_params(cfg, jax.random.key(0))).items()}
    for stage in (1, 2, 3):
        _, p = load_model(str(out / f"stage{stage}" / "final"))
        after = {k: np.asarray(v) for k, v in flatten(p).items()}
        moved = {group_of(k) for k in after if not np.array_equal(after[k], before[k])}
        assert moved and moved <= set(STAGE_TRAINABLE[stage]), (stage, moved)
        before = after
