"""`python -m dsvl_jax.convert from-hf|to-hf`: HF save_pretrained folder <-> dsvl_jax checkpoint.

  python -m dsvl_jax.convert from-hf --hf DIR --out CKPT
  python -m dsvl_jax.convert to-hf --checkpoint CKPT --out DIR [--dtype bfloat16] [--tokenizer PATH|none]

DIR holds config.json + safetensors of DeepseekVL(Hybrid)ForConditionalGeneration; CKPT is an orbax
checkpoint of dsvl_jax params plus its model config. Neither direction needs torch.

to-hf also writes the tokenizer and processor files (tokenizer.json, tokenizer_config.json,
special_tokens_map.json, preprocessor_config.json, processor_config.json, chat_template.jinja,
generation_config.json; see dsvl_jax/interop/hf_processor.py), so PyTorch users run
`AutoProcessor.from_pretrained(DIR)` and `DeepseekVL(Hybrid)ForConditionalGeneration.from_pretrained(DIR)`.
The tokenizer is --tokenizer (a SentencePiece .model, a tokenizer.json or its folder), by default the
one stored in CKPT (tokenizer.model, tokenizer.json or tokenizer/); `--tokenizer=none` exports the
weights only. from-hf copies DIR's tokenizer files (if any) into CKPT/tokenizer/.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time

from absl import app, flags

from dsvl_jax.cli.common import setup_logging

FLAGS = flags.FLAGS
USAGE = "usage: python -m dsvl_jax.convert {from-hf --hf DIR | to-hf --checkpoint CKPT} --out OUT"
AUTO = "auto"
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def define_flags() -> None:
    """Defined when the command runs, not at import: other CLI modules define flags with the same names."""
    flags.DEFINE_string("hf", None, "HF save_pretrained folder to read (from-hf).")
    flags.DEFINE_string("checkpoint", None, "dsvl_jax checkpoint to read (to-hf).")
    flags.DEFINE_string("out", None, "Output: checkpoint dir (from-hf) or HF folder (to-hf).")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Tensor dtype written by to-hf.")
    flags.DEFINE_bool("scan_layers", True, "from-hf: store SigLIP/LLM blocks stacked for nn.scan.")
    flags.DEFINE_string("tokenizer", AUTO, "to-hf: tokenizer to export with the model (.model, tokenizer.json or "
                                           "its folder); 'auto' = the one stored in --checkpoint, 'none' = skip.")


def from_hf(hf_dir: str, out: str, scan_layers: bool = True) -> dict:
    from dsvl_jax.interop.hf_import import load_hf
    from dsvl_jax.model.params import count_params
    from dsvl_jax.train.checkpoint import save_params
    cfg, params = load_hf(hf_dir, scan_layers=scan_layers)
    save_params(out, cfg, params)
    copied = []
    if os.path.isfile(os.path.join(hf_dir, "tokenizer.json")):
        os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
        for name in HF_TOKENIZER_FILES:
            if os.path.isfile(os.path.join(hf_dir, name)):
                shutil.copyfile(os.path.join(hf_dir, name), os.path.join(out, "tokenizer", name))
                copied.append(f"tokenizer/{name}")
    return {"command": "from-hf", "hf": hf_dir, "out": out, "vision": cfg.vision, "params": count_params(params),
            "tokenizer_files": copied}


def resolve_tokenizer(ckpt: str, tokenizer: str | None) -> str | None:
    """'auto' -> the tokenizer stored in the checkpoint dir (or None); None/'none' -> None; else the path."""
    from dsvl_jax.data.tokenizer import find_tokenizer
    if tokenizer is None or tokenizer.lower() == "none":
        return None
    if tokenizer == AUTO:
        return find_tokenizer(ckpt)
    if not os.path.exists(tokenizer):
        raise FileNotFoundError(f"--tokenizer {tokenizer} not found (a .model file, a tokenizer.json or its folder)")
    return tokenizer


def to_hf(ckpt: str, out: str, dtype: str = "float32", tokenizer: str | None = AUTO) -> dict:
    """Checkpoint -> HF folder; with a tokenizer (default: the checkpoint's own) also the processor files."""
    from dsvl_jax.interop.hf_export import save_hf
    from dsvl_jax.train.checkpoint import load_params
    tok = resolve_tokenizer(ckpt, tokenizer)
    cfg, params = load_params(ckpt)
    files = save_hf(out, cfg, params, dtype=dtype, tokenizer=tok)
    res = {"command": "to-hf", "checkpoint": ckpt, "out": out, "files": files, "dtype": dtype, "tokenizer": tok}
    if tok is None:
        res["warning"] = ("no tokenizer exported (none in the checkpoint dir, or --tokenizer=none): "
                          "AutoProcessor.from_pretrained(out) will not work")
    return res


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
        res = to_hf(FLAGS.checkpoint, FLAGS.out, FLAGS.dtype, FLAGS.tokenizer)
    res["seconds"] = round(time.time() - t0, 2)
    return res


def main(argv: list[str]) -> None:
    setup_logging()
    try:
        res = run(argv)
    except (OSError, ValueError) as e:  # missing files, checkpoint/config/tokenizer mismatches: one line
        sys.exit(f"convert: {type(e).__name__}: {e}")
    print(json.dumps(res))
    sys.stdout.flush()


def entry() -> None:
    define_flags()
    sys.modules["__main__"].__doc__ = __doc__  # absl shows the main module's docstring for --help and usage errors
    app.run(main)
