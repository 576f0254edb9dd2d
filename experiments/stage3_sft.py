"""Stage 3 — supervised fine-tuning: the LLM, the adaptor (with the SAM-side adaptor part on 7B) and
SigLIP train; the SAM trunk stays frozen.

  python -m dsvl_jax.train --config=experiments/stage3_sft.py:7b --config.init_from=runs/7b/stage2 \
      --workdir=runs/7b/stage3
Arg: tiny | 1.3b | 7b. Loss only on answers (and their EOS); no packing (Table 4).
Hardware (AOT check, launch/POD.md): v5p-256, 1 micro-batch: 1.3B 4.8 GiB/chip, ~0.37 s/step
projected; 7B 9.3 GiB/chip, ~1.55 s/step projected.
Data: Table 2's classes with its shares (MIX); data.text_ratio = text-only SFT / total = 0.479. Every
source reads its embedded stand-in kind by default (dsvl_jax/config.py STAND_IN_KINDS); point
--config.data.sources.<name>.path at the prepared SFT corpus. Held-out loss and answer accuracy every
1000 steps on the held-out split of each source
(<its path>/heldout, `python -m dsvl_jax.data prepare|generate --holdout`) (tiny: the chart questions).
Recipe: docs/recipe.md#training-stages-table-4 (hyper-parameters), docs/recipe.md#stage-3-table-2 (mix).
"""

from dsvl_jax.config import (
    REAL_SIZES,
    base_config,
    heldout_sources,
    set_sources,
    size_defaults,
    text_share,
)
from dsvl_jax.train.optim import STAGE_TRAINABLE

# Table 4, stage-3 columns: identical for 1.3B and 7B (AdamW betas, clipping, weight decay: the
# base defaults).
PAPER = dict(
    lr=2.0e-5, schedule="cosine", warmup_steps=256, steps=10000, batch_size=256, seq_len=4096
)
# lr 3e-3 learns from the image only after a long plateau (and not in every run); 1e-3 does within
# ~250 steps
TINY = dict(lr=1e-3, schedule="cosine", warmup_steps=20, steps=1000, batch_size=8, seq_len=128)
# Table 2, in percent: the class shares exactly. The text-only SFT share (47.9) becomes
# data.text_ratio; inside the multimodal group only the weights' proportions matter.
MIX = {
    "in_house": 10.5,
    "general": 35.5,
    "chart": 4.1,  # table and chart
    "web_code": 2.0,
    "text": 47.9,
}
TINY_MIX = {"chart": 1.0}  # the embedded corpus's SFT conversations are the chart questions


def get_config(arg: str = "tiny"):
    size = arg or "tiny"
    c = base_config(size)
    size_defaults(c, size)
    real = size in REAL_SIZES
    c.train.update(PAPER if real else TINY)
    c.train.stage = 3
    c.train.trainable = STAGE_TRAINABLE[3]
    c.data.pack = False
    mix = MIX if real else TINY_MIX
    set_sources(c.data, c, mix)
    c.data.text_ratio = text_share(mix)  # real: 0.479; tiny: 0 (no text source)
    heldout_sources(c)
    c.eval.every_steps = 1000 if real else c.train.steps // 4
    c.eval.qa_items = 64
    if real:
        c.init_from = f"runs/{size}/stage2"
        c.train.microbatches = 1  # fits v5p-256 (AOT, splash: 1.3B 4.8 GiB/chip, 7B 9.3 GiB/chip)
    return c.lock()
