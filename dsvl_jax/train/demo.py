"""The embedded default, end to end: what `make demo` runs.

1. `make_corpus`: the synthetic corpus (every kind) plus a held-out chart split, and a SentencePiece
   tokenizer trained on it (`python -m dsvl_jax.data generate --tokenizer_vocab` does the same);
2. `run_demo`: stage 1 (adaptor), stage 2 (LLM + adaptor, language:multimodal mix with modality
   warm-up, packing) and stage 3 (SFT on chart questions, + SigLIP), each starting from the previous
   stage's run dir, each resumable (a rerun continues where it stopped, or reports a finished stage);
3. the curves (train/plots.py), one chat answer about a held-out chart, and a summary: held-out
   exact-match accuracy, `chance` (always the most frequent answer) and the accuracy with every
   held-out image swapped for another one's (what the question text alone gives).
The demo config (experiments/demo.py) holds the three stage configs as `stage1`..`stage3`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from dsvl_jax.data import builders, records
from dsvl_jax.data.pipeline import open_configured_sources
from dsvl_jax.infer import Engine
from dsvl_jax.train.evaluate import qa_items
from dsvl_jax.train.loop import train
from dsvl_jax.train.plots import plot
from dsvl_jax.train.sweep import read_results

STAGES = ("stage1", "stage2", "stage3")
SUMMARY_KEYS = ("eval_accuracy", "eval_chance", "eval_accuracy_swapped_images", "eval_loss")


def make_corpus(corpus, data_root: str) -> None:
    """Every corpus kind (charts `n_chart` times, the others `n`), `heldout_n` held-out charts under
    data_root/dsvl_chart/heldout, and data_root/tokenizer.model; folders already written are reused."""
    dirs = builders.generate_corpus(
        [k for k in records.KINDS if k != "chart"],
        data_root,
        n=corpus.n,
        seed=corpus.seed,
        image_size=corpus.image_size,
    )
    dirs.update(
        builders.generate_corpus(
            ("chart",), data_root, n=corpus.n_chart, seed=corpus.seed, image_size=corpus.image_size
        )
    )
    builders.generate_corpus(
        ("chart",),
        os.path.join(data_root, "dsvl_chart", "heldout"),
        n=corpus.heldout_n,
        seed=corpus.seed + 1,
        image_size=corpus.image_size,
    )
    tok = os.path.join(data_root, "tokenizer.model")
    if not os.path.exists(tok):
        builders.train_tokenizer(dirs.values(), corpus.tokenizer_vocab, tok)


def sample_chat(cfg, run_dir: str, question: str) -> dict:
    """Ask `question` about the first held-out chart (the in-run eval's first item) with the trained
    model, as `python -m dsvl_jax.chat` would; -> image path, question, answer."""
    item = qa_items(open_configured_sources(cfg.eval), 1)[0]
    engine = Engine.load(run_dir, batch_size=1, system_prompt=cfg.data.system_prompt)
    msg = records.Message("user", records.IMAGE_TAG + "\n" + question)
    answer = engine.chat([[msg]], [item.images[:1]], max_new_tokens=cfg.eval.max_new_tokens)[0]
    image = os.path.join(run_dir, "chat_image.png")
    with open(image, "wb") as f:
        f.write(item.images[0])
    return {"image": image, "question": question, "answer": answer}


def run_demo(c, say: Callable[[str], None] = print) -> dict:
    """Corpus, three stages, plots, a chat answer -> the summary dict (see the module docstring)."""
    t0 = time.time()
    out = os.path.abspath(c.out_dir)
    data_root = os.path.join(out, "data")
    make_corpus(c.corpus, data_root)
    say(f"corpus + tokenizer: {data_root} ({time.time() - t0:.0f} s)")
    prev, stages = "", {}
    for key in STAGES:
        cfg = c[key]
        cfg.data_root = data_root
        cfg.init_from = prev
        ts = time.time()
        res = train(cfg, os.path.join(out, key))
        # from metrics.jsonl: the same figures when a rerun finds it done
        done = read_results(res.workdir)
        stages[key] = {
            "steps": res.step,
            "loss": done.get("loss"),
            "seconds": round(time.time() - ts),
            **{k: done[k] for k in SUMMARY_KEYS if k in done},
        }
        say(f"{key}: {stages[key]} -> {res.workdir}")
        prev = res.workdir
    plots = plot([os.path.join(out, k) for k in STAGES], os.path.join(out, "plots"))
    say(f"plots: {os.path.dirname(plots[0])}")
    chat = sample_chat(c.stage3, prev, c.chat_question)
    say(f"chat about {chat['image']}: Q: {chat['question']}  A: {chat['answer']}")
    s3 = stages["stage3"]
    return {
        "accuracy": s3.get("eval_accuracy"),
        "chance": s3.get("eval_chance"),
        "accuracy_swapped_images": s3.get("eval_accuracy_swapped_images"),
        "stages": stages,
        "chat": chat,
        "out_dir": out,
        "wall_s": round(time.time() - t0),
    }
