"""The commands users type: `python -m dsvl_jax.convert` both ways and `python -m dsvl_jax.demo`."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    p = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_demo_then_convert_round_trip(tmp_path):
    out = tmp_path / "demo"
    p = _run("dsvl_jax.demo", "--config=experiments/demo.py:tiny", f"--config.out_dir={out}",
             "--config.max_new_tokens=5")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(res["caption_ids"]) == 5 and res["model"] == "hybrid"
    # HF folder written by the demo -> dsvl_jax checkpoint -> HF folder again: same tensors.
    ckpt, hf2 = tmp_path / "ckpt", tmp_path / "hf2"
    r1 = json.loads(_run("dsvl_jax.convert", "from-hf", f"--hf={out / 'hf'}", f"--out={ckpt}").stdout.splitlines()[-1])
    assert r1["params"] == res["params"]
    _run("dsvl_jax.convert", "to-hf", f"--checkpoint={ckpt}", f"--out={hf2}")
    from dsvl_jax.interop.hf_import import read_safetensors
    a, b = read_safetensors(str(out / "hf")), read_safetensors(str(hf2))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_convert_usage_error():
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "dsvl_jax.convert", "sideways", "--out=x"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert "from-hf" in p.stderr and "to-hf" in p.stderr
