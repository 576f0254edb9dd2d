"""The commands as users type them: `python -m dsvl_jax.<command> ...` in a subprocess, from the repo root."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
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
