"""Language-only benchmarks in the style of DeepSeek-VL's Table 7: MMLU, HellaSwag, ARC, GSM8K.

Readers take the HF-datasets parquet layouts (a .parquet file or a folder of them; GSM8K also JSONL)
and return `EvalSet`s like eval/items.py, bad rows as `Skipped` (reasons: missing_field, bad_answer,
duplicate_id, bad_json). `READERS[name] = (loader, metric name)`.

  mmlu       cais/mmlu: question, subject, choices [4], answer (int index); category = subject
  hellaswag  Rowan/hellaswag: ctx_a + ctx_b (else ctx), endings [4], label, activity_label (category)
  arc        allenai/ai2_arc: id, question, choices {text, label}, answerKey (labels "1".."4" too)
  gsm8k      openai/gsm8k main: question, answer ending in "#### 42"

Multiple choice is scored by log-likelihood, following lm-evaluation-harness (zero-shot): the
options are compared by log P(continuation | BOS + context), plain text, no chat template, no image.
`meta["context"]` holds the context and `meta["continuations"]` the compared strings:

  MMLU       "The following are multiple choice questions (with answers) about {subject}.\\n\\n
             {question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:"; continuations " A" .. " D"
  HellaSwag  preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()); " " + ending
             (lm-eval's preprocess: " [title]" -> ". ", other [tags] dropped, double spaces merged)
  ARC        "Question: {question}\\nAnswer:"; " " + option text

As in lm-eval, a context's trailing spaces move to the front of the continuation, the continuation's
tokens are encode(context + continuation)[len(encode(context)):], and `loglik_norm` (acc_norm)
divides each sum by the character length of the option string without the leading " ".
GSM8K items are open questions (`meta["context"]` = "Question: {question}\\nAnswer:" for a plain
LM); the metric compares the last number of the generated answer with the number after "####".

Metrics (`LANGUAGE_METRICS`, same contract as eval/metrics.py; merged into METRICS by the caller):
  loglik  record: prediction (argmax letter), choice, correct, loglik [per option], loglik_norm,
          choice_norm, correct_norm; aggregate: n, accuracy, accuracy_norm (lm-eval's acc / acc_norm;
          HellaSwag and ARC-Challenge are usually quoted as accuracy_norm)
  gsm8k   record: prediction, extracted, target, correct; aggregate: n, accuracy

`loglik_predictor(engine)` is the runner's `predict(items) -> list[str]` for loglik items: each
answer is a JSON object {"choice": letter, "loglik": [...], "loglik_norm": [...]} that the loglik
metric reads (a plain letter from a generating predictor also scores, without the norm values).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dsvl_jax.eval.items import LETTERS, EvalItem, EvalSet, ItemError, Skipped, parse_line
from dsvl_jax.eval.metrics import Metric, accuracy, record
from dsvl_jax.eval.scoring import mean
from dsvl_jax.infer import Engine
from dsvl_jax.model.decode import bucket_length, positions_from_mask
from dsvl_jax.model.vlm import DeepseekVL

Predict = Callable[[Sequence[EvalItem]], list[str]]
_EMPTY = ("", "nan", "none", "null")

# --- readers -----------------------------------------------------------------------------------------


def _text(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    s = str(v).strip()
    return "" if s.lower() in _EMPTY else s


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"eval data {path} not found")
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)
    found = found or sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes)
    if not found:
        raise FileNotFoundError(f"{path}: no {' / '.join(suffixes)} files in the folder")
    return found


def _records(path: Path, base: Path) -> Iterator[tuple[str, str, Any, ItemError | None]]:
    """-> (where, default id, record, error) per row of a parquet or JSONL file."""
    stem = path.relative_to(base).with_suffix("").as_posix() if path != base else path.stem
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
            n = 0
            for batch in batches:
                for rec in batch.to_pylist():
                    yield f"{path}:[{n}]", f"{stem}:{n}", rec, None
                    n += 1
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path}: unreadable parquet ({e})") from None
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            yield f"{path}:{n}", f"{stem}:{n}", *parse_line(line)


def _load(
    path: str,
    limit: int | None,
    benchmark: str,
    metric: str,
    make: Callable[[dict, str, str], EvalItem],
    suffixes: tuple[str, ...] = (".parquet",),
) -> EvalSet:
    p = Path(path)
    files = _files(p, suffixes)
    items: list[EvalItem] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for f in files:
        for where, default_id, rec, err in _records(f, p):
            if limit is not None and len(items) + len(skipped) >= limit:
                break
            rid = _text(rec.get("id", rec.get("ind"))) if isinstance(rec, dict) else ""
            try:
                if err is not None:
                    raise err
                if not isinstance(rec, dict):
                    raise ItemError("bad_json", f"expected an object, got {type(rec).__name__}")
                item = make(rec, where, default_id)
                if item.id in seen:
                    raise ItemError("duplicate_id", f"id {item.id!r} appears more than once")
            except ItemError as e:
                skipped.append(Skipped(rid or default_id, where, e.reason, e.detail))
                continue
            seen.add(item.id)
            items.append(item)
    fmt = "parquet" if files[0].suffix.lower() == ".parquet" else "jsonl"
    return EvalSet(str(p), fmt, items, skipped, benchmark=benchmark, metric=metric)


def _require(rec: dict, key: str) -> str:
    v = _text(rec.get(key))
    if not v:
        raise ItemError("missing_field", f"no {key}")
    return v


def _option_texts(raw: Any, field: str) -> list[str]:
    if not isinstance(raw, (list, tuple)):
        raise ItemError("missing_field", f"{field} must be a list, got {type(raw).__name__}")
    if not 2 <= len(raw) <= len(LETTERS):
        raise ItemError("bad_answer", f"{len(raw)} {field}; expected 2 to {len(LETTERS)}")
    texts = [_text(v) for v in raw]
    if empty := [LETTERS[i] for i, t in enumerate(texts) if not t]:
        raise ItemError("bad_answer", f"{field} {''.join(empty)} empty")
    return [str(v) for v in raw]


def _index(raw: Any, n: int, field: str) -> int:
    s = _text(raw)
    if not s.lstrip("-").isdigit() or not 0 <= int(s) < n:
        raise ItemError("bad_answer", f"{field} {raw!r} is not an option index in [0, {n})")
    return int(s)


def _mc_item(
    iid: str, question: str, texts: list[str], gold: int, where: str, category: str, **meta
) -> EvalItem:
    return EvalItem(
        id=iid,
        question=question,
        answers=(LETTERS[gold],),
        options=tuple((LETTERS[i], t.strip()) for i, t in enumerate(texts)),
        category=category,
        where=where,
        meta=meta,
    )


def _mmlu(rec: dict, where: str, default_id: str) -> EvalItem:
    question = _require(rec, "question")
    texts = _option_texts(rec.get("choices"), "choices")
    gold = _index(rec.get("answer"), len(texts), "answer")
    subject = _text(rec.get("subject"))
    about = f" about {subject.replace('_', ' ')}" if subject else ""
    lines = "".join(f"{LETTERS[i]}. {t}\n" for i, t in enumerate(texts))
    context = (
        f"The following are multiple choice questions (with answers){about}.\n\n"
        f"{question}\n{lines}Answer:"
    )
    continuations = [f" {LETTERS[i]}" for i in range(len(texts))]
    return _mc_item(
        _text(rec.get("id")) or default_id,
        question,
        texts,
        gold,
        where,
        subject,
        context=context,
        continuations=continuations,
    )


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleaning: WikiHow " [title]" -> ". ", other [tags] dropped."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(rec: dict, where: str, default_id: str) -> EvalItem:
    if rec.get("ctx_a") is not None and rec.get("ctx_b") is not None:
        ctx = f"{rec['ctx_a']} {str(rec['ctx_b']).capitalize()}"
    else:
        ctx = _require(rec, "ctx")
    if not ctx.strip():
        raise ItemError("missing_field", "no ctx")
    texts = _option_texts(rec.get("endings"), "endings")
    if not _text(rec.get("label")):
        raise ItemError("bad_answer", "no label (HellaSwag's test split is unlabelled)")
    gold = _index(rec.get("label"), len(texts), "label")
    activity = _text(rec.get("activity_label"))
    context = hellaswag_preprocess(f"{activity}: {ctx}" if activity else ctx)
    endings = [hellaswag_preprocess(t) for t in texts]
    return _mc_item(
        _text(rec.get("ind", rec.get("id"))) or default_id,
        ctx.strip(),
        endings,
        gold,
        where,
        activity,
        context=context,
        continuations=[" " + e for e in endings],
    )


def _arc(rec: dict, where: str, default_id: str) -> EvalItem:
    question = _require(rec, "question")
    choices = rec.get("choices")
    if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
        raise ItemError("missing_field", "choices must be {text: [...], label: [...]}")
    texts = _option_texts(choices["text"], "choices.text")
    labels = [_text(x) for x in choices["label"] or []]
    if len(labels) != len(texts):
        raise ItemError("bad_answer", f"{len(labels)} labels for {len(texts)} choices")
    key = _require(rec, "answerKey")
    if key not in labels:
        raise ItemError("bad_answer", f"answerKey {key!r} is not one of the labels {labels}")
    return _mc_item(
        _text(rec.get("id")) or default_id,
        question,
        texts,
        labels.index(key),
        where,
        _text(rec.get("category")),
        context=f"Question: {question}\nAnswer:",
        continuations=[" " + t for t in texts],
        labels=labels,
    )


def _gsm8k(rec: dict, where: str, default_id: str) -> EvalItem:
    question = _require(rec, "question")
    solution = _require(rec, "answer")
    target = gsm8k_target(solution)
    if target is None:
        raise ItemError(
            "bad_answer", f"answer has no final number after '####': {solution[-60:]!r}"
        )
    return EvalItem(
        id=_text(rec.get("id")) or default_id,
        question=question,
        answers=(target,),
        where=where,
        meta={"solution": solution, "context": f"Question: {question}\nAnswer:"},
    )


def load_mmlu(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    """cais/mmlu parquet (a file or a folder; `images` unused: text only)."""
    return _load(path, limit, "mmlu", "loglik", _mmlu)


def load_hellaswag(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    """Rowan/hellaswag parquet (validation: the test split has no labels)."""
    return _load(path, limit, "hellaswag", "loglik", _hellaswag)


def load_arc(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    """allenai/ai2_arc parquet (ARC-Challenge or ARC-Easy)."""
    return _load(path, limit, "arc", "loglik", _arc)


def load_gsm8k(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    """openai/gsm8k (main) parquet or JSONL."""
    return _load(path, limit, "gsm8k", "gsm8k", _gsm8k, (".parquet", ".jsonl"))


READERS: dict[str, tuple[Callable[..., EvalSet], str]] = {
    "mmlu": (load_mmlu, "loglik"),
    "hellaswag": (load_hellaswag, "loglik"),
    "arc": (load_arc, "loglik"),
    "gsm8k": (load_gsm8k, "gsm8k"),
}

# --- metrics -----------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?[\d,]*\d(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in text, commas removed: "The answer is 1,234." -> "1234"."""
    found = _NUMBER.findall(str(text))
    return found[-1].replace(",", "") if found else None


def gsm8k_target(solution: str) -> str | None:
    """The number after the last "####" of a GSM8K solution (commas removed); None without one."""
    if "####" not in solution:
        return None
    return last_number(solution.rsplit("####", 1)[1])


def _same_number(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def score_gsm8k(item: EvalItem, prediction: str) -> dict:
    target = gsm8k_target(item.answers[0]) or last_number(item.answers[0])
    extracted = last_number(prediction)
    ok = _same_number(extracted, target)
    return record(item, prediction, ok, extracted=extracted, target=target)


def aggregate_gsm8k(records: Sequence[dict]) -> dict:
    return accuracy(records)


def _argmax_letter(values: Sequence[float], letters: Sequence[str]) -> str | None:
    if not values or len(values) != len(letters):
        return None
    return letters[int(np.argmax(values))]


def score_loglik(item: EvalItem, prediction: str) -> dict:
    """prediction: loglik_predictor's JSON, or a bare letter (then no loglik values)."""
    letters = list(item.letters)
    values: dict = {}
    text = prediction.strip()
    if text.startswith("{"):
        try:
            values = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            values = {}
        values = values if isinstance(values, dict) else {}
    loglik, norm = values.get("loglik"), values.get("loglik_norm")
    choice = values.get("choice") if values else text.upper()
    if choice not in letters:
        choice = _argmax_letter(loglik, letters) if loglik else None
    choice_norm = _argmax_letter(norm, letters) if norm else choice
    answer = item.answers[0]
    return record(
        item,
        choice if choice is not None else prediction,
        choice == answer,
        options=dict(item.options),
        choice=choice,
        loglik=loglik,
        loglik_norm=norm,
        choice_norm=choice_norm,
        correct_norm=choice_norm == answer,
    )


def aggregate_loglik(records: Sequence[dict]) -> dict:
    return {
        "n": len(records),
        "accuracy": mean([r["correct"] for r in records]),
        "accuracy_norm": mean([r["correct_norm"] for r in records]),
    }


LANGUAGE_METRICS: dict[str, Metric] = {
    "loglik": Metric("loglik", score_loglik, aggregate_loglik),
    "gsm8k": Metric("gsm8k", score_gsm8k, aggregate_gsm8k),
}

# --- log-likelihoods ---------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg",))
def _query_logprobs(cfg, params, ids, mask, qpos, qtok):
    """ids/mask [B, T] (right-padded), qpos/qtok [B, Q] -> log P(qtok | ids[:qpos + 1]) [B, Q] f32."""
    logits, _ = DeepseekVL(cfg).apply({"params": params}, ids, positions_from_mask(mask), mask)
    picked = jnp.take_along_axis(logits, qpos[..., None], axis=1).astype(jnp.float32)
    logp = jax.nn.log_softmax(picked, axis=-1)
    return jnp.take_along_axis(logp, qtok[..., None], axis=-1)[..., 0]


def _split(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's _encode_pair: trailing context spaces join the continuation."""
    n = len(context) - len(context.rstrip(" "))
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    ctx = tokenizer.encode(context)
    return ctx, tokenizer.encode(context + continuation)[len(ctx) :]


def continuation_logliks(
    engine: Engine,
    requests: Sequence[tuple[str, Sequence[str]]],
    names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """(context, continuations) pairs -> per pair, log P(continuation | BOS + context) [n] float64.

    One row per continuation ([BOS] + context + continuation tokens, right-padded); when every
    continuation of a pair is one token (MMLU's letters) the pair takes one row, read at its last
    position. Rows go in chunks of `engine.batch_size` (a multiple of the data-parallel size),
    lengths round up to `engine.length_bucket`: one compiled program per bucket.
    Raises ItemError("prompt_too_long") / ("bad_answer") naming the request (`names[r]`, else its index).
    """
    tok, cfg = engine.tokenizer, engine.cfg
    limit = cfg.llm.max_position
    rows: list[tuple[list[int], list[tuple[int, int, int, int]]]] = []  # ids, (pos, tok, req, opt)
    out = [np.zeros(len(conts), np.float64) for _, conts in requests]
    for r, (context, conts) in enumerate(requests):
        name = names[r] if names is not None else f"request {r}"
        pairs = [_split(tok, context, c) for c in conts]
        if empty := [k for k, (_, c) in enumerate(pairs) if not c]:
            raise ItemError("bad_answer", f"{name}: continuations {empty} have no tokens")
        longest = 1 + max(len(ctx) + len(c) for ctx, c in pairs)
        if longest > limit:
            raise ItemError(
                "prompt_too_long", f"{name}: {longest} tokens > model.llm.max_position {limit}"
            )
        ctx0 = pairs[0][0]
        if all(len(c) == 1 and ctx == ctx0 for ctx, c in pairs):
            last = len(ctx0)  # the logits at BOS + context's last token
            rows.append(
                ([tok.bos_id, *ctx0], [(last, c[0], r, k) for k, (_, c) in enumerate(pairs)])
            )
            continue
        for k, (ctx, c) in enumerate(pairs):
            start = len(ctx)  # the logits at position start + j predict continuation token j
            q = [(start + j, t, r, k) for j, t in enumerate(c)]
            rows.append(([tok.bos_id, *ctx, *c], q))
    if not rows:
        return out
    rows.sort(key=lambda row: -len(row[0]))  # similar lengths share a bucket
    dp = engine.data_parallel
    batch = engine.batch_size or (1 << max(0, (len(rows) - 1).bit_length()))
    batch = -(-batch // dp) * dp
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        need = max(max(len(row), len(q)) for row, q in chunk)
        t = max(need, min(bucket_length(need, engine.length_bucket), limit))
        ids = np.full((batch, t), tok.pad_id, np.int32)
        mask = np.zeros((batch, t), np.int32)
        mask[:, 0] = 1  # filler rows: one real token keeps attention defined
        qpos = np.zeros((batch, t), np.int32)
        qtok = np.zeros((batch, t), np.int32)
        for b, (row, q) in enumerate(chunk):
            ids[b, : len(row)], mask[b, : len(row)] = row, 1
            qpos[b, : len(q)] = [p for p, *_ in q]
            qtok[b, : len(q)] = [x for _, x, *_ in q]
        with engine._context():
            logp = _query_logprobs(
                cfg,
                engine.params,
                jnp.asarray(ids),
                jnp.asarray(mask),
                jnp.asarray(qpos),
                jnp.asarray(qtok),
            )
        logp = np.asarray(jax.device_get(logp), np.float64)
        for b, (_, q) in enumerate(chunk):
            for j, (_, _, r, k) in enumerate(q):
                out[r][k] += logp[b, j]
    return out


def loglik_predictor(engine: Engine) -> Predict:
    """predict(items) for "loglik" items (meta context + continuations) -> per item the JSON
    {"choice": argmax letter, "loglik": [sum log P per option], "loglik_norm": [per character]}.
    A bad item raises ItemError naming it, so the runner skips just that item."""

    def predict(items: Sequence[EvalItem]) -> list[str]:
        requests = []
        for it in items:
            context, conts = it.meta.get("context"), it.meta.get("continuations")
            if context is None or not conts or len(conts) != len(it.options):
                raise ItemError(
                    "missing_field",
                    f"{it.id}: loglik scoring needs meta['context'] and one meta['continuations'] "
                    "entry per option (a language.READERS item)",
                )
            requests.append((context, list(conts)))
        values = continuation_logliks(engine, requests, [f"item {it.id}" for it in items])
        out = []
        for it, (_, conts), v in zip(items, requests, values):
            chars = np.array([max(1, len(c.removeprefix(" "))) for c in conts], np.float64)
            norm = v / chars
            out.append(
                json.dumps(
                    {
                        "choice": it.letters[int(np.argmax(v))],
                        "loglik": [float(x) for x in v],
                        "loglik_norm": [float(x) for x in norm],
                    }
                )
            )
        return out

    return predict


__all__ = [
    "LANGUAGE_METRICS",
    "READERS",
    "continuation_logliks",
    "gsm8k_target",
    "hellaswag_preprocess",
    "last_number",
    "load_arc",
    "load_gsm8k",
    "load_hellaswag",
    "load_mmlu",
    "loglik_predictor",
]
