"""The commands as users type them: `python -m dsvl_jax.<command> ...` in a subprocess, from the repo root."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def xla_flags(devices: int) -> str:
    """This process's XLA_FLAGS (the suite's compile options) with `devices` fake CPU devices."""
    rest = re.sub(
        r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")
    )
    return f"{rest.strip()} --xla_force_host_platform_device_count={devices}".strip()


def run(
    command: str,
    *args: str,
    devices: int | None = None,
    timeout: float = 600,
    stdin: str | None = None,
    cwd: str = ROOT,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run one command; `devices` fake CPU devices (None: the test process's XLA_FLAGS)."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **(env or {}))
    if devices is not None:
        env["XLA_FLAGS"] = xla_flags(devices)
    return subprocess.run(
        [sys.executable, "-m", f"dsvl_jax.{command}", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def make_corpus(
    out, kinds: str = "caption,ocr", n: int = 16, image_size: int = 64, vocab: int = 400
) -> str:
    """`data generate` of a small corpus plus its tokenizer into `out`; -> out."""
    p = run(
        "data",
        "generate",
        f"--kinds={kinds}",
        f"--n={n}",
        f"--image_size={image_size}",
        f"--out={out}",
        f"--tokenizer_vocab={vocab}",
        "--progress=false",
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return str(out)


def tiny_corpus(root, heldout_chart: bool = False) -> str:
    """Every embedded kind, 16 records at 64 px, plus a 400-piece SentencePiece tokenizer, under
    `root` (the data_root of the tiny training tests); `heldout_chart` adds the chart held-out split."""
    from dsvl_jax.data import builders, records, shards, tokenizer

    dirs = builders.generate_corpus(records.KINDS, str(root), n=16, seed=0, image_size=64)
    if heldout_chart:
        builders.generate_corpus(
            ("chart",), os.path.join(str(root), "dsvl_chart", "heldout"), n=8, seed=1, image_size=64
        )
    ex = [shards.open_source(d)[i] for d in dirs.values() for i in range(16)]
    tokenizer.train_on_examples(ex, 400, out=os.path.join(str(root), "tokenizer.model"))
    return str(root)
