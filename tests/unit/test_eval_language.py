"""Language benchmarks (dsvl_jax.eval.language): readers of the HF parquet layouts, the GSM8K and
log-likelihood metrics, and the batched log-likelihoods against a float64 reference of api.forward."""

import dataclasses
import json

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dsvl_jax import api
from dsvl_jax.eval import language as L
from dsvl_jax.eval.items import EvalItem


def _parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


MMLU_ROWS = [
    dict(
        question="What is 2 + 2?", subject="elementary_math", choices=["3", "4", "5", "6"], answer=1
    ),
    dict(question="Red plus blue?", subject="art", choices=["purple", "green", "x", "y"], answer=0),
    dict(question="Broken?", subject="art", choices=["a", "b", "c", "d"], answer=7),  # bad_answer
]
HELLASWAG_ROWS = [
    dict(
        ind=24,
        activity_label="Baking cookies",
        ctx_a="A woman puts flour in a bowl.",
        ctx_b="she",
        ctx="A woman puts flour in a bowl. she",
        endings=["stirs it [title] well.", "flies away.", "eats the bowl whole.", "sings."],
        label="0",
    ),
    dict(
        ind=25,
        activity_label="Running",
        ctx_a="A man runs.",
        ctx_b="he",
        ctx="A man runs. he",
        endings=["stops.", "keeps running fast down the long road.", "sits.", "jumps."],
        label="1",
    ),
    dict(ind=26, activity_label="X", ctx_a="a", ctx_b="b", ctx="a b", endings=["1", "2"], label=""),
]
ARC_ROWS = [
    dict(
        id="Mercury_1",
        question="Which is a gas?",
        choices={"text": ["rock", "steam", "wood", "iron"], "label": ["A", "B", "C", "D"]},
        answerKey="B",
    ),
    dict(
        id="Mercury_2",
        question="Which is warm?",
        choices={"text": ["ice", "snow", "sun", "hail"], "label": ["1", "2", "3", "4"]},
        answerKey="3",
    ),
    dict(
        id="Mercury_3",
        question="?",
        choices={"text": ["a", "b"], "label": ["A", "B"]},
        answerKey="E",
    ),  # bad_answer
    dict(
        id="Mercury_1",
        question="Again?",
        choices={"text": ["a", "b"], "label": ["A", "B"]},
        answerKey="A",
    ),  # duplicate_id
]
GSM_ROWS = [
    dict(question="Tom has 3 apples and buys 4. How many?", answer="3 + 4 = 7\n#### 7"),
    dict(question="Big?", answer="It is 1000 + 234.\n#### 1,234"),
    dict(question="No final answer?", answer="just text"),  # bad_answer
]


def test_mmlu_reader(tmp_path):
    # a folder of per-subject files: read recursively, ids unique by relative path
    _parquet(tmp_path / "mmlu" / "a" / "test.parquet", MMLU_ROWS[:2])
    _parquet(tmp_path / "mmlu" / "b" / "test.parquet", MMLU_ROWS[2:])
    es = L.load_mmlu(str(tmp_path / "mmlu"))
    assert (es.benchmark, es.metric, es.format) == ("mmlu", "loglik", "parquet")
    assert [it.answers for it in es.items] == [("B",), ("A",)]
    assert [it.category for it in es.items] == ["elementary_math", "art"]
    it = es.items[0]
    assert it.options == (("A", "3"), ("B", "4"), ("C", "5"), ("D", "6"))
    assert it.id == "a/test:0"
    assert it.meta["context"] == (
        "The following are multiple choice questions (with answers) about elementary math.\n\n"
        "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    )
    assert it.meta["continuations"] == [" A", " B", " C", " D"]
    [bad] = es.skipped
    assert bad.reason == "bad_answer" and bad.where.endswith("test.parquet:[0]")
    assert len(L.load_mmlu(str(tmp_path / "mmlu"), limit=1).items) == 1
    assert L.READERS["mmlu"] == (L.load_mmlu, "loglik")


def test_hellaswag_reader(tmp_path):
    es = L.load_hellaswag(str(_parquet(tmp_path / "val.parquet", HELLASWAG_ROWS)))
    assert (es.benchmark, es.metric) == ("hellaswag", "loglik")
    a, b = es.items
    assert (a.id, a.answers, a.category) == ("24", ("A",), "Baking cookies")
    assert (b.answers, b.category) == (("B",), "Running")
    assert a.meta["context"] == "Baking cookies: A woman puts flour in a bowl. She"
    assert a.meta["continuations"][:2] == [" stirs it. well.", " flies away."]
    assert a.letters == ("A", "B", "C", "D")
    [bad] = es.skipped
    assert (bad.id, bad.reason) == ("26", "bad_answer") and "label" in bad.detail


def test_arc_reader(tmp_path):
    es = L.load_arc(str(_parquet(tmp_path / "ARC-Challenge" / "test.parquet", ARC_ROWS)))
    assert (es.benchmark, es.metric) == ("arc", "loglik")
    a, b = es.items
    assert (a.id, a.answers, a.options[1]) == ("Mercury_1", ("B",), ("B", "steam"))
    assert b.answers == ("C",) and b.meta["labels"] == ["1", "2", "3", "4"]  # numeric labels
    assert a.meta["context"] == "Question: Which is a gas?\nAnswer:"
    assert a.meta["continuations"] == [" rock", " steam", " wood", " iron"]
    assert [(s.id, s.reason) for s in es.skipped] == [
        ("Mercury_3", "bad_answer"),
        ("Mercury_1", "duplicate_id"),
    ]


def test_gsm8k_reader_parquet_and_jsonl(tmp_path):
    es = L.load_gsm8k(str(_parquet(tmp_path / "test.parquet", GSM_ROWS)))
    assert (es.benchmark, es.metric, es.format) == ("gsm8k", "gsm8k", "parquet")
    assert [it.answers for it in es.items] == [("7",), ("1234",)]
    assert es.items[0].kind == "open" and es.items[1].meta["solution"].endswith("#### 1,234")
    assert [s.reason for s in es.skipped] == ["bad_answer"]
    jl = tmp_path / "test.jsonl"
    jl.write_text("\n".join([json.dumps(GSM_ROWS[0]), "{oops", json.dumps(GSM_ROWS[1])]) + "\n")
    es = L.load_gsm8k(str(jl))
    assert es.format == "jsonl" and [it.answers for it in es.items] == [("7",), ("1234",)]
    assert [(s.reason, s.where) for s in es.skipped] == [("bad_json", f"{jl}:2")]


def test_gsm8k_metric():
    assert L.last_number("The answer is 1,234.") == "1234"
    assert L.gsm8k_target("so 1000 + 234\n#### 1,234") == "1234"
    assert L.last_number("no digits") is None and L.gsm8k_target("1234") is None
    m = L.LANGUAGE_METRICS["gsm8k"]
    it = EvalItem("g", "q?", ("1234",))
    recs = [
        m.score(it, "The answer is 1,234."),
        m.score(it, "#### 1234.0"),
        m.score(it, "12 then 1234 then 5"),  # the last number counts
        m.score(it, "I don't know"),
    ]
    assert [r["correct"] for r in recs] == [True, True, False, False]
    assert recs[0]["extracted"] == "1234" and recs[3]["extracted"] is None
    assert m.aggregate(recs) == {"n": 4, "accuracy": 0.5}


def test_loglik_metric():
    m = L.LANGUAGE_METRICS["loglik"]
    it = EvalItem("x", "q", ("B",), options=(("A", "a"), ("B", "bbbb"), ("C", "c")))
    # acc picks B (-2.0), acc_norm picks B too; second: acc picks A, acc_norm (per char) picks B
    r1 = m.score(
        it, json.dumps({"choice": "B", "loglik": [-3, -2, -4], "loglik_norm": [-3, -0.5, -4]})
    )
    r2 = m.score(
        it, json.dumps({"choice": "A", "loglik": [-1, -2, -4], "loglik_norm": [-1, -0.5, -4]})
    )
    r3 = m.score(it, "B")  # a generating predictor's letter
    assert (r1["prediction"], r1["correct"], r1["correct_norm"]) == ("B", True, True)
    assert (r2["prediction"], r2["correct"], r2["choice_norm"], r2["correct_norm"]) == (
        "A",
        False,
        "B",
        True,
    )
    assert r1["loglik"] == [-3, -2, -4] and (r3["correct"], r3["loglik"]) == (True, None)
    agg = m.aggregate([r1, r2, r3])
    assert agg["n"] == 3 and agg["accuracy"] == pytest.approx(2 / 3) and agg["accuracy_norm"] == 1.0


# --- log-likelihoods on a tiny random model ------------------------------------------------------------

TRAIN = [
    "Answer: A",
    "Answer: B",
    "Answer: C",
    "Answer: D",
    "The following are multiple choice questions (with answers) about art.",
    "A woman puts flour in a bowl. She stirs it well.",
    "A man runs. He keeps running fast down the long road.",
    "Question: Which is a gas? Answer: steam",
] * 20


@pytest.fixture(scope="module")
def model():
    from dsvl_jax.data.tokenizer import SP_IMAGE_ID, SentencePieceTokenizer, train_sentencepiece
    from dsvl_jax.infer import Engine
    from dsvl_jax.model.params import init_params
    from dsvl_jax.model.sizes import model_config

    tok = SentencePieceTokenizer(train_sentencepiece(TRAIN, 320))
    base = model_config("tiny")
    cfg = dataclasses.replace(
        base, llm=dataclasses.replace(base.llm, vocab_size=512), image_token_id=SP_IMAGE_ID
    )
    params = init_params(cfg, 0)
    return Engine(cfg, params, tok, batch_size=4, length_bucket=64)


def _reference(engine, context, continuation):
    """float64 log P(continuation | BOS + context) from api.forward's logits (no padding)."""
    tok = engine.tokenizer
    ctx = tok.encode(context)
    cont = tok.encode(context + continuation)[len(ctx) :]
    ids = np.array([[tok.bos_id, *ctx, *cont]], np.int32)
    logits = api.forward(engine.cfg, engine.params, ids).astype(np.float64)[0]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return sum(logp[len(ctx) + j, t] for j, t in enumerate(cont))


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    d = tmp_path_factory.mktemp("lang")
    return [
        *L.load_hellaswag(str(_parquet(d / "h.parquet", HELLASWAG_ROWS))).items,
        *L.load_mmlu(str(_parquet(d / "m.parquet", MMLU_ROWS))).items,
        *L.load_arc(str(_parquet(d / "a.parquet", ARC_ROWS))).items,
    ]


def test_logliks_match_float64_reference(model, items):
    from dsvl_jax.eval.language import _split

    # MMLU's letters are one token each here: those items take the one-row path
    mmlu = [it for it in items if it.meta["context"].startswith("The following")]
    assert all(len(_split(model.tokenizer, mmlu[0].meta["context"], c)[1]) == 1 for c in " ABCD")
    lens = {
        len(_split(model.tokenizer, items[1].meta["context"], c)[1])
        for c in items[1].meta["continuations"]
    }
    assert len(lens) > 1  # continuations of different lengths in one batch
    preds = L.loglik_predictor(model)(items)  # 6 items -> 14 rows: chunks of 4 rows
    assert len(preds) == len(items)
    for it, p in zip(items, preds):
        got = json.loads(p)
        ref = [_reference(model, it.meta["context"], c) for c in it.meta["continuations"]]
        np.testing.assert_allclose(got["loglik"], ref, rtol=0, atol=1e-4, err_msg=it.id)
        assert got["choice"] == it.letters[int(np.argmax(ref))]
        chars = [len(c) - 1 for c in it.meta["continuations"]]
        np.testing.assert_allclose(got["loglik_norm"], np.array(ref) / chars, atol=1e-4)
        rec = L.LANGUAGE_METRICS["loglik"].score(it, p)
        assert rec["prediction"] == got["choice"] and rec["correct"] == (
            got["choice"] == it.answers[0]
        )


def test_logliks_sharded_equal_unsharded(model, items):
    from dsvl_jax.infer import Engine, param_shardings

    mesh, rules, shardings = param_shardings(model.cfg, (2, 2, 2))
    sharded = Engine(
        model.cfg,
        jax.device_put(model.params, shardings),
        model.tokenizer,
        mesh,
        rules,
        batch_size=4,
        length_bucket=64,
    )
    requests = [(it.meta["context"], it.meta["continuations"]) for it in items[:2]]
    a = L.continuation_logliks(model, requests)
    b = L.continuation_logliks(sharded, requests)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_loglik_predictor_reports_bad_items(model):
    from dsvl_jax.eval.items import ItemError

    predict = L.loglik_predictor(model)
    with pytest.raises(ItemError, match="meta") as e:
        predict([EvalItem("g", "q?", ("7",))])
    assert e.value.reason == "missing_field"
    long = EvalItem(
        "long",
        "q",
        ("A",),
        options=(("A", "a"), ("B", "b")),
        meta={"context": "Answer: A " * 400, "continuations": [" a", " b"]},
    )
    with pytest.raises(ItemError, match="item long") as e:
        predict([long])
    assert e.value.reason == "prompt_too_long"
