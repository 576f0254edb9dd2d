"""Stage 1 — VL adaptor warm-up (paper §3.2.1): only the adaptor (incl. the SAM-side convs) trains.

  python -m dsvl_jax.train --config=experiments/stage1_aligner.py:7b --workdir=runs/7b/stage1
Arg: tiny | 1.3b | 7b. Real sizes start from the released HF weights (init_from) and use the
DeepSeek tokenizer; tiny uses the embedded corpus and its SentencePiece model (`make demo`).
Data (paper): 1.25M ShareGPT4V image-caption pairs + 2.5M document-OCR renders -> kinds caption + ocr.
"""
from dsvl_jax.config import base_config, embedded_tokenizer, set_sources
from dsvl_jax.train.optim import STAGE_TRAINABLE

# Table 4 (spec §5.2), stage-1 columns: identical for 1.3B and 7B.
PAPER = dict(lr=1.0e-3, schedule="cosine", weight_decay=0.0, clip_norm=1.0, b1=0.9, b2=0.95, warmup_steps=128,
             steps=15000, batch_size=256, seq_len=512)
# Demo scale: 2 CPU cores, tiny model, a few minutes.
TINY = dict(lr=3e-3, schedule="cosine", weight_decay=0.0, clip_norm=1.0, b1=0.9, b2=0.95, warmup_steps=20,
            steps=150, batch_size=8, seq_len=128)
MIX = {"caption": 1.25, "ocr": 2.5}  # millions of samples in the paper; used as weights


def get_config(arg: str = "tiny"):
    size = arg or "tiny"
    c = base_config(size)
    c.train.update(PAPER if size in ("1.3b", "7b") else TINY)
    c.train.stage = 1
    c.train.trainable = STAGE_TRAINABLE[1]
    c.data.pack = False  # Table 4: no packing in stage 1
    c.data.text_ratio = 0.0  # image-text pairs only
    set_sources(c.data, c, MIX)
    if size in ("1.3b", "7b"):
        c.init_from = f"hf/deepseek-vl-{size}-base"  # HF folder: weights + tokenizer.json
        c.data.tokenizer = c.init_from
        c.model.dtype = "bfloat16"
        c.model.remat_policy = "full"
        c.checkpoint.every_steps, c.log.every_steps = 1000, 50
    else:
        embedded_tokenizer(c)
        c.checkpoint.every_steps, c.log.every_steps = 50, 10
    return c.lock()
