"""The run config every experiment starts from: sections model / parallel / train / data / eval,
checkpoint, log, and the init source.

Experiments (`experiments/*.py`) call `base_config(size)`, then `size_defaults(c, size)`, and change
fields; single fields are overridden on the command line with `--config.train.lr=...`.
`load_experiment(path, arg)` loads such a file the way `--config=path:arg` does.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
from collections.abc import Mapping

import ml_collections

from dsvl_jax.errors import ConfigError
from dsvl_jax.model.sizes import model_config_dict

# the released DeepSeek-VL sizes (the others are for tests and the demo)
REAL_SIZES = ("1.3b", "7b")
# Where the paper's path starts: `convert from-parts` of SigLIP-L/16-384 (+ SAM-B on 7B) and a
# DeepSeek-LLM checkpoint writes this params checkpoint, with the LLM's tokenizer in tokenizer/.
PARTS_CHECKPOINT = "ckpt/deepseek-vl-{size}-parts"


def parallel_defaults() -> ml_collections.ConfigDict:
    p = ml_collections.ConfigDict()
    p.ici = dict(data=1, fsdp=-1, tensor=1)  # FSDP over every device by default
    p.dcn = dict(data=-1, fsdp=1, tensor=1)  # slices are data-parallel by default
    p.rules_override = ml_collections.ConfigDict()
    p.replicate_max_elems = 1 << 20  # a fully replicated parameter above this is a sharding bug
    p.coordinator_address = ""  # multi-host: "host:port"; empty = auto (TPU) or single process
    p.num_processes = 0
    p.process_id = -1
    # persistent XLA compilation cache (a folder or gs:// path; parallel/compile_cache.py): a resumed
    # run or a sweep point loads its step instead of compiling it again; "" = jax's own setting
    p.compilation_cache_dir = ""
    return p


def train_defaults() -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.stage = 1
    t.trainable = ("adaptor", "sam_adaptor")
    t.batch_size = 8  # global, in sequences
    t.seq_len = 64
    t.images_per_sample = 1
    t.microbatches = 1  # gradient accumulation steps per optimizer step
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
    # >0: output head + CE fused over this many tokens at a time (no [B,T,V] logits)
    t.loss_chunk = 0
    t.seed = 0
    t.max_bad_steps = 5  # this many non-finite steps in a row stop the run (each one is skipped)
    # loss-spike rollback (train/spikes.py), off at 0: after spike_patience steps in a row whose loss
    # exceeds spike_factor x the mean of the last spike_window accepted losses, the run goes back to the
    # checkpoint before the spike and skips the batches since; more than spike_max_rollbacks: it stops
    t.spike_patience = 0
    t.spike_factor = 2.0
    t.spike_window = 100
    t.spike_max_rollbacks = 3
    # 0 = look up the device kind (train/metrics.py) or measure on CPU
    t.peak_flops_per_device = 0.0
    return t


def data_defaults() -> ml_collections.ConfigDict:
    """Input pipeline (dsvl_jax/data/pipeline.py). Sources: name -> {path, weight, group, kind}."""
    d = ml_collections.ConfigDict()
    # e.g. {"chart": {"path": "data/dsvl_chart", "weight": 1.0, "group": "multimodal", "kind": "chart"}}
    # (kind: the embedded corpus kind that stands in for the source in rehearsals, see set_sources)
    d.sources = ml_collections.ConfigDict()
    d.tokenizer = ""  # a SentencePiece .model, or a folder / tokenizer.json (HF)
    # "default" = the released models' prompt (data/template.py), "" = none
    d.system_prompt = "default"
    d.text_ratio = 0.7  # language share of samples after the modality warm-up (paper stage 2: 0.7)
    d.text_ratio_start = 1.0  # modality warm-up starts with language only ...
    # ... and reaches text_ratio linearly after this many steps (0 = off)
    d.modality_warmup_steps = 0
    d.pack = True  # several samples per row (paper: stage 2 yes, stages 1 and 3 no)
    # each batch text-only or multimodal (text batches skip the towers)
    d.one_modality_per_batch = False
    d.max_pixels = 64_000_000  # larger images are skipped (decompression bombs)
    # per source; above it (after min_seen records) the run stops with an error
    d.max_skip_rate = 0.01
    d.min_seen = 200
    d.workers = 0  # >0: that many worker processes (grain mp_prefetch); 0 = threads in this process
    d.num_threads = 2  # decode/preprocess threads per source
    d.prefetch = 8  # per source, in samples
    # packed batches built ahead in a background thread (or per worker process)
    d.prefetch_batches = 2
    d.seed = 0
    return d


def run_defaults(c: ml_collections.ConfigDict) -> None:
    """checkpoint / log / eval sections and the init source of a training run."""
    c.init_from = ""  # any model folder (checkpoints.open_model): a previous stage's run dir, params, an HF folder
    c.checkpoint = ml_collections.ConfigDict(
        dict(every_steps=100, keep=3, keep_period=0, async_save=True)
    )
    # wandb: a Weights & Biases project ("" = off; needs the wandb extra), wandb_mode: online | offline |
    # disabled. Records go to metrics.jsonl, tensorboard/ and wandb with grouped tags (train/logger.py)
    c.log = ml_collections.ConfigDict(
        dict(every_steps=10, tensorboard=True, progress=True, wandb="", wandb_mode="online")
    )
    # eval.sources: like data.sources (held-out records); loss over `batches` batches, and exact match of
    # greedy answers on up to `qa_items` question/answer records
    c.eval = ml_collections.ConfigDict(
        dict(
            every_steps=0,
            batches=2,
            sources=ml_collections.ConfigDict(),
            qa_items=32,
            max_new_tokens=8,
        )
    )


def base_config(size: str = "tiny") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # where `python -m dsvl_jax.data generate|prepare` wrote the corpora
    c.data_root = "data/default"
    c.model = model_config_dict(size)
    c.parallel = parallel_defaults()
    c.train = train_defaults()
    c.data = data_defaults()
    run_defaults(c)
    # resuming under a config that differs from the checkpoint's: the changed keys accepted, a comma list
    # of dotted keys or prefixes ("train.lr,train.steps"); anything else stops the run (checkpoints/run.py)
    c.resume_overrides = ""
    return c


# Source name -> the embedded corpus kind (data/records.py KINDS) that stands in for it by default.
# Names not listed read the kind of their own name (caption, chart, interleaved, ocr, text, ...).
STAND_IN_KINDS = {
    "web_code": "screenshot",  # page -> visible text; the paper's is UI -> HTML and plot -> code
    "scene_ocr": "ocr",  # text lines -> transcription
    "doc_ocr": "pdf",  # page -> its text layer
    "general": "caption",  # general multimodal SFT
    "in_house": "interleaved",
    "sft": "chart",  # the embedded corpus's SFT conversations are its chart questions
}


def set_sources(
    section: ml_collections.ConfigDict,
    c: ml_collections.ConfigDict,
    mix: Mapping[str, float],
    folder: str = "",
    kinds: Mapping[str, str] | None = None,
) -> None:
    """section.sources[name] = {path, weight, group, kind} for each `name: weight` of `mix`.

    kind: the corpus kind the source reads by default: `kinds[name]`, else STAND_IN_KINDS[name], else
    the name itself. path: <data_root>[/folder]/dsvl_<kind>, the layout `python -m dsvl_jax.data
    generate` writes; paths follow --config.data_root, and a real run points
    --config.data.sources.<name>.path=DIR at its prepared corpus. group: "text" for the source named
    text, else "multimodal" (data.text_ratio splits samples between the groups)."""
    root = c.get_ref("data_root") + (f"/{folder}" if folder else "")
    kinds = {**STAND_IN_KINDS, **(kinds or {})}
    section.sources = ml_collections.ConfigDict(
        {
            name: {
                "path": root + f"/dsvl_{kinds.get(name, name)}",
                "weight": float(w),
                "group": "text" if name == "text" else "multimodal",
                "kind": kinds.get(name, name),
            }
            for name, w in mix.items()
        }
    )


HELDOUT = (
    "heldout"  # a source's held-out split lives in <its path>/heldout (data --holdout writes it)
)


def heldout_sources(c: ml_collections.ConfigDict) -> None:
    """eval.sources = the held-out split of every data source: the same names, weights, groups and kinds,
    path <data.sources.<name>.path>/heldout, which follows a --config.data.sources.<name>.path override
    (so a run evaluates on its own data's split, never on a default path it does not train on)."""
    c.eval.sources = ml_collections.ConfigDict(
        {
            name: {
                "path": s.get_ref("path") + f"/{HELDOUT}",
                "weight": s.weight,
                "group": s.group,
                "kind": s.kind,
            }
            for name, s in c.data.sources.items()
        }
    )


def text_share(mix: Mapping[str, float]) -> float:
    """The language share of samples a mix states: mix["text"] / the sum of its weights."""
    return mix.get("text", 0.0) / math.fsum(mix.values())


def embedded_tokenizer(c: ml_collections.ConfigDict) -> None:
    """Tiny runs use the SentencePiece model trained on the embedded corpus (<data_root>/tokenizer.model):
    its image token is id 4 and its vocabulary fits in 512 embedding rows."""
    c.data.tokenizer = c.get_ref("data_root") + "/tokenizer.model"
    c.model.llm.vocab_size = 512
    c.model.image_token_id = 4
    # 16-token images and 256-token rows: no room for the 40-token default prompt
    c.data.system_prompt = ""


def size_defaults(c: ml_collections.ConfigDict, size: str) -> None:
    """What every stage of a size shares. Real sizes: bfloat16 compute with full remat (f32 master
    weights), the tokenizer `convert from-parts` stored with the composed checkpoint (DeepSeek-LLM's,
    with the image token), sparse logging; tiny sizes: the embedded SentencePiece tokenizer and a
    log line every 10 steps. Fine-tuning a released model instead: --config.init_from=HF_DIR
    --config.data.tokenizer=HF_DIR."""
    if size in REAL_SIZES:
        c.data.tokenizer = PARTS_CHECKPOINT.format(size=size) + "/tokenizer"
        c.model.dtype = "bfloat16"
        c.model.remat_policy = "full"
        c.checkpoint.every_steps, c.log.every_steps = 1000, 50
    else:
        embedded_tokenizer(c)
        c.log.every_steps = 10


def load_experiment(path: str, arg: str = "") -> ml_collections.ConfigDict:
    """`get_config(arg)` of an experiment file, as `--config=path:arg` loads it."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"dsvl_experiment_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg) if arg else mod.get_config()


def field_error(c: ml_collections.ConfigDict, key: str) -> str | None:
    """Why the override `--config.<key>=...` names no field of `c`, or None when it names one.

    Names the section and the missing name, with the closest names of that section
    (difflib.get_close_matches), else all of them; for data/eval sources, the config's source names."""
    parts = key.split(".")
    node = c
    for i, name in enumerate(parts):
        section = ".".join(parts[:i])
        if not isinstance(node, ml_collections.ConfigDict):
            return f"{section} is a {type(node).__name__} ({node!r}), not a section with field {name!r}"
        if name in node:
            node = node[name]
            continue
        fields = sorted(node.keys())
        where = section or "the config"
        if section.endswith("sources"):
            return (
                f"{where} has no source {name!r}; this config's sources: {', '.join(fields) or 'none'} "
                f"(the experiment file's MIX; point one at your data: --config.{section}."
                f"{fields[0] if fields else 'NAME'}.path=DIR)"
            )
        close = difflib.get_close_matches(name, fields, n=3, cutoff=0.6)
        if close:
            return f"{where} has no field {name!r}; closest: {', '.join(close)}"
        return f"{where} has no field {name!r}; its fields: {', '.join(fields)}"
    return None
