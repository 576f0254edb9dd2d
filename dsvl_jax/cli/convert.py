"""`python -m dsvl_jax.convert from-hf|to-hf`: HF save_pretrained folder <-> dsvl_jax checkpoint.

  python -m dsvl_jax.convert from-hf --hf DIR --out CKPT
  python -m dsvl_jax.convert to-hf --checkpoint CKPT --out DIR [--dtype bfloat16]

DIR holds config.json + safetensors of DeepseekVL(Hybrid)ForConditionalGeneration; CKPT is an orbax
checkpoint of dsvl_jax params plus its model config. Neither direction needs torch.
"""
from __future__ import annotations

import json
import sys
import time

from absl import app, flags

from dsvl_jax.cli.common import setup_logging

FLAGS = flags.FLAGS
flags.DEFINE_string("hf", None, "HF save_pretrained folder to read (from-hf).")
flags.DEFINE_string("checkpoint", None, "dsvl_jax checkpoint to read (to-hf).")
flags.DEFINE_string("out", None, "Output: checkpoint dir (from-hf) or HF folder (to-hf).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Tensor dtype written by to-hf.")
flags.DEFINE_bool("scan_layers", True, "from-hf: store SigLIP/LLM blocks stacked for nn.scan.")

USAGE = "usage: python -m dsvl_jax.convert {from-hf --hf DIR | to-hf --checkpoint CKPT} --out OUT"


def from_hf(hf_dir: str, out: str, scan_layers: bool = True) -> dict:
    from dsvl_jax.interop.hf_import import load_hf
    from dsvl_jax.model.params import count_params
    from dsvl_jax.train.checkpoint import save_params
    cfg, params = load_hf(hf_dir, scan_layers=scan_layers)
    save_params(out, cfg, params)
    return {"command": "from-hf", "hf": hf_dir, "out": out, "vision": cfg.vision, "params": count_params(params)}


def to_hf(ckpt: str, out: str, dtype: str = "float32") -> dict:
    from dsvl_jax.interop.hf_export import save_hf
    from dsvl_jax.train.checkpoint import load_params
    cfg, params = load_params(ckpt)
    files = save_hf(out, cfg, params, dtype=dtype)
    return {"command": "to-hf", "checkpoint": ckpt, "out": out, "files": files, "dtype": dtype}


def run(argv: list[str]) -> dict:
    if len(argv) != 2 or argv[1] not in ("from-hf", "to-hf"):
        raise app.UsageError(USAGE)
    if not FLAGS.out:
        raise app.UsageError("--out is required. " + USAGE)
    t0 = time.time()
    if argv[1] == "from-hf":
        if not FLAGS.hf:
            raise app.UsageError("from-hf needs --hf DIR. " + USAGE)
        res = from_hf(FLAGS.hf, FLAGS.out, FLAGS.scan_layers)
    else:
        if not FLAGS.checkpoint:
            raise app.UsageError("to-hf needs --checkpoint CKPT. " + USAGE)
        res = to_hf(FLAGS.checkpoint, FLAGS.out, FLAGS.dtype)
    res["seconds"] = round(time.time() - t0, 2)
    return res


def main(argv: list[str]) -> None:
    setup_logging()
    print(json.dumps(run(argv)))
    sys.stdout.flush()


def entry() -> None:
    app.run(main)
