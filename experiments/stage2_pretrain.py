"""Stage 2 — joint VL pretraining: the LLM and the adaptor train (on 7B with the SAM-side adaptor
part); SigLIP and the SAM trunk stay frozen.

  python -m dsvl_jax.train --config=experiments/stage2_pretrain.py:7b --config.init_from=runs/7b/stage1 \
      --workdir=runs/7b/stage2
Arg: tiny | 1.3b | 7b. Language:multimodal = 7:3 by samples, reached after a modality warm-up that
starts from pure language; packing on; `data.one_modality_per_batch` gives the paper's
modality-group training (each batch all-text or all-multimodal, text batches skip the towers).
Hardware (AOT check, launch/POD.md): v5p-256, 1.3B: 1 micro-batch: 14.7 GiB/chip, ~1.49 s/step
projected; 7B: 1 micro-batch, 52.1 GiB/chip, ~14.2 s/step projected (MFU 49%).
Data: Table 1's categories with its shares (MIX); data.text_ratio = text / total of Table 1 = 0.7.
The 1.3B also mixes in SFT conversations (the paper: "a small share", not quantified): the repo
gives them weight 1.0 among the multimodal weights (30.0 -> 31.0, ~3% of multimodal samples, ~1% of
all). Every source reads its embedded stand-in kind by default (dsvl_jax/config.py STAND_IN_KINDS);
point --config.data.sources.<name>.path at the prepared corpus. Held-out loss every 1000 steps on
the held-out split of each source
(<its path>/heldout, `python -m dsvl_jax.data prepare|generate --holdout`).
Recipe: docs/recipe.md#training-stages-table-4 (hyper-parameters), docs/recipe.md#stage-2-table-1 (mix).
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

# Table 4, stage-2 columns (AdamW betas, clipping, weight decay: the base defaults). Step schedule:
# x0.316 twice (DeepSeek-LLM's; the paper gives no milestones), at 80% and 90% of the steps after
# warm-up (train/schedules.py).
PAPER = {
    "1.3b": dict(
        lr=3e-5, schedule="step", warmup_steps=2000, steps=96000, batch_size=1024, seq_len=4096
    ),
    "7b": dict(
        lr=4.2e-5, schedule="step", warmup_steps=2000, steps=42000, batch_size=2304, seq_len=4096
    ),
}
TINY = dict(lr=2e-3, schedule="step", warmup_steps=20, steps=300, batch_size=8, seq_len=256)
# Table 1, in percent: the category shares exactly. The text share (70.0) becomes data.text_ratio;
# inside the multimodal group only the weights' proportions matter.
MIX = {
    "interleaved": 13.1,
    "caption": 11.1,
    "chart": 2.1,  # table and chart
    "web_code": 0.4,
    "scene_ocr": 1.2,
    "doc_ocr": 2.1,
    "text": 70.0,
}
# 1.3B only: "a small share of SFT data" (share not given); the repo's weight, beside Table 1's.
SFT_1_3B = {"sft": 1.0}
# Demo scale: the embedded corpus kinds themselves.
TINY_MIX = {
    "interleaved": 13.1,
    "caption": 11.1,
    "chart": 2.1,
    "screenshot": 1.0,
    "pdf": 1.0,
    "ocr": 2.1,
    "text": 70.0,
}
# fewest micro-batches that fit v5p-256 (python -m dsvl_jax.aot, splash attention, libtpu 0.0.42):
# 1.3B 1 (14.7 GiB/chip), 7B 1 (52.1 GiB/chip with SAM's query-chunked global attention; the dense
# path needed 2 at 89.4 GiB); other slices: rerun the AOT check
MICROBATCHES = {"1.3b": 1, "7b": 1}


def get_config(arg: str = "tiny"):
    size = arg or "tiny"
    c = base_config(size)
    size_defaults(c, size)
    real = size in REAL_SIZES
    c.train.update(PAPER[size] if real else TINY)
    c.train.stage = 2
    c.train.trainable = STAGE_TRAINABLE[2]
    c.data.pack = True
    c.data.text_ratio_start = 1.0
    if real:
        mix = {**MIX, **(SFT_1_3B if size == "1.3b" else {})}
        set_sources(c.data, c, mix)
        c.data.text_ratio = text_share(MIX)  # from Table 1 alone: 0.7
        heldout_sources(c)
        c.eval.every_steps = 1000
        c.data.modality_warmup_steps = 2000
        c.data.one_modality_per_batch = True
        c.train.images_per_sample = 4
        c.init_from = f"runs/{size}/stage1"
        c.train.microbatches = MICROBATCHES[size]
    else:
        set_sources(c.data, c, TINY_MIX)
        c.data.modality_warmup_steps = 50
        c.train.images_per_sample = 2
        c.data.text_ratio = 0.3  # the demo's text corpus teaches little; keep most steps multimodal
    return c.lock()
