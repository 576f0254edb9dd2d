"""`python -m dsvl_jax.demo --config=experiments/demo.py:tiny`: the main job on the embedded default.

1. writes the synthetic corpus (every kind) + a held-out chart split and trains a SentencePiece
   tokenizer on it (`python -m dsvl_jax.data generate` does the same);
2. runs stage 1 (adaptor), stage 2 (LLM + adaptor, language:multimodal mix with modality warm-up,
   packing) and stage 3 (SFT on chart questions, + SigLIP), each starting from the previous stage's
   final params, each resumable (rerunning the command continues where it stopped);
3. plots the curves, answers a question about a held-out chart, and prints one JSON line with the
   held-out exact-match accuracy, `chance` (always the most frequent answer) and the accuracy with
   every held-out image swapped for another one's (what the question text alone gives).
"""
from __future__ import annotations

import importlib.util
import json
import os
import time

from absl import app
from ml_collections import config_flags

from dsvl_jax.cli.common import setup_process

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/demo.py:tiny", "Demo config file.")
STAGES = (("stage1", "stage1_aligner"), ("stage2", "stage2_pretrain"), ("stage3", "stage3_sft"))


def stage_config(name: str, size: str, experiments_dir: str):
    path = os.path.join(experiments_dir, f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(size)


def make_corpus(c, data_root: str) -> None:
    from dsvl_jax.data import builders, records, shards, tokenizer

    k = c.corpus
    dirs = builders.generate_corpus([x for x in records.KINDS if x != "chart"], data_root, n=k.n, seed=k.seed,
                                    image_size=k.image_size)
    dirs.update(builders.generate_corpus(("chart",), data_root, n=k.n_chart, seed=k.seed, image_size=k.image_size))
    builders.generate_corpus(("chart",), os.path.join(data_root, "heldout"), n=k.heldout_n, seed=k.seed + 1,
                             image_size=k.image_size)
    tok = os.path.join(data_root, "tokenizer.model")
    if not os.path.exists(tok):
        examples = (src[i] for d in dirs.values() for src in [shards.open_source(d)] for i in range(len(src)))
        tokenizer.train_on_examples(examples, k.tokenizer_vocab, out=tok)


def sample_chat(cfg, final_dir: str, question: str) -> dict:
    """Answer `question` about the first held-out chart with the stage-3 model."""
    from dsvl_jax.data import pipeline, records
    from dsvl_jax.infer import Engine
    from dsvl_jax.train.evaluate import qa_items

    ex = qa_items(pipeline.open_configured_sources(cfg.eval), 1)[0]  # the in-run eval's first item
    eng = Engine.load(final_dir, cfg.data.tokenizer, batch_size=1,
                      system_prompt=pipeline.system_prompt_text(cfg.data.system_prompt))
    answer = eng.chat([[records.Message("user", records.IMAGE_TAG + "\n" + question)]], [ex.images[:1]],
                      max_new_tokens=cfg.eval.max_new_tokens)[0]
    img = os.path.join(os.path.dirname(final_dir), "chat_image.png")
    with open(img, "wb") as f:
        f.write(ex.images[0])
    return {"image": img, "question": question, "answer": answer}


def main(argv) -> None:
    del argv
    setup_process()
    from dsvl_jax.cli.plot import plot
    from dsvl_jax.train.loop import train

    c = _CONFIG.value
    t0 = time.time()
    out = os.path.abspath(c.out_dir)
    data_root = os.path.join(out, "data")
    make_corpus(c, data_root)
    print(f"corpus + tokenizer: {data_root} ({time.time() - t0:.0f} s)", flush=True)
    experiments = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "experiments")
    experiments = os.path.normpath(experiments) if os.path.isdir(experiments) else "experiments"
    prev, summary, cfg = "", {}, None
    for key, name in STAGES:
        cfg = stage_config(name, c.size, experiments).unlock()
        cfg.data_root = data_root
        cfg.init_from = prev
        cfg.log.progress = False
        for path, v in parse_overrides(c.overrides).get(key, {}).items():
            _set(cfg, path, v)
        ts = time.time()
        res = train(cfg, os.path.join(out, key))
        m = res.last_metrics
        summary[key] = {"steps": res.step, "loss": round(m.get("loss", float("nan")), 4), "seconds": round(time.time() - ts)}
        for k in ("eval_accuracy", "eval_chance", "eval_accuracy_swapped_images", "eval_loss"):
            if k in m:
                summary[key][k] = round(m[k], 4)
        print(f"{key}: {json.dumps(summary[key])} -> {res.workdir}", flush=True)
        prev = res.workdir
    plots = plot([os.path.join(out, k) for k, _ in STAGES], os.path.join(out, "plots"))
    chat = sample_chat(cfg, os.path.join(prev, "final"), c.chat_question)
    print(f"plots: {os.path.dirname(plots[0])}")
    print(f"chat about {chat['image']}: Q: {chat['question']}  A: {chat['answer']}")
    s3 = summary["stage3"]
    print(json.dumps({"accuracy": s3.get("eval_accuracy"), "chance": s3.get("eval_chance"),
                      "accuracy_swapped_images": s3.get("eval_accuracy_swapped_images"), "stages": summary, "chat": chat,
                      "out_dir": out, "wall_s": round(time.time() - t0)}))


def parse_overrides(text: str) -> dict[str, dict]:
    """"stage3.train.steps=900,stage2.train.lr=1e-3" -> {"stage3": {"train.steps": 900}, ...}."""
    import ast
    out: dict[str, dict] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        path, _, value = item.partition("=")
        stage, _, key = path.partition(".")
        if stage not in dict(STAGES) or not key or not value:
            raise ValueError(f"demo overrides: {item!r} is not stageN.<key>=<value> (stages {list(dict(STAGES))})")
        try:
            v = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            v = value
        out.setdefault(stage, {})[key] = v
    return out


def _set(cfg, path: str, value) -> None:
    *parents, leaf = path.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[leaf] = value


def entry() -> None:
    app.run(main)
