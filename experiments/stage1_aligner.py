"""Stage 1 — VL adaptor warm-up: only the adaptor trains (the MLP adaptor, and on 7B the SAM-side
adaptor part: necks, downsample convs, alpha); the towers and the LLM stay frozen.

  python -m dsvl_jax.train --config=experiments/stage1_aligner.py:7b --workdir=runs/7b/stage1
Arg: tiny | 1.3b | 7b. Real sizes start from the released HF weights (init_from) and use DeepSeek's
tokenizer; tiny uses the embedded corpus and its SentencePiece model (`make demo`).
Recipe (docs/recipe.md#training-stages-table-4): Table 4's stage-1 column; data
(docs/recipe.md#stage-1): 1.25M image-caption pairs + 2.5M document-OCR renders -> kinds caption + ocr.
"""

from dsvl_jax.config import REAL_SIZES, base_config, set_sources, size_defaults
from dsvl_jax.train.optim import STAGE_TRAINABLE

# Table 4, stage-1 column: identical for 1.3B and 7B. AdamW betas, clipping and weight decay are
# the base defaults (dsvl_jax/config.py), Table 4's values in every stage.
PAPER = dict(
    lr=1.0e-3, schedule="cosine", warmup_steps=128, steps=15000, batch_size=256, seq_len=512
)
# Demo scale: 2 CPU cores, tiny model, a few minutes.
TINY = dict(lr=3e-3, schedule="cosine", warmup_steps=20, steps=150, batch_size=8, seq_len=128)
MIX = {"caption": 1.25, "ocr": 2.5}  # millions of samples in the paper; used as weights


def get_config(arg: str = "tiny"):
    size = arg or "tiny"
    c = base_config(size)
    size_defaults(c, size)
    real = size in REAL_SIZES
    c.train.update(PAPER if real else TINY)
    c.train.stage = 1
    c.train.trainable = STAGE_TRAINABLE[1]
    c.data.pack = False  # Table 4: no packing in stage 1
    c.data.text_ratio = 0.0  # image-text pairs only
    set_sources(c.data, c, MIX)
    if real:
        c.init_from = c.data.tokenizer  # the released model's HF folder: weights + tokenizer.json
    else:
        c.checkpoint.every_steps = 50
    return c.lock()
