"""Stage 1 — VL adaptor warm-up: only the adaptor trains (the MLP adaptor, and on 7B the SAM-side
adaptor part: necks, downsample convs, alpha); the towers and the LLM stay frozen.

  python -m dsvl_jax.train --config=experiments/stage1_aligner.py:7b --workdir=runs/7b/stage1
Arg: tiny | 1.3b | 7b. Real sizes start where the paper starts: pretrained towers and LLM with a fresh
adaptor, composed by `convert from-parts` into ckpt/deepseek-vl-<size>-parts (init_from; its tokenizer/
is data.tokenizer):
  python -m dsvl_jax.convert from-parts --siglip=hf/siglip-large-patch16-384 --sam=hf/sam-vit-base \
      --llm=hf/deepseek-llm-7b-base --siglip_act=gelu --out=ckpt/deepseek-vl-7b-parts
(1.3b: no --sam; its 1.3B DeepSeek-LLM was never released: any LLaMA-architecture LLM with
model.llm.* set to its sizes). --siglip_act=gelu: DeepSeek ran the stock SigLIP weights with exact
GELU, the released models' setting (model.siglip.act); train refuses an init_from whose architecture
fields differ from the config's. Tiny uses the embedded corpus and its SentencePiece model (`make demo`).
Hardware (AOT check, launch/POD.md): v5p-256, 1 micro-batch: 1.3B 1.4 GiB/chip, ~0.072 s/step
projected (MFU 44%); 7B 2.7 GiB/chip, ~0.32 s/step projected (MFU 44%).
Tiny: 2 CPU cores, a few minutes.
Recipe (docs/recipe.md#training-stages-table-4): Table 4's stage-1 column; data
(docs/recipe.md#stage-1): 1.25M image-caption pairs + 2.5M document-OCR renders -> kinds caption + ocr.
Sequence length: Table 4's 512 counts text tokens only (`text_len`). Each sample also holds one
image of `num_image_tokens` (576) tokens, so a 512-token row would reject every sample; real rows are
train.seq_len = round_up(576 + 512, 128) = 1152. Held-out loss every 1000 steps on
the held-out split of each source
(<its path>/heldout, `python -m dsvl_jax.data prepare|generate --holdout`).
"""

from dsvl_jax.config import (
    PARTS_CHECKPOINT,
    REAL_SIZES,
    base_config,
    heldout_sources,
    set_sources,
    size_defaults,
    text_share,
)
from dsvl_jax.model.config import model_config_from_dict
from dsvl_jax.train.optim import STAGE_TRAINABLE

# Table 4, stage-1 column: identical for 1.3B and 7B. AdamW betas, clipping and weight decay are
# the base defaults (dsvl_jax/config.py), Table 4's values in every stage. text_len: Table 4's
# "sequence length 512", in text tokens; the row length adds the image (row_len below).
PAPER = dict(
    lr=1.0e-3, schedule="cosine", warmup_steps=128, steps=15000, batch_size=256, text_len=512
)
# Demo scale: 2 CPU cores, tiny model, a few minutes (128-token rows hold a 16-token image + text).
TINY = dict(lr=3e-3, schedule="cosine", warmup_steps=20, steps=150, batch_size=8, seq_len=128)
MIX = {"caption": 1.25, "ocr": 2.5}  # millions of samples in the paper; used as weights
ROW_MULTIPLE = 128  # row lengths in multiples of attention blocks


def row_len(c, text_len: int) -> int:
    """One image's tokens + `text_len` text tokens, rounded up to ROW_MULTIPLE."""
    n = model_config_from_dict(c.model).num_image_tokens + text_len
    return -(-n // ROW_MULTIPLE) * ROW_MULTIPLE


def get_config(arg: str = "tiny"):
    size = arg or "tiny"
    c = base_config(size)
    size_defaults(c, size)
    real = size in REAL_SIZES
    if real:
        train = dict(PAPER)
        text_len = train.pop("text_len")
        c.train.update(train, seq_len=row_len(c, text_len))
    else:
        c.train.update(TINY)
    c.train.stage = 1
    c.train.trainable = STAGE_TRAINABLE[1]
    c.data.pack = False  # Table 4: no packing in stage 1
    c.data.text_ratio = text_share(MIX)  # 0: image-text pairs only
    set_sources(c.data, c, MIX)
    if real:
        c.init_from = PARTS_CHECKPOINT.format(size=size)  # convert from-parts
        heldout_sources(c)
        c.eval.every_steps = 1000
    else:
        c.checkpoint.every_steps = 50
    return c.lock()
