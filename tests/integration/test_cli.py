"""The commands users type: `python -m dsvl_jax.convert` both ways and `python -m dsvl_jax.demo`."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_demo_then_convert_round_trip(tmp_path):
    """The main job at toy scale (3 stages, a few steps each), then its final params -> HF -> back."""
    out = tmp_path / "demo"
    small = ",".join(["stage1.train.steps=2", "stage2.train.steps=2", "stage3.train.steps=3",
                      "stage3.eval.every_steps=3", "stage3.eval.qa_items=4", "stage2.train.seq_len=128"])
    p = _run("dsvl_jax.demo", "--config=experiments/demo.py:tiny", f"--config.out_dir={out}", "--config.corpus.n=8",
             "--config.corpus.n_chart=16", "--config.corpus.heldout_n=4", "--config.corpus.tokenizer_vocab=400",
             f"--config.overrides={small}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert 0.0 <= res["accuracy"] <= 1.0 and 0.0 < res["chance"] <= 1.0 and res["chat"]["answer"] is not None
    assert [res["stages"][s]["steps"] for s in ("stage1", "stage2", "stage3")] == [2, 2, 3]
    for f in ("stage3/final/model_config.json", "stage3/final/tokenizer.model", "stage1/metrics.jsonl",
              "plots/loss.png", "stage2/tensorboard"):
        assert (out / f).exists(), f
    _check_frozen_parts(out)
    # final params (with their tokenizer) -> HF folder -> dsvl_jax checkpoint -> HF folder: same tensors.
    hf, ckpt, hf2 = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "hf2"
    _run("dsvl_jax.convert", "to-hf", f"--checkpoint={out / 'stage3' / 'final'}", f"--out={hf}")
    assert (hf / "tokenizer.json").exists() and (hf / "preprocessor_config.json").exists()
    _run("dsvl_jax.convert", "from-hf", f"--hf={hf}", f"--out={ckpt}")
    _run("dsvl_jax.convert", "to-hf", f"--checkpoint={ckpt}", f"--out={hf2}")
    from dsvl_jax.interop.hf_import import read_safetensors
    a, b = read_safetensors(str(hf)), read_safetensors(str(hf2))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _check_frozen_parts(out):
    """Across each stage the groups it freezes stay bit-identical (stage 1 starts from the seed's init)."""
    import jax
    from dsvl_jax.model.params import flatten, init_params
    from dsvl_jax.train.checkpoint import load_params
    from dsvl_jax.train.optim import STAGE_TRAINABLE, group_of

    cfg, _ = load_params(str(out / "stage1" / "final"))
    before = {k: np.asarray(v) for k, v in flatten(init_params(cfg, jax.random.key(0))).items()}
    for stage in (1, 2, 3):
        _, p = load_params(str(out / f"stage{stage}" / "final"))
        after = {k: np.asarray(v) for k, v in flatten(p).items()}
        moved = {group_of(k) for k in after if not np.array_equal(after[k], before[k])}
        assert moved and moved <= set(STAGE_TRAINABLE[stage]), (stage, moved)
        before = after


def test_convert_usage_error():
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "dsvl_jax.convert", "sideways", "--out=x"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert "from-hf" in p.stderr and "to-hf" in p.stderr
