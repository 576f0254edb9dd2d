"""A dress rehearsal of a shipped recipe on a laptop: the real shapes with the widths cut down.

`rehearse(cfg, workdir, steps)` runs an experiment config as it is — its row length, image sizes
(384 / 1024) and patch grids (576 image tokens per image), image slots, packing, mixture and
modality warm-up, system prompt and chat template, stage freezing, micro-batches — with only what
a 2-core CPU cannot hold changed:
- the towers' and the LLM's widths and depths (`SHRINK`; the vocabulary stays 102400 rows, the
  output head runs through the chunked loss);
- the global batch: one row per micro-batch and device;
- the data: the embedded corpus of every source's stand-in `kind` (and its held-out split),
  rendered at the config's largest image size, with a byte-level BPE tokenizer of DeepSeek's layout
  (vocabulary size and special ids) built from it offline; no weights (`init_from` is dropped);
- the modality warm-up scaled with the steps (so a few steps reach the settled mix), held-out
  evaluation of the loss once at the last step (no answer generation), a log record every step.
The report says whether the data fits the shapes: samples seen / dropped (by reason) / split at
image or turn boundaries, text chunks, row fill and image-slot fill, first and last loss. On the
embedded corpus every record is well-formed, so any dropped sample is a failure of the recipe.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from dsvl_jax.data import builders, records, shards, tokenizer
from dsvl_jax.data.pipeline import SkipRateError
from dsvl_jax.errors import Error
from dsvl_jax.model.config import model_config_from_dict
from dsvl_jax.train.logger import METRICS_FILE, read_metrics
from dsvl_jax.train.loop import train
from dsvl_jax.train.tracker import data_totals


class RehearsalFailed(Error, RuntimeError):
    """The recipe's shapes lost well-formed data."""


# widths and depths a 2-core CPU steps through in seconds; every other model field stays
SHRINK = {
    "siglip": dict(width=32, depth=2, heads=2, mlp_dim=64),
    "sam": dict(width=32, depth=2, heads=2, mlp_dim=64, global_attn_indexes=(1,), out_chans=16),
    "llm": dict(hidden=64, layers=2, heads=4, kv_heads=4, head_dim=16, mlp_dim=128),
}
CORPUS_N, HELDOUT_SHARE = 24, 1 / 3  # records per kind (they repeat); held-out: 8 more per kind
LOSS_CHUNK_MAX = 1024  # tokens per output-head chunk: no [rows, seq, 102400] logits


def rehearsal_config(
    cfg: ml_collections.ConfigDict, root: str, steps: int, devices: int
) -> ml_collections.ConfigDict:
    """`cfg` with the model shrunk, the batch cut, the data and tokenizer under `root`."""
    c = cfg.copy_and_resolve_references()
    c.unlock()
    for section, fields in SHRINK.items():
        c.model[section].update(fields)
    c.model.llm.max_position = max(c.model.llm.max_position, c.train.seq_len)
    c.model.image_token_id = 100015
    t = c.train
    full = t.steps
    t.steps = steps
    t.warmup_steps = min(t.warmup_steps, steps)
    t.batch_size = t.microbatches * devices  # one row per micro-batch and device
    t.loss_chunk = max(d for d in range(1, LOSS_CHUNK_MAX + 1) if t.seq_len % d == 0)
    t.peak_flops_per_device = 1.0  # skip the CPU matmul probe; MFU is meaningless at shrunk widths
    d = c.data
    if d.modality_warmup_steps:
        d.modality_warmup_steps = max(1, round(d.modality_warmup_steps * steps / full))
    # a recipe that loses most samples stops early (the report names what was lost)
    d.max_skip_rate, d.min_seen = 0.5, 20
    c.data_root = root
    for s in d.sources.values():
        s.path = os.path.join(root, f"dsvl_{s.kind}")
    for s in c.eval.sources.values():
        s.path = os.path.join(root, f"dsvl_{s.kind}", shards.HELDOUT)
    d.tokenizer = os.path.join(root, "tokenizer")
    c.init_from = ""
    c.checkpoint.every_steps = steps
    c.log.every_steps = 1
    if c.eval.sources:
        c.eval.update(every_steps=steps, batches=1, qa_items=0)
    return c.lock()


def prepare_data(c: ml_collections.ConfigDict) -> None:
    """The embedded corpus of each source's kind at the config's largest image size (with its held-out
    split when the config evaluates), plus the DeepSeek-layout tokenizer built on it."""
    m = model_config_from_dict(c.model)
    px = max(m.siglip.image_size, m.sam.image_size if m.hybrid else 0)
    root = c.data_root
    sources = [*c.data.sources.values(), *c.eval.sources.values()]
    kinds = sorted({s.kind for s in sources})
    holdout = HELDOUT_SHARE if c.eval.sources else 0.0
    builders.generate_corpus(kinds, root, n=CORPUS_N, image_size=px, holdout=holdout)
    if not os.path.isfile(os.path.join(c.data.tokenizer, "tokenizer.json")):
        every = builders.generate_corpus(records.KINDS, os.path.join(root, "tok"), n=CORPUS_N)
        tokenizer.deepseek_stand_in(shards.iter_examples(every.values()), c.data.tokenizer)


def report(name: str, workdir: str, stats: dict, steps: int) -> dict:
    """The rehearsal's figures from the run's metrics.jsonl (read once) and data counters."""
    path = os.path.join(workdir, METRICS_FILE)
    recs = read_metrics(path) if os.path.exists(path) else []
    train_recs = [r for r in recs if "loss_step" in r]
    evals = [r for r in recs if "eval_loss" in r]
    totals = data_totals(stats)
    dropped: dict[str, int] = {}
    for c in stats.values():
        for reason, n in c["skipped"].items():
            dropped[reason] = dropped.get(reason, 0) + n
    out = {
        "config": name,
        "steps": steps,
        "samples_seen": totals["samples_seen"],
        "samples_dropped": totals["samples_dropped"],
        "dropped_reasons": dropped,
        "dropped_ids": [i for c in stats.values() for i in c["skipped_ids"]][:20],
        "samples_split": totals["samples_split"],
        "text_chunks": totals["text_chunks"],
        "row_fill": _mean([r["row_fill"] for r in train_recs]) or 0.0,
        "image_slot_fill": _mean([r.get("image_slot_fill") for r in train_recs]),
        "loss_first": train_recs[0]["loss_step"] if train_recs else None,
        "loss_last": train_recs[-1]["loss_step"] if train_recs else None,
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
    }
    if evals:
        out["eval_sources"] = sorted(k[len("eval_loss/") :] for k in evals[-1] if "/" in k)
    return out


def _mean(values) -> float | None:
    v = [x for x in values if isinstance(x, float)]
    return float(np.mean(v)) if v else None


def rehearse(cfg, name: str, workdir: str, steps: int, devices: int, data: str = "") -> dict:
    """Rehearse `cfg` (named `name` in the report) in `workdir`; corpora and tokenizer go to `data`
    (default workdir/data), where folders already written are reused."""
    c = rehearsal_config(cfg, data or os.path.join(workdir, "data"), steps, devices)
    prepare_data(c)
    run = os.path.join(workdir, "run")
    try:
        train(c, run)
    except SkipRateError as e:  # most samples lost: report them
        return {**report(name, run, e.stats, steps), "error": str(e)}
    with open(os.path.join(run, "data_stats.json")) as f:
        return report(name, run, json.load(f), steps)
