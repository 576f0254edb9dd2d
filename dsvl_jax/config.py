"""The base run config every experiment starts from: sections model / parallel / train.

Experiments (`experiments/*.py`) call `base_config(size)` and change fields; single fields are
overridden on the command line with `--config.train.lr=...`.
"""
from __future__ import annotations

import ml_collections

from dsvl_jax.model.sizes import model_config_dict


def parallel_defaults() -> ml_collections.ConfigDict:
    p = ml_collections.ConfigDict()
    p.ici = dict(data=1, fsdp=-1, tensor=1)  # FSDP over every device by default
    p.dcn = dict(data=-1, fsdp=1, tensor=1)  # slices are data-parallel by default
    p.rules_override = ml_collections.ConfigDict()
    p.replicate_max_elems = 1 << 20  # a fully replicated parameter above this is a sharding bug
    p.coordinator_address = ""  # multi-host: "host:port"; empty = auto (TPU) or single process
    p.num_processes = 0
    p.process_id = -1
    return p


def train_defaults() -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.stage = 1
    t.trainable = ("adaptor", "sam_adaptor")
    t.batch_size = 8           # global, in sequences
    t.seq_len = 64
    t.images_per_sample = 1
    t.microbatches = 1         # gradient accumulation steps per optimizer step
    t.steps = 100
    t.lr = 1e-3
    t.schedule = "cosine"
    t.warmup_steps = 10
    t.end_lr_frac = 0.1
    t.step_milestones = (0.8, 0.9)
    t.step_factor = 0.316
    t.b1 = 0.9
    t.b2 = 0.95
    t.eps = 1e-8
    t.weight_decay = 0.0
    t.clip_norm = 1.0
    t.z_loss = 0.0
    t.loss_chunk = 0           # >0: output head + CE fused over this many tokens at a time (no [B,T,V] logits)
    t.seed = 0
    t.peak_flops_per_device = 0.0  # 0 = look up the device kind (train/metrics.py) or measure on CPU
    return t


def base_config(size: str = "tiny") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = model_config_dict(size)
    c.parallel = parallel_defaults()
    c.train = train_defaults()
    return c
