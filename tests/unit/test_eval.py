"""Evaluation harness (dsvl_jax.eval): items, scoring and the runner on a planted set, and the CLI end to end.

The planted predictions below are scored by hand (numbers in the comments); the runner must reproduce
them exactly, overall and per category.
"""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from dsvl_jax.data.records import BadRecord
from dsvl_jax.eval import (
    MC_INSTRUCTION,
    EvalItem,
    evaluate,
    exact_match,
    format_summary,
    load_items,
    normalize_answer,
    parse_choice,
    relaxed_match,
    to_number,
)

import commands


def _png(color=(200, 30, 30), size=(40, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


# id -> (record fields, planted prediction); exact / relaxed by hand
OPEN = {
    "q1": (dict(category="chart", answer="42"), "42"),  # exact, relaxed
    "q2": (dict(category="chart", answer="100"), "103"),  # relaxed only (3% off)
    "q3": (dict(category="chart", answer="100"), "106"),  # neither (6% off)
    # exact, relaxed
    "q4": (dict(category="doc", answers=["The Red Car", "red automobile"]), "red car."),
    "q5": (dict(category="doc", answer="Paris"), "London"),  # neither
    "q6": (dict(category="chart", answer="1,000"), "1000"),  # exact, relaxed
    "q7": (dict(category="chart", answer="3.5"), "35"),  # neither: the decimal point counts
    "q8": (dict(category="doc", answers=[{"answer": "0"}]), "0.0"),  # relaxed only (0 == 0.0)
}
# open: exact 3/8, relaxed 5/8; chart (q1 q2 q3 q6 q7) exact 2/5 relaxed 3/5; doc (q4 q5 q8) exact 1/3 relaxed 2/3

OPTS = {"A": "a cat", "B": "a dog", "C": "two birds", "D": "three"}
MC = {  # index -> (category, answer, options, hint, prediction); correct?
    "1": ("ocr", "B", OPTS, "", "B"),  # yes
    "2": ("ocr", "C", OPTS, "Look closely.", "(C) two birds"),  # yes
    "3": ("ocr", "A", OPTS, "", "The answer is D."),  # no (D)
    "4": ("count", "D", OPTS, "", "three"),  # yes (option text)
    "5": ("count", "A", OPTS, "", "I am not sure"),  # no, unparsed
    # yes; D empty -> 3 options
    "6": ("count", "B", {"A": "3", "B": "4", "C": "5", "D": "nan"}, "", "B. 4"),
    "8": ("ocr", "A", OPTS, "", "A"),  # yes; image = row 1's (MMBench reference)
}
# mc: 5/7 correct, 1 unparsed; ocr (1 2 3 8) 3/4; count (4 5 6) 2/3 with 1 unparsed


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    (d / "imgs").mkdir()
    (d / "imgs" / "chart.png").write_bytes(_png())
    lines = [
        json.dumps({"id": k, "image": "chart.png", "question": f"What is shown in {k}?", **rec})
        for k, (rec, _) in OPEN.items()
    ]
    lines += [
        # image_missing
        json.dumps({"id": "q9", "image": "missing.png", "question": "?", "answer": "x"}),
        json.dumps({"id": "q10", "image": "chart.png", "question": "No answer?"}),  # missing_field
        # duplicate_id
        "{not json",  # bad_json
        json.dumps({"id": "q1", "image": "chart.png", "question": "again", "answer": "1"}),
    ]
    (d / "vqa.jsonl").write_text("\n".join(lines) + "\n")
    b64 = base64.b64encode(_png((10, 200, 10))).decode()
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    rows = ["\t".join(cols)]
    for k, (cat, ans, opts, hint, _) in MC.items():
        img = "1" if k == "8" else b64
        rows.append(
            "\t".join(
                [k, f"Question {k}?", hint or "nan", *(opts[x] for x in "ABCD"), ans, cat, img]
            )
        )
    rows.append("\t".join(["7", "Q7?", "nan", "w", "x", "y", "z", "E", "ocr", b64]))  # bad_answer
    # not_an_image
    rows.append("\t".join(["9", "Q9?", "nan", "w", "x", "y", "z", "A", "ocr", "bm90IGFuIGltYWdl"]))
    (d / "mmb.tsv").write_text("\n".join(rows) + "\n")
    return d


def _predict(items):
    return [OPEN[it.id][1] if it.id in OPEN else MC[it.id][4] for it in items]


def test_scoring_primitives():
    assert normalize_answer("  The Red, car! ") == "red car"
    assert normalize_answer("3.5") == "3.5" and normalize_answer("1,000 m.") == "1000 m"
    assert exact_match("An apple.", ["apple"]) and not exact_match("apples", ["apple"])
    assert [to_number(s) for s in ("12", "-3.5", "1,000", "45%", "$7", "3.", "x1")] == [
        12,
        -3.5,
        1000,
        45,
        7,
        3,
        None,
    ]
    assert relaxed_match("104.9", ["100"]) and not relaxed_match("105.1", ["100"])
    assert (
        relaxed_match("48%", ["50"])
        and relaxed_match("Yes", ["yes"])
        and not relaxed_match("1", ["0"])
    )
    o = list(OPTS.items())
    cases = {
        "B": "B",
        "b": None,
        "(C)": "C",
        "C) two birds": "C",
        "D: three": "D",
        "Answer: A": "A",
        "The correct option is (B).": "B",
        "I think B is right": "B",
        "a dog": "B",
        "It shows two birds": "C",
        "A or B": None,
        "E": None,
        "": None,
        "Cats": None,
    }
    for text, want in cases.items():
        assert parse_choice(text, o) == want, text


def test_items_load_and_bad_rows_are_reported(files):
    vqa = load_items(str(files / "vqa.jsonl"), images=str(files / "imgs"))
    assert [it.id for it in vqa.items] == list(OPEN)
    assert vqa.items[0].kind == "open" and vqa.items[0].image.endswith("imgs/chart.png")
    assert vqa.items[3].answers == ("The Red Car", "red automobile") and vqa.items[7].answers == (
        "0",
    )
    why = {s.reason: s for s in vqa.skipped}
    assert sorted(why) == ["bad_json", "duplicate_id", "image_missing", "missing_field"]
    assert why["image_missing"].id == "q9" and "missing.png" in why["image_missing"].detail
    assert why["image_missing"].where == f"{files / 'vqa.jsonl'}:9"
    assert why["missing_field"].id == "q10" and why["bad_json"].where.endswith(":11")
    # Without --images, paths resolve under the data file's folder: there, chart.png does not exist.
    assert {s.reason for s in load_items(str(files / "vqa.jsonl")).skipped} >= {"image_missing"}

    mmb = load_items(str(files / "mmb.tsv"))
    assert mmb.format == "tsv" and [it.id for it in mmb.items] == list(MC)
    first = mmb.items[0]
    assert first.kind == "mc" and first.letters == ("A", "B", "C", "D") and first.answers == ("B",)
    img = Image.open(io.BytesIO(first.image_bytes()))
    # base64 decoded
    assert img.size == (40, 24) and img.convert("RGB").getpixel((0, 0)) == (10, 200, 10)
    assert mmb.items[-1].image == first.image  # row 8 refers to row 1's image
    assert mmb.items[5].letters == ("A", "B", "C")  # the "nan" option is dropped
    assert mmb.items[1].prompt() == (
        "Look closely.\nQuestion 2?\nA. a cat\nB. a dog\nC. two birds\nD. three\n" + MC_INSTRUCTION
    )
    why = {s.id: s for s in mmb.skipped}
    assert (
        why["7"].reason == "bad_answer"
        and "'E' is not one of the option letters ABCD" in why["7"].detail
    )
    assert why["9"].reason == "not_an_image" and why["9"].where == f"{files / 'mmb.tsv'}:10"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_items(str(files / "nope.jsonl"))
    with pytest.raises(ValueError, match="unknown eval data format '.csv'"):
        (files / "x.csv").write_text("a")
        load_items(str(files / "x.csv"))


def test_planted_accuracies_exact(files):
    vqa = load_items(str(files / "vqa.jsonl"), images=str(files / "imgs"))
    r = evaluate(vqa, _predict, batch_size=3)
    m = r["metrics"]
    assert (m["n"], m["n_open"], m["n_mc"]) == (8, 8, 0)
    assert m["exact_match"] == 3 / 8 and m["relaxed_accuracy"] == 5 / 8 and m["accuracy"] == 3 / 8
    assert m["mc_accuracy"] is None
    chart, doc = r["per_category"]["chart"], r["per_category"]["doc"]
    assert (chart["n"], chart["exact_match"], chart["relaxed_accuracy"]) == (5, 2 / 5, 3 / 5)
    assert (doc["n"], doc["exact_match"], doc["relaxed_accuracy"]) == (3, 1 / 3, 2 / 3)
    assert r["n_items"] == 12 and r["n_scored"] == 8 and len(r["skipped"]) == 4

    mmb = load_items(str(files / "mmb.tsv"))
    r = evaluate(mmb, _predict, batch_size=4)
    m = r["metrics"]
    assert (m["n_mc"], m["mc_accuracy"], m["mc_unparsed"], m["accuracy"]) == (7, 5 / 7, 1, 5 / 7)
    assert (r["per_category"]["ocr"]["mc_accuracy"], r["per_category"]["count"]["mc_accuracy"]) == (
        3 / 4,
        2 / 3,
    )
    assert r["per_category"]["count"]["mc_unparsed"] == 1
    pred = {p["id"]: p for p in r["predictions"]}
    assert (
        pred["3"]["choice"] == "D" and pred["3"]["correct"] is False and pred["5"]["choice"] is None
    )

    both = evaluate(vqa.items + mmb.items, _predict, batch_size=5)["metrics"]
    assert (both["n"], both["accuracy"]) == (15, (3 + 5) / 15)
    table = format_summary(r)
    assert (
        "OVERALL" in table
        and "71.4" in table
        and "skipped 2 of 9 items" in table
        and "bad_answer" in table
    )


def test_an_item_failing_in_predict_is_skipped_not_fatal(files):
    vqa = load_items(str(files / "vqa.jsonl"), images=str(files / "imgs"))
    calls = []

    def predict(items):
        calls.append(len(items))
        if any(it.id == "q5" for it in items):
            raise BadRecord("image_corrupt", "truncated PNG", "q5")
        return _predict(items)

    r = evaluate(vqa.items, predict, batch_size=4)
    assert r["n_scored"] == 7 and [s["id"] for s in r["skipped"]] == ["q5"]
    assert r["skipped"][0]["reason"] == "image_corrupt"
    assert calls == [4, 4, 1, 1, 1, 1]  # the failing batch is retried item by item
    with pytest.raises(ValueError, match="returned 1 answers for 4 items"):
        evaluate(vqa.items, lambda items: ["x"], batch_size=4)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny random SigLIP checkpoint with its tokenizer.model -> (ckpt dir, model config)."""
    import jax

    from dsvl_jax.checkpoints import save_params
    from dsvl_jax.data import corpus, tokenizer
    from dsvl_jax.model.config import model_config_from_dict
    from dsvl_jax.model.params import abstract_params
    from dsvl_jax.model.sizes import SIZES

    cfg = model_config_from_dict(
        {
            **SIZES["tiny_siglip"],
            "llm": {**SIZES["tiny_siglip"]["llm"], "vocab_size": 512},
            "image_token_id": tokenizer.SP_IMAGE_ID,
        }
    )
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda a: (0.1 * rng.standard_normal(a.shape)).astype(a.dtype), abstract_params(cfg)
    )
    ckpt = tmp_path_factory.mktemp("eval_ckpt") / "ckpt"
    save_params(str(ckpt), cfg, params)
    tokenizer.train_on_examples(
        corpus.generate("text", 20, seed=0), 400, out=ckpt / "tokenizer.model"
    )
    return ckpt, cfg


def test_evaluate_cli_end_to_end(files, tiny_ckpt, tmp_path):
    """A tiny SigLIP checkpoint with its tokenizer.model -> report JSON with every key, predictions
    beside it that rescore with no model, and a two-image item answered through the model."""
    ckpt, cfg = tiny_ckpt
    data = tmp_path / "mixed.jsonl"
    rows = [
        {
            "id": "o1",
            "image": str(files / "imgs" / "chart.png"),
            "question": "What colour?",
            "answer": "red",
            "category": "color",
        },
        {"id": "o2", "question": "Text only: 2 + 2?", "answer": "4", "category": "math"},
        {
            "id": "m1",
            "image": str(files / "imgs" / "chart.png"),
            "question": "Which colour?",
            "options": ["red", "green", "blue"],
            "answer": "red",
            "category": "color",
        },
        {"id": "bad", "image": "gone/missing.png", "question": "?", "answer": "x"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "report.json"
    p = commands.run(
        "evaluate",
        f"--checkpoint={ckpt}",
        f"--data={data}",
        f"--out={out}",
        "--batch=2",
        "--max_new_tokens=4",
        devices=1,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    last = json.loads(p.stdout.strip().splitlines()[-1])
    assert last["report"] == str(out) and (last["n_items"], last["n_scored"], last["skipped"]) == (
        4,
        3,
        1,
    )
    assert "OVERALL" in p.stdout and "image_missing" in p.stdout
    rep = json.loads(out.read_text())
    assert set(rep) == {
        "data",
        "format",
        "benchmark",
        "metric",
        "headline",
        "items_per_s",
        "predictions_file",
        "n_items",
        "n_scored",
        "metrics",
        "per_category",
        "skipped",
        "predictions",
        "settings",
        "seconds",
    }
    assert set(rep["metrics"]) == {
        "n",
        "accuracy",
        "n_open",
        "exact_match",
        "relaxed_accuracy",
        "n_mc",
        "mc_accuracy",
        "mc_unparsed",
    }
    assert set(rep["per_category"]) == {"color", "math"} and rep["per_category"]["color"]["n"] == 2
    assert [s["reason"] for s in rep["skipped"]] == ["image_missing"]
    assert [x["id"] for x in rep["predictions"]] == ["o1", "o2", "m1"]
    assert all(isinstance(x["prediction"], str) for x in rep["predictions"])
    assert rep["predictions"][2]["answers"] == ["A"] and rep["settings"]["tokenizer"].endswith(
        "tokenizer.model"
    )
    # The run wrote its answers beside the report; rescoring them needs no model and agrees.
    preds = tmp_path / "report.predictions.jsonl"
    assert [json.loads(x)["id"] for x in preds.read_text().splitlines()] == ["o1", "o2", "m1"]
    p = commands.run(
        "evaluate", f"--data={data}", f"--predictions={preds}", f"--out={tmp_path / 'r2.json'}"
    )
    assert p.returncode == 0, p.stderr[-3000:]
    again = json.loads(p.stdout.strip().splitlines()[-1])
    assert again["metrics"] == last["metrics"] and again["n_scored"] == 3
    # an MMMU-style item with two images, answered through the model: both images reach it
    from dsvl_jax.data.records import IMAGE_TAG
    from dsvl_jax.eval import EvalItem, evaluate_model
    from dsvl_jax.infer import Engine

    eng = Engine.load(str(ckpt), batch_size=2)
    two = EvalItem(
        "mm1",
        f"Compare {IMAGE_TAG} and {IMAGE_TAG}. Which is red?",
        ("A",),
        options=(("A", "first"), ("B", "second")),
        images=(str(files / "imgs" / "chart.png"), _png((30, 200, 30))),
    )
    seen = []
    real = eng.generate_ids
    eng.generate_ids = lambda prompts, **kw: seen.append(prompts) or real(prompts, **kw)
    r = evaluate_model(eng, [two], max_new_tokens=4)
    assert r["n_scored"] == 1 and len(seen[0][0][1]) == 2  # two decoded images for one prompt
    ids = list(seen[0][0][0])
    assert ids.count(cfg.image_token_id) == 2 * cfg.num_image_tokens
    # An unknown benchmark name is a usage error naming the known ones.
    p = commands.run("evaluate", "--benchmark=popee", f"--data={data}", f"--predictions={preds}")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith(
        "evaluate: error: --benchmark=popee: unknown; known: ai2d, arc, chartqa"
    )
    # A wrong data path is a usage error: one line, before the model loads.
    p = commands.run(
        "evaluate", f"--checkpoint={ckpt}", f"--data={tmp_path / 'nope.tsv'}", devices=1
    )
    assert (
        p.returncode == 2
        and p.stderr.strip() == f"evaluate: error: --data {tmp_path / 'nope.tsv'} not found"
    )


def test_eval_item_prompts():
    it = EvalItem("x", " What is it? ", ("cat",))
    assert it.prompt() == "What is it?" and it.kind == "open" and it.image_bytes() is None
    assert (
        it.prompt("Answer the question using a single word or phrase.")
        == "What is it?\nAnswer the question using a single word or phrase."
    )


def test_paper_suite_runs_what_it_finds(tiny_ckpt, tmp_path):
    """--suite=paper on a 2-device mesh: POPE (its jsonl + images) and MMLU (parquet) found under
    --data_root, one table with the paper's DeepSeek-VL figures beside ours, a report per benchmark."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ckpt, _ = tiny_ckpt
    root = tmp_path / "bench"
    (root / "pope" / "val2014").mkdir(parents=True)
    (root / "pope" / "val2014" / "a.jpg").write_bytes(_png())
    rows = [
        {"question_id": i, "image": "a.jpg", "text": "Is there a dog?", "label": lab}
        for i, lab in enumerate(["yes", "no", "no"])
    ]
    (root / "pope" / "coco_pope_random.json").write_text(
        "\n".join(json.dumps(r) for r in rows) + "\n"
    )
    (root / "mmlu").mkdir()
    pq.write_table(
        pa.table(
            {
                "question": ["2 + 2 =", "Capital of France?"],
                "subject": ["math", "geography"],
                "choices": [["3", "4", "5", "6"], ["Rome", "Paris", "Oslo", "Bern"]],
                "answer": [1, 1],
            }
        ),
        root / "mmlu" / "test-00000-of-00001.parquet",
    )
    p = commands.run(
        "evaluate",
        "--suite=paper",
        f"--data_root={root}",
        f"--checkpoint={ckpt}",
        f"--out={tmp_path / 'reports'}",
        "--batch=2",
        "--max_new_tokens=3",
        "--mesh=2,1,1",  # sharded over 2 devices (batch over the data axis)
        devices=2,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    last = json.loads(p.stdout.strip().splitlines()[-1])
    assert set(last["benchmarks"]) == {"pope", "mmlu"}
    assert "it/s" in p.stderr or "item/s" in p.stderr  # the progress bar's rate
    table = p.stdout
    assert "paper 1.3B" in table and "87.6" in table and "32.5" in table  # POPE, MMLU (Tables 5, 7)
    pope = json.loads((tmp_path / "reports" / "pope.json").read_text())
    assert pope["metric"] == "pope" and set(pope["metrics"]) >= {"f1", "yes_ratio", "precision"}
    mmlu = json.loads((tmp_path / "reports" / "mmlu.json").read_text())
    assert mmlu["metric"] == "loglik" and mmlu["n_scored"] == 2
    assert all(len(r["loglik"]) == 4 and r["choice"] in "ABCD" for r in mmlu["predictions"])
