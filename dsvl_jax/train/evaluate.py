"""Periodic evaluation on held-out sources: loss over fixed batches, and exact match of greedy answers.

Loss: the first `eval.batches` batches of the held-out pipeline (a fresh iterator each time, so
every eval sees the same batches), token-weighted, overall (`eval_loss`) and per source
(`eval_loss/<name>`). The batches are drawn at the mix the run settles at after its modality
warm-up, each mixing both modalities (not the all-language mix of step 0). Exact match: the first question of each
question/answer record, asked alone with the record's images (later turns could leak the answer);
the greedy continuation up to EOS, stripped, must equal the answer. `chance` is what always
answering the most frequent answer would score; `accuracy_swapped_images` asks the same questions
with every item's image replaced by another item's (what the text alone carries).
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dsvl_jax.data import pipeline, records
from dsvl_jax.data.tokenizer import load_tokenizer
from dsvl_jax.infer import Engine
from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.params import flatten
from dsvl_jax.parallel.sharding import shard_host_batch
from dsvl_jax.train.step import batch_shardings, loss_sums


def single_turn(ex: records.Example) -> records.Example:
    """The record's first question (the one its images come with) and answer, as a one-turn conversation."""
    turns = [m for m in ex.messages if m.role != "system"]
    q = turns[0].content.replace(records.IMAGE_TAG, "").strip()
    return dataclasses.replace(
        ex,
        messages=(records.Message("user", records.IMAGE_TAG * len(ex.images) + "\n" + q), turns[1]),
    )


ANSWERS_SHOWN = 5  # eval answers logged as text per eval


def _question(ex: records.Example) -> str:
    """The item's last question, without image tags."""
    users = [m.content for m in ex.messages if m.role == "user"]
    return (users[-1] if users else "").replace(records.IMAGE_TAG, "").strip()


def qa_items(sources, limit: int) -> list[records.Example]:
    """Up to `limit` single-turn questions from user/assistant records (round robin over sources)."""
    out, idx = [], [0] * len(sources)
    while len(out) < limit and any(i < len(s.data) for i, s in zip(idx, sources)):
        for k, s in enumerate(sources):
            if idx[k] >= len(s.data) or len(out) >= limit:
                continue
            r = s.data[idx[k]]
            idx[k] += 1
            ex = r if isinstance(r, records.Example) else records.from_features(r)
            turns = [m.role for m in ex.messages if m.role != "system"]
            if turns[:2] == ["user", "assistant"] and ex.messages[-1].content.strip():
                out.append(single_turn(ex))
    return out


class Evaluator:
    def __init__(self, cfg, mcfg: ModelConfig, factory):
        self.cfg, self.mcfg, self.factory = cfg, mcfg, factory
        self.sources = pipeline.open_configured_sources(cfg.eval)
        self.tok = load_tokenizer(cfg.data.tokenizer)
        self.items = qa_items(self.sources, cfg.eval.qa_items)
        self._loss = None

    # -- loss --------------------------------------------------------------------------------
    def _loss_fn(self, batch_like):
        f = self.factory
        fn = functools.partial(
            loss_sums, {}, cfg=self.mcfg, z_loss=0.0, loss_chunk=int(self.cfg.train.loss_chunk)
        )

        def run(params, batch):
            _, aux = fn(flatten(params), batch)
            return (
                aux["ce_sum"],
                jnp.sum(batch["loss_mask"]),
                aux["source_ce"],
                aux["source_tokens"],
            )

        return jax.jit(run, in_shardings=(f.shardings.params, batch_shardings(f, batch_like)))

    def loss(self, params) -> dict:
        """{"eval_loss": ..., "eval_loss/<source>": ...} over the first eval.batches held-out batches."""
        f = self.factory
        it = iter(
            pipeline.build(
                self.cfg,
                host=jax.process_index(),
                hosts=jax.process_count(),
                sources=self.sources,
                settled=True,
            )
        )
        tot = n = 0.0
        src_ce = src_n = 0.0
        for _ in range(self.cfg.eval.batches):
            b = shard_host_batch(next(it), f.mesh, f.rules)
            if self._loss is None:
                self._loss = self._loss_fn(b)
            with jax.set_mesh(f.mesh), nn.logical_axis_rules(f.rules):
                s, c, sc, sn = jax.device_get(self._loss(params, b))
            tot, n = tot + float(s), n + float(c)
            src_ce, src_n = src_ce + np.asarray(sc, np.float64), src_n + np.asarray(sn, np.float64)
        out = {"eval_loss": tot / max(n, 1.0)}
        for k, spec in enumerate(self.sources):
            if src_n[k]:
                out[f"eval_loss/{spec.name}"] = float(src_ce[k] / src_n[k])
        return out

    # -- exact match ---------------------------------------------------------------------------
    def answers(self, params, items: list[records.Example], batch: int = 8) -> list[str]:
        """Greedy answers to each item's question(s) (everything before its last message), asked the way
        `chat` asks them: the same Engine, with the system prompt the run trained with."""
        eng = Engine(
            self.mcfg, params, self.tok, batch_size=batch, system_prompt=self.cfg.data.system_prompt
        )
        prompts = eng.prompts([ex.messages[:-1] for ex in items], [ex.images for ex in items])
        new = eng.generate_ids(prompts, max_new_tokens=self.cfg.eval.max_new_tokens)
        return [eng.decode_answer(row) for row in new]

    def exact_match(self, params) -> dict:
        if not self.items:
            return {}
        refs = [ex.messages[-1].content.strip() for ex in self.items]
        got = self.answers(params, self.items)
        acc = float(np.mean([a == r for a, r in zip(got, refs)]))
        chance = collections.Counter(refs).most_common(1)[0][1] / len(refs)
        # the same questions with each item's image swapped for the next item's: accuracy falls towards
        # what the text alone gives; the gap is what the model reads from the image
        swapped = [
            dataclasses.replace(
                ex, images=self.items[(i + 1) % len(self.items)].images[: len(ex.images)]
            )
            for i, ex in enumerate(self.items)
        ]
        got_sw = self.answers(params, swapped)
        acc_sw = float(np.mean([a == r for a, r in zip(got_sw, refs)]))
        return {
            "eval_accuracy": acc,
            "eval_chance": chance,
            "eval_accuracy_swapped_images": acc_sw,
            "eval_qa_items": len(refs),
            # a few answers as text (TensorBoard's eval/answers table, W&B): what the numbers mean
            "eval_answers": [
                {"question": _question(ex), "reference": r, "answer": a}
                for ex, r, a in list(zip(self.items, refs, got))[:ANSWERS_SHOWN]
            ],
        }

    def run(self, params) -> dict:
        return {**self.loss(params), **self.exact_match(params)}
