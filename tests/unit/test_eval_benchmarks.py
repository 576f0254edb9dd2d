"""Benchmark readers (dsvl_jax.eval.benchmarks): each native layout written tiny in tmp_path and
read back field by field; one planted bad row per family shows up in `skipped` with its reason."""

import base64
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dsvl_jax.data.records import IMAGE_TAG
from dsvl_jax.eval.benchmarks import (
    READERS,
    load_ai2d,
    load_chartqa,
    load_docvqa,
    load_mathvista,
    load_mmbench,
    load_mmbench_cn,
    load_mmmu,
    load_ocrbench,
    load_pope,
    load_scienceqa,
    load_seed,
    load_textvqa,
)


def _png(color, size=(24, 24)) -> bytes:
    """A noisy tinted PNG: its base64 is over items._MAX_PATH (1 KiB), as real MMBench images are,
    so it is never mistaken for a path."""
    noise = np.random.default_rng(sum(color)).integers(0, 40, (*size, 3))
    pixels = np.clip(noise + np.array(color), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


RED, GREEN, BLUE = _png((200, 0, 0)), _png((0, 200, 0)), _png((0, 0, 200))
IMG_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _img(path, data=RED) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _bytes(item, k=0) -> bytes:
    return item.image_bytes(k)


def _skips(es) -> dict:
    return {s.id: s.reason for s in es.skipped}


def _check(es, name, fmt):
    assert es.benchmark == name and es.metric == READERS[name][1] and es.format == fmt


def _tsv(path, header, rows):
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")


def test_readers_table():
    assert set(READERS) == {
        "mmbench",
        "mmbench_cn",
        "seed",
        "scienceqa",
        "ai2d",
        "mmmu",
        "pope",
        "textvqa",
        "docvqa",
        "chartqa",
        "mathvista",
        "ocrbench",
    }
    assert {m for _, m in READERS.values()} == {
        "circular",
        "default",
        "vqa",
        "anls",
        "relaxed",
        "pope",
        "mathvista",
        "mmmu",
        "ocrbench",
    }


def test_mmbench_circular(tmp_path):
    b64 = base64.b64encode(RED).decode()
    b64g = base64.b64encode(GREEN).decode()
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category"]
    cols += ["image"]
    rows = [
        ["0", "What color?", "Look.", "red", "green", "blue", "", "A", "color", "attr", b64],
        # rotation 1 of question 0: options rotated, image = row 0's (MMBench digit reference)
        ["1000000", "What color?", "Look.", "green", "blue", "red", "", "C", "color", "attr", "0"],
        ["1", "How many?", "nan", "1", "2", "3", "4", "D", "count", "attr", b64g],
        ["2", "Bad image?", "nan", "x", "y", "", "", "A", "count", "attr", "!!notbase64"],
        ["3", "", "nan", "x", "y", "", "", "A", "count", "attr", b64],  # no question
    ]
    _tsv(tmp_path / "MMBench_DEV_EN.tsv", cols, rows)
    es = load_mmbench(str(tmp_path))
    _check(es, "mmbench", "vlmevalkit_tsv")
    items = {it.id: it for it in es.items}
    assert list(items) == ["0", "1000000", "1"]
    a, rot, b = items["0"], items["1000000"], items["1"]
    assert a.question == "What color?" and a.hint == "Look." and a.category == "color"
    assert a.options == (("A", "red"), ("B", "green"), ("C", "blue")) and a.answers == ("A",)
    assert rot.answers == ("C",) and rot.letters == ("A", "B", "C")
    assert a.meta["group"] == rot.meta["group"] == "0" and b.meta["group"] == "1"
    assert a.meta["l2_category"] == "attr"
    assert _bytes(a) == _bytes(rot) == RED and _bytes(b) == GREEN and b.hint == ""
    assert _skips(es) == {"2": "image_missing", "3": "missing_field"}
    assert es.skipped[0].where.endswith("MMBench_DEV_EN.tsv:5")
    assert len(load_mmbench(str(tmp_path / "MMBench_DEV_EN.tsv"), limit=2).items) == 2

    cn = tmp_path / "cn"
    cn.mkdir()
    _tsv(cn / "MMBench_DEV_CN.tsv", cols, rows[:1])
    es = load_mmbench_cn(str(cn))
    _check(es, "mmbench_cn", "vlmevalkit_tsv")
    assert [it.id for it in es.items] == ["0"]
    with pytest.raises(FileNotFoundError, match="MMBench_DEV_EN"):
        load_mmbench(str(cn))


@pytest.mark.parametrize("name", ["seed", "ai2d"])
def test_vlmevalkit_tsv(tmp_path, name):
    fname = {"seed": "SEEDBench_IMG.tsv", "ai2d": "AI2D_TEST.tsv"}[name]
    cols = ["index", "question", "A", "B", "C", "D", "answer", "category", "image"]
    b64 = base64.b64encode(BLUE).decode()
    _tsv(tmp_path / fname, cols, [["7", "Which?", "p", "q", "r", "s", "B", "scene", b64]])
    es = READERS[name][0](str(tmp_path))
    _check(es, name, "vlmevalkit_tsv")
    (it,) = es.items
    assert it.id == "7" and it.answers == ("B",) and it.letters == tuple("ABCD")
    assert it.category == "scene" and _bytes(it) == BLUE


def test_seed_json(tmp_path):
    _img(tmp_path / "SEED-Bench-image" / "1_a.jpg", RED)
    _img(tmp_path / "SEED-Bench-image" / "2_b.jpg", GREEN)

    def q(qid, data_id, **kw):
        rec = dict(question_id=qid, question=f"Q{qid}?", answer="C", data_id=data_id)
        rec.update(question_type_id=2, data_type="image")
        rec.update({f"choice_{x}": f"opt {x}" for x in "abcd"})
        return {**rec, **kw}

    data = {
        "questions": [
            q("101", "1_a.jpg", question_type_id=1),
            q("102", "2_b"),  # no suffix: <data_id>.jpg
            q("103", "v.mp4", data_type="video"),  # filtered: not SEED-Bench-IMG
            q("104", "gone.jpg"),
            q("105", "1_a.jpg", answer=None),
        ],
        "question_type": {"Scene Understanding": 1, "Instance Identity": 2},
    }
    (tmp_path / "SEED-Bench.json").write_text(json.dumps(data))
    es = load_seed(str(tmp_path))
    _check(es, "seed", "seed_json")
    a, b = es.items
    assert (a.id, b.id) == ("101", "102")
    assert a.question == "Q101?" and a.answers == ("C",) and a.options[2] == ("C", "opt c")
    assert a.category == "Scene Understanding" and b.category == "Instance Identity"
    assert _bytes(a) == RED and _bytes(b) == GREEN
    assert _skips(es) == {"104": "image_missing", "105": "missing_field"}


def test_scienceqa(tmp_path):
    _img(tmp_path / "images" / "test" / "11" / "image.png", RED)
    common = dict(split="test", grade="grade4", topic="physics", hint="")
    problems = {
        "11": dict(
            question="Which is hot?",
            choices=["ice", "fire"],
            answer=1,
            image="image.png",
            subject="natural science",
            **{**common, "hint": "Touch carefully."},
        ),
        "12": dict(
            question="Pick a word.",
            choices=["a", "b", "c"],
            answer=0,
            image=None,
            subject="language science",
            **common,
        ),
        "13": dict(
            question="Missing picture?",
            choices=["x", "y"],
            answer=0,
            image="image.png",
            subject="social science",
            **common,
        ),
        "14": dict(
            question="Bad answer", choices=["x", "y"], answer=5, image=None, subject="s", **common
        ),
        "20": dict(
            question="Train only", choices=["x", "y"], answer=0, image=None, subject="s", **common
        ),
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    splits = {"train": ["20"], "test": ["11", "12", "13", "14"]}
    (tmp_path / "pid_splits.json").write_text(json.dumps(splits))
    es = load_scienceqa(str(tmp_path))
    _check(es, "scienceqa", "scienceqa_json")
    a, b = es.items
    assert a.id == "11" and a.options == (("A", "ice"), ("B", "fire")) and a.answers == ("B",)
    assert a.hint == "Touch carefully." and a.category == "natural science" and _bytes(a) == RED
    assert b.images == () and b.answers == ("A",) and b.letters == ("A", "B", "C")
    assert b.meta["grade"] == "grade4"
    assert _skips(es) == {"13": "image_missing", "14": "bad_answer"}
    assert es.skipped[0].where.endswith("problems.json:13")


def test_ai2d_parquet(tmp_path):
    (tmp_path / "data").mkdir()
    rows = [
        dict(question="Which stage?", options=["egg", "larva", "adult"], answer="1", image=RED),
        dict(question="Which arrow?", options=["x", "y"], answer="0", image=b"not a png"),
        dict(question="No image?", options=["x", "y"], answer="0", image=None),
    ]
    for r in rows:
        r["image"] = None if r["image"] is None else {"bytes": r["image"], "path": "x.png"}
    schema = pa.schema(
        [
            ("question", pa.string()),
            ("options", pa.list_(pa.string())),
            ("answer", pa.string()),
            ("image", IMG_STRUCT),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema), tmp_path / "data" / "test-00000.parquet")
    es = load_ai2d(str(tmp_path))
    _check(es, "ai2d", "hf_parquet")
    (it,) = es.items
    assert it.id == "0" and it.question == "Which stage?" and it.answers == ("B",)
    assert it.options == (("A", "egg"), ("B", "larva"), ("C", "adult")) and _bytes(it) == RED
    assert _skips(es) == {"1": "not_an_image", "2": "missing_field"}


def test_mmmu_parquet(tmp_path):
    def row(id_, question, options, answer, qtype="multiple-choice", **imgs):
        r = dict(id=id_, question=question, options=options, answer=answer, question_type=qtype)
        r.update(explanation="", subfield="Art History", topic_difficulty="Easy")
        for k in range(1, 8):
            data = imgs.get(f"image_{k}")
            r[f"image_{k}"] = None if data is None else {"bytes": data, "path": f"{k}.png"}
        return r

    art = [
        row(
            "validation_Art_1",
            "Compare <image 1> with <image 2>.",
            "['the first', 'the second']",
            "B",
            image_1=RED,
            image_2=GREEN,
        ),
        row("validation_Art_2", "What year?", "[]", "1890", qtype="open", image_1=BLUE),
        row(
            "validation_Art_3",
            "Is <image 2> older?",
            "['yes', '<image 1>']",
            "A",
            image_1=RED,
            image_2=GREEN,
        ),
        row("validation_Art_4", "See <image 1> and <image 1>.", "['a', 'b']", "A", image_1=BLUE),
        row("validation_Art_5", "Where is <image 2>?", "['a', 'b']", "A", image_1=RED),
    ]
    theory = [row("validation_Art_Theory_1", "Open list?", "[]", "['0.5', '1/2']", "open")]
    cols = [("id", pa.string()), ("question", pa.string()), ("options", pa.string())]
    cols += [("answer", pa.string()), ("question_type", pa.string()), ("explanation", pa.string())]
    cols += [("subfield", pa.string()), ("topic_difficulty", pa.string())]
    schema = pa.schema(cols + [(f"image_{k}", IMG_STRUCT) for k in range(1, 8)])
    for subject, rows in (("Art", art), ("Art_Theory", theory)):
        (tmp_path / subject).mkdir()
        f = tmp_path / subject / "validation-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema), f)
    es = load_mmmu(str(tmp_path))
    _check(es, "mmmu", "mmmu_parquet")
    items = {it.id: it for it in es.items}
    two = items["validation_Art_1"]
    assert (
        two.question == f"Compare {IMAGE_TAG} with {IMAGE_TAG}."
        and two.question.count(IMAGE_TAG) == 2
    )
    assert [_bytes(two, k) for k in range(2)] == [RED, GREEN]
    assert two.options == (("A", "the first"), ("B", "the second")) and two.answers == ("B",)
    assert two.category == "Art" and two.meta["question_type"] == "multiple-choice"
    assert two.meta["subfield"] == "Art History" and two.meta["topic_difficulty"] == "Easy"
    open_ = items["validation_Art_2"]  # image_1 set but never referenced: tag at the start
    assert open_.options == () and open_.answers == ("1890",) and open_.kind == "open"
    assert open_.question == f"{IMAGE_TAG}\nWhat year?" and [_bytes(open_)] == [BLUE]
    opt_img = items["validation_Art_3"]  # order of appearance: question's <image 2>, then option B
    assert opt_img.options[1] == ("B", IMAGE_TAG) and opt_img.question == f"Is {IMAGE_TAG} older?"
    assert [_bytes(opt_img, k) for k in range(2)] == [GREEN, RED]
    twice = items["validation_Art_4"]  # referenced twice: included twice
    assert len(twice.images) == 2 and _bytes(twice, 1) == BLUE
    theory_item = items["validation_Art_Theory_1"]
    assert theory_item.category == "Art_Theory" and theory_item.answers == ("0.5", "1/2")
    assert _skips(es) == {"validation_Art_5": "image_missing"}


def test_pope(tmp_path):
    _img(tmp_path / "val2014" / "COCO_val2014_000000000001.jpg", RED)
    _img(tmp_path / "val2014" / "COCO_val2014_000000000002.jpg", GREEN)

    def line(qid, image, label="yes"):
        return json.dumps(
            dict(question_id=qid, image=image, text=f"Is there a thing {qid}?", label=label)
        )

    (tmp_path / "coco_pope_random.json").write_text(
        "\n".join(
            [
                line(1, "COCO_val2014_000000000001.jpg"),
                line(2, "COCO_val2014_000000000002.jpg", "no"),
                line(3, "COCO_val2014_000000000009.jpg"),
                "{broken",
            ]
        )
        + "\n"
    )
    (tmp_path / "coco_pope_adversarial.json").write_text(
        line(1, "COCO_val2014_000000000002.jpg", "no") + "\n" + line(2, "x.jpg", "maybe") + "\n"
    )
    es = load_pope(str(tmp_path))
    _check(es, "pope", "pope_jsonl")
    assert [it.id for it in es.items] == ["random/1", "random/2", "adversarial/1"]
    a, b, c = es.items
    assert (
        a.question == "Is there a thing 1?" and a.answers == ("yes",) and a.meta["label"] == "yes"
    )
    assert b.answers == ("no",) and b.meta["label"] == "no" and c.category == "adversarial"
    assert a.category == "random" and _bytes(a) == RED and _bytes(b) == GREEN == _bytes(c)
    assert [(s.reason, s.where.rsplit("/", 1)[-1]) for s in es.skipped] == [
        ("image_missing", "coco_pope_random.json:3"),
        ("bad_json", "coco_pope_random.json:4"),
        ("bad_answer", "coco_pope_adversarial.json:2"),
    ]
    assert len(load_pope(str(tmp_path), limit=1).items) == 1


def test_textvqa(tmp_path):
    _img(tmp_path / "train_images" / "abc.jpg", RED)
    answers = ["coke"] * 7 + ["coca cola"] * 3
    data = [
        dict(question_id=34602, question="What brand?", image_id="abc", answers=answers),
        dict(question_id=34603, image_id="abc", answers=answers),  # no question
        dict(question_id=34602, question="Again?", image_id="abc", answers=answers),
        dict(question_id=34604, question="Where?", image_id="nope", answers=answers),
    ]
    (tmp_path / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": data}))
    es = load_textvqa(str(tmp_path))
    _check(es, "textvqa", "textvqa_json")
    (it,) = es.items
    assert it.id == "34602" and it.question == "What brand?" and it.answers == tuple(answers)
    assert _bytes(it) == RED
    assert [(s.id, s.reason) for s in es.skipped] == [
        ("34603", "missing_field"),
        ("34602", "duplicate_id"),
        ("34604", "image_missing"),
    ]
    assert es.skipped[0].where.endswith("TextVQA_0.5.1_val.json:[1]")


def test_docvqa(tmp_path):
    _img(tmp_path / "documents" / "page1.png", GREEN)
    data = [
        dict(
            questionId=49153,
            question="What is the date?",
            image="documents/page1.png",
            answers=["1/8/93", "January 8, 1993"],
            question_types=["handwritten"],
        ),
        dict(questionId=49154, question="Who?", image="documents/gone.png", answers=["Bob"]),
    ]
    (tmp_path / "val_v1.0.json").write_text(json.dumps({"dataset_split": "val", "data": data}))
    es = load_docvqa(str(tmp_path))
    _check(es, "docvqa", "docvqa_json")
    (it,) = es.items
    assert it.id == "49153" and it.answers == ("1/8/93", "January 8, 1993")
    assert it.meta["question_types"] == ("handwritten",) and _bytes(it) == GREEN
    assert _skips(es) == {"49154": "image_missing"}
    # --images pointing at the documents folder itself
    es = load_docvqa(str(tmp_path / "val_v1.0.json"), images=str(tmp_path / "documents"))
    assert _bytes(es.items[0]) == GREEN


def test_chartqa(tmp_path):
    _img(tmp_path / "png" / "c1.png", RED)
    _img(tmp_path / "png" / "c2.png", BLUE)
    human = [
        dict(imgname="c1.png", query="Max value?", label="42"),
        dict(imgname="c9.png", query="?", label="1"),
    ]
    aug = [
        dict(imgname="c2.png", query="Min value?", label="3.5"),
        dict(imgname="c2.png", label="x"),
    ]
    (tmp_path / "test_human.json").write_text(json.dumps(human))
    (tmp_path / "test_augmented.json").write_text(json.dumps(aug))
    es = load_chartqa(str(tmp_path))
    _check(es, "chartqa", "chartqa_json")
    by_cat = {it.category: it for it in es.items}
    assert set(by_cat) == {"human", "augmented"}
    h, a = by_cat["human"], by_cat["augmented"]
    assert h.question == "Max value?" and h.answers == ("42",) and _bytes(h) == RED
    assert a.answers == ("3.5",) and _bytes(a) == BLUE and h.id != a.id
    assert _skips(es) == {"human/1": "image_missing", "augmented/1": "missing_field"}


def test_mathvista_json(tmp_path):
    _img(tmp_path / "images" / "1.jpg", RED)
    _img(tmp_path / "images" / "2.jpg", GREEN)
    data = {
        "1": dict(
            question="Which is larger?",
            image="images/1.jpg",
            choices=["3/11", "8/11"],
            answer="8/11",
            answer_type="text",
            precision=None,
            question_type="multi_choice",
            metadata=dict(category="math-targeted-vqa", task="figure question answering"),
        ),
        "2": dict(
            question="How long?",
            image="images/2.jpg",
            choices=None,
            unit="cm",
            answer="1.5",
            answer_type="float",
            precision=1.0,
            question_type="free_form",
            query="Hint: answer with one decimal.\nQuestion: How long?",
            metadata=dict(category="general-vqa"),
        ),
        "3": dict(question="Gone?", image="images/3.jpg", answer="1", metadata={}),
    }
    (tmp_path / "testmini.json").write_text(json.dumps(data))
    es = load_mathvista(str(tmp_path))
    _check(es, "mathvista", "mathvista_json")
    a, b = es.items
    assert a.id == "1" and a.options == () and a.answers == ("8/11",)
    assert a.question == "Which is larger?\nChoices:\n(A) 3/11\n(B) 8/11"
    assert a.category == "figure question answering" and _bytes(a) == RED
    assert a.meta == dict(
        question_type="multi_choice",
        answer_type="text",
        precision=None,
        choices=("3/11", "8/11"),
        unit="",
    )
    assert b.question.startswith("Hint: answer with one decimal.") and b.category == "general-vqa"
    assert b.meta["precision"] == 1.0 and b.meta["choices"] is None and _bytes(b) == GREEN
    assert _skips(es) == {"3": "image_missing"}
    assert es.skipped[0].where.endswith("testmini.json:3")


def test_mathvista_parquet(tmp_path):
    md = pa.struct([("category", pa.string()), ("task", pa.string())])
    schema = pa.schema(
        [
            ("pid", pa.string()),
            ("question", pa.string()),
            ("image", pa.string()),
            ("decoded_image", IMG_STRUCT),
            ("choices", pa.list_(pa.string())),
            ("precision", pa.float64()),
            ("answer", pa.string()),
            ("question_type", pa.string()),
            ("answer_type", pa.string()),
            ("metadata", md),
            ("query", pa.string()),
        ]
    )
    rows = [
        dict(
            pid="7",
            question="Count?",
            image="images/7.jpg",
            decoded_image={"bytes": BLUE, "path": None},
            choices=None,
            precision=None,
            answer="4",
            question_type="free_form",
            answer_type="integer",
            metadata=dict(category="general-vqa", task="visual question answering"),
            query="Question: Count?",
        ),
        dict(pid="8", question="No answer", image="images/8.jpg", decoded_image={"bytes": RED}),
    ]
    (tmp_path / "data").mkdir()
    pq.write_table(
        pa.Table.from_pylist(rows, schema), tmp_path / "data" / "testmini-00000-of-00001.parquet"
    )
    es = load_mathvista(str(tmp_path))
    _check(es, "mathvista", "mathvista_parquet")
    (it,) = es.items
    assert it.id == "7" and it.question == "Question: Count?" and it.answers == ("4",)
    assert it.category == "visual question answering" and _bytes(it) == BLUE
    assert it.meta["answer_type"] == "integer" and it.meta["question_type"] == "free_form"
    assert _skips(es) == {"8": "missing_field"}


def test_ocrbench(tmp_path):
    _img(tmp_path / "OCRBench_Images" / "IIIT5K" / "1.png", RED)
    _img(tmp_path / "OCRBench_Images" / "HME100k" / "2.jpg", GREEN)
    data = [
        dict(
            dataset_name="IIIT5K",
            id=0,
            image_path="IIIT5K/1.png",
            question="what is written in the image?",
            answers=["Hello"],
            type="Regular Text Recognition",
        ),
        dict(
            dataset_name="HME100k",
            id=1,
            image_path="HME100k/2.jpg",
            question="Write the expression.",
            answers="x^2",
            type="Handwritten Mathematical Expression Recognition",
        ),
        dict(dataset_name="IIIT5K", id=2, image_path="IIIT5K/1.png", question="?", type="t"),
    ]
    (tmp_path / "OCRBench.json").write_text(json.dumps(data))
    es = load_ocrbench(str(tmp_path))
    _check(es, "ocrbench", "ocrbench_json")
    a, b = es.items
    assert (a.id, a.answers, a.category) == ("0", ("Hello",), "Regular Text Recognition")
    assert b.answers == ("x^2",) and b.meta["dataset"] == "HME100k"
    assert _bytes(a) == RED and _bytes(b) == GREEN and a.question == "what is written in the image?"
    assert _skips(es) == {"2": "missing_field"}


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="OCRBench.json"):
        load_ocrbench(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_textvqa(str(tmp_path / "nope"))
