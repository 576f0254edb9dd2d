"""The embedded default, end to end: what `make demo` runs.

1. `make_corpus`: the synthetic corpus (every kind) plus a held-out chart split, and a SentencePiece
   tokenizer trained on it (`python -m dsvl_jax.data generate --tokenizer_vocab` does the same);
2. `run_demo`: stage 1 (adaptor), stage 2 (LLM + adaptor, language:multimodal mix with modality
   warm-up, packing) and stage 3 (SFT on chart questions, + SigLIP), each starting from the previous
   stage's run dir, each resumable (a rerun continues where it stopped, or reports a finished stage);
3. the curves (train/plots.py) and `evaluate_heldout`: the stage-3 model's greedy answers to the
   held-out chart questions (the in-run eval's items and rules): exact-match `accuracy`, `chance`
   (always the most frequent answer), `accuracy_swapped_images` (every image swapped for another
   item's: what the question text alone gives) and a `showcase` of the first few items (question,
   answer, expected, correct; their images under <out_dir>/showcase/).
Every phase shows a tqdm bar on stderr (corpus, tokenizer text, each stage's steps, the eval).

The summary is written to <out_dir>/result.json with the demo config beside it (config.json). A rerun
with the same config whose three stages are all finished returns that file as it is (nothing is
trained, loaded or evaluated again); anything else removes it and runs (resuming each stage).
Numbers in the summary are finite or None (JSON null): `finite`.
The demo config (experiments/demo.py) holds the three stage configs as `stage1`..`stage3`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from dsvl_jax.checkpoints import FINAL_DIR
from dsvl_jax.data import builders, records, shards, tokenizer
from dsvl_jax.data.pipeline import open_configured_sources
from dsvl_jax.infer import Engine
from dsvl_jax.train.evaluate import qa_items
from dsvl_jax.train.loop import train
from dsvl_jax.train.plots import plot
from dsvl_jax.train.sweep import read_results

STAGES = ("stage1", "stage2", "stage3")
SUMMARY_KEYS = ("eval_accuracy", "eval_chance", "eval_accuracy_swapped_images", "eval_loss")
RESULT_FILE = "result.json"  # the summary run_demo returns
CONFIG_FILE = "config.json"  # the demo config that summary belongs to
EVAL_BATCH = 8  # rows per decode call (the in-run eval's)


def finite(obj):
    """`obj` with every non-finite float replaced by None, so json.dumps(..., allow_nan=False) takes it."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def _metric(v):
    """A read_results value: metrics.jsonl stores non-finite numbers as "nan" / "inf" strings."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return v
    return finite(v)


def make_corpus(corpus, data_root: str, progress: bool = True) -> None:
    """Every corpus kind (charts `n_chart` times, the others `n`), `heldout_n` held-out charts under
    data_root/dsvl_chart/heldout, and data_root/tokenizer.model; folders already written are reused."""
    dirs = builders.generate_corpus(
        [k for k in records.KINDS if k != "chart"],
        data_root,
        n=corpus.n,
        seed=corpus.seed,
        image_size=corpus.image_size,
        progress=progress,
    )
    dirs.update(
        builders.generate_corpus(
            ("chart",),
            data_root,
            n=corpus.n_chart,
            seed=corpus.seed,
            image_size=corpus.image_size,
            progress=progress,
        )
    )
    builders.generate_corpus(
        ("chart",),
        os.path.join(data_root, "dsvl_chart", "heldout"),
        n=corpus.heldout_n,
        seed=corpus.seed + 1,
        image_size=corpus.image_size,
        progress=progress,
    )
    tok = os.path.join(data_root, "tokenizer.model")
    if not os.path.exists(tok):
        # builders.train_tokenizer with a bar over the records read (SentencePiece itself is quick)
        total = sum(len(shards.open_source(d)) for d in dirs.values())
        examples = tqdm(
            shards.iter_examples(dirs.values()),
            total=total,
            desc="tokenizer: reading text",
            unit=" rec",
            disable=not progress,
            mininterval=0.5,
            dynamic_ncols=True,
        )
        tokenizer.train_on_examples(examples, corpus.tokenizer_vocab, out=tok)


def _question(ex: records.Example) -> str:
    return ex.messages[0].content.replace(records.IMAGE_TAG, "").strip()


def evaluate_heldout(
    cfg, run_dir: str, out_dir: str, n_showcase: int, progress: bool = True
) -> dict:
    """The in-run eval's exact match, redone on `run_dir`'s model with a bar: cfg.eval's first
    `eval.qa_items` questions, asked as `python -m dsvl_jax.chat` asks them (Engine.load, the run's
    system prompt), each alone and with the next item's image. -> accuracy, chance,
    accuracy_swapped_images, qa_items and the first `n_showcase` items (images -> out_dir/showcase/)."""
    items = qa_items(open_configured_sources(cfg.eval), cfg.eval.qa_items)
    if not items:
        return {"accuracy": None, "chance": None, "accuracy_swapped_images": None, "qa_items": 0}
    engine = Engine.load(run_dir, batch_size=EVAL_BATCH, system_prompt=cfg.data.system_prompt)
    swapped = [
        dataclasses.replace(ex, images=items[(i + 1) % len(items)].images[: len(ex.images)])
        for i, ex in enumerate(items)
    ]
    bar = tqdm(
        total=2 * len(items),
        desc="eval: held-out questions",
        unit=" q",
        disable=not progress,
        dynamic_ncols=True,
    )

    def answers(batch: Sequence[records.Example]) -> list[str]:
        out = []
        for s in range(0, len(batch), EVAL_BATCH):
            chunk = batch[s : s + EVAL_BATCH]
            prompts = engine.prompts(
                [ex.messages[:-1] for ex in chunk], [ex.images for ex in chunk]
            )
            new = engine.generate_ids(prompts, max_new_tokens=cfg.eval.max_new_tokens)
            out += [engine.decode_answer(row) for row in new]
            bar.update(len(chunk))
        return out

    with bar:
        got, got_swapped = answers(items), answers(swapped)
    refs = [ex.messages[-1].content.strip() for ex in items]
    right = [a == r for a, r in zip(got, refs)]
    showcase = []
    os.makedirs(os.path.join(out_dir, "showcase"), exist_ok=True)
    for i, ex in enumerate(items[:n_showcase]):
        image = os.path.join(out_dir, "showcase", f"{i}.png")
        with open(image, "wb") as f:
            f.write(ex.images[0])
        showcase.append(
            {
                "question": _question(ex),
                "answer": got[i],
                "expected": refs[i],
                "correct": right[i],
                "image": image,
            }
        )
    return {
        "accuracy": sum(right) / len(refs),
        "chance": collections.Counter(refs).most_common(1)[0][1] / len(refs),
        "accuracy_swapped_images": sum(a == r for a, r in zip(got_swapped, refs)) / len(refs),
        "qa_items": len(refs),
        "showcase": showcase,
    }


def _config_dict(c) -> dict:
    return json.loads(c.to_json_best_effort(sort_keys=True))


def stored_result(c) -> dict | None:
    """<out_dir>/result.json when it was written for this very config and every stage has its final/
    (a finished demo); else None."""
    out = os.path.abspath(c.out_dir)
    try:
        with open(os.path.join(out, CONFIG_FILE)) as f:
            same = json.load(f) == _config_dict(c)
        with open(os.path.join(out, RESULT_FILE)) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    done = all(os.path.isdir(os.path.join(out, k, FINAL_DIR)) for k in STAGES)
    return result if same and done else None


def _write_json(path: str, obj, allow_nan: bool = False) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, allow_nan=allow_nan)
    os.replace(tmp, path)


def run_demo(c, say: Callable[[str], None] = print) -> dict:
    """Corpus, three stages, plots, the held-out eval -> the summary dict (see the module docstring).
    `say` gets one line per phase (the CLI sends them to stderr, beside the bars)."""
    t0 = time.time()
    out = os.path.abspath(c.out_dir)
    config = _config_dict(c)  # before the stage configs get this run's data_root / init_from
    if (done := stored_result(c)) is not None:
        say(
            f"demo already finished in {out}: its summary is {os.path.join(out, RESULT_FILE)} "
            "(delete that file to evaluate again)"
        )
        return done
    for name in (RESULT_FILE, CONFIG_FILE):  # they describe the finished run only
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    data_root = os.path.join(out, "data")
    say(f"corpus + tokenizer -> {data_root}")
    make_corpus(c.corpus, data_root)
    say(f"corpus + tokenizer: {data_root} ({time.time() - t0:.0f} s)")
    prev, stages = "", {}
    for key in STAGES:
        cfg = c[key]
        cfg.data_root = data_root
        cfg.init_from = prev
        ts = time.time()
        say(
            f"{key}: {cfg.train.steps} steps training {', '.join(cfg.train.trainable)}"
            + (f" from {prev}" if prev else "")
            + f" -> {os.path.join(out, key)} (the first step compiles)"
        )
        res = train(cfg, os.path.join(out, key))
        # from metrics.jsonl: the same figures when a rerun finds it done
        done = read_results(res.workdir)
        stages[key] = {
            "steps": res.step,
            "loss": _metric(done.get("loss")),
            "seconds": round(time.time() - ts),
            **{k: _metric(done[k]) for k in SUMMARY_KEYS if k in done},
        }
        say(f"{key}: {stages[key]} -> {res.workdir}")
        prev = res.workdir
    plots = plot([os.path.join(out, k) for k in STAGES], os.path.join(out, "plots"))
    plots_dir = os.path.dirname(plots[0]) if plots else os.path.join(out, "plots")
    say(f"plots: {plots_dir}")
    say(f"eval: the stage-3 model on up to {c.stage3.eval.qa_items} held-out chart questions")
    ev = evaluate_heldout(c.stage3, prev, out, int(c.showcase))
    result = finite(
        {
            **ev,
            "stages": stages,
            "plots": plots_dir,
            "out_dir": out,
            "wall_s": round(time.time() - t0),
        }
    )
    _write_json(os.path.join(out, RESULT_FILE), result)
    _write_json(os.path.join(out, CONFIG_FILE), config, allow_nan=True)
    return result
