"""The benchmarks' official metrics (dsvl_jax.eval.metrics) on planted answers scored by hand.

Every expected number below is worked out in the comment beside it, from the official definition.
"""

import pytest

from dsvl_jax.eval.items import EvalItem
from dsvl_jax.eval.metrics import (
    METRICS,
    anls,
    levenshtein,
    mathvista_extract,
    mmmu_parse_choice,
    mmmu_parse_open,
    pope_parse,
    relaxed_correct,
    vqa_accuracy,
    vqa_normalize,
)

BASE_KEYS = {"id", "category", "type", "question", "prediction", "answers", "correct"}


def _item(answers, options=(), category="", meta=None, iid="q"):
    return EvalItem(
        id=iid,
        question="?",
        answers=tuple(answers),
        options=tuple(options),
        category=category,
        meta=meta or {},
    )


def _run(name, pairs):
    """pairs: (item, prediction) -> (records, aggregate)."""
    m = METRICS[name]
    records = [m.score(it, p) for it, p in pairs]
    for r in records:
        assert set(r) >= BASE_KEYS and isinstance(r["correct"], bool)
    agg = m.aggregate(records)
    assert agg["n"] == len(records) and m.headline in agg
    return records, agg


def test_registry_and_empty_aggregates():
    assert set(METRICS) == {
        "default",
        "vqa",
        "anls",
        "relaxed",
        "pope",
        "circular",
        "mathvista",
        "mmmu",
        "ocrbench",
    }
    for name, m in METRICS.items():
        assert m.name == name
        agg = m.aggregate([])
        assert agg["n"] == 0
        if name != "ocrbench":  # nothing to average -> None
            assert agg[m.headline] is None
    assert METRICS["ocrbench"].aggregate([])["score"] == 0


# --- VQA ------------------------------------------------------------------------------------------


def test_vqa_normalisation():
    assert vqa_normalize("Two dogs.") == "2 dogs"  # number word, final period
    assert vqa_normalize("2 dogs") == "2 dogs"
    assert vqa_normalize("The Cat") == "cat"  # lower case, article
    assert vqa_normalize("dont") == "don't"  # contractions table
    assert vqa_normalize("3.5") == "3.5"  # a period before a digit stays
    assert vqa_normalize("left-side") == "left side"  # '-' -> space (no "- " in the text)
    assert vqa_normalize("yes, it is") == "yes it is"


@pytest.mark.parametrize(
    "k, expected",
    [
        (0, 0.0),
        # 1 match: the 9 subsets that keep it have 1 -> 1/3; the one that drops it 0 -> 9/30
        (1, 0.3),
        # 2 matches: 8 subsets keep both -> 2/3; 2 subsets keep one -> 1/3: (16/3 + 2/3)/10 = 0.6
        (2, 0.6),
        # 3 matches: 7 subsets keep 3 -> 1; 3 subsets keep 2 -> 2/3: (7 + 2)/10 = 0.9
        (3, 0.9),
        (4, 1.0),  # every subset keeps >= 3
    ],
)
def test_vqa_leave_one_out(k, expected):
    answers = ["2 dogs"] * k + ["cat"] * (10 - k)
    assert vqa_accuracy("Two dogs.", answers) == pytest.approx(expected)


def test_vqa_metric_aggregate():
    two = _item(["2 dogs"] * 2 + ["cat"] * 8, iid="a")  # 0.6
    none = _item(["cat"] * 10, iid="b")  # 0.0
    full = _item(["red"] * 10, iid="c")  # "Red." -> "red": 1.0
    recs, agg = _run("vqa", [(two, "Two dogs."), (none, "2 dogs"), (full, "Red.")])
    assert [r["vqa_accuracy"] for r in recs] == pytest.approx([0.6, 0.0, 1.0])
    assert [r["correct"] for r in recs] == [True, False, True]  # correct: vqa_accuracy > 0
    assert agg["vqa_accuracy"] == pytest.approx(1.6 / 3)
    assert agg["accuracy"] == pytest.approx(2 / 3)
    assert METRICS["vqa"].headline == "vqa_accuracy"


# --- ANLS -----------------------------------------------------------------------------------------


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0
    assert levenshtein("flaw", "lawn") == 2


def test_anls_threshold():
    gold = ["abcdefghij"]  # 10 characters
    assert anls("abcdefxxxx", gold) == pytest.approx(0.6)  # 4 edits: NL 0.4 -> 0.6
    assert anls("abcdxxxxxx", gold) == 0.0  # 6 edits: NL 0.6 >= 0.5 -> 0
    assert anls("abcdexxxxx", gold) == 0.0  # NL exactly 0.5 -> 0
    assert anls("  ABCDEFGHIJ ", gold) == 1.0  # lowercased, stripped
    # max over answers: "abcdefxxxx" is 4 edits from gold[0] and 0 from the second
    assert anls("abcdefxxxx", [*gold, "ABCDEFXXXX"]) == 1.0
    recs, agg = _run(
        "anls", [(_item(gold, iid="a"), "abcdefxxxx"), (_item(gold, iid="b"), "abcdxxxxxx")]
    )
    assert [r["anls"] for r in recs] == pytest.approx([0.6, 0.0])
    assert agg["anls"] == pytest.approx(0.3)


# --- relaxed (ChartQA) ----------------------------------------------------------------------------


def test_relaxed_accuracy():
    assert relaxed_correct("103", ["100"])  # 3% off
    assert not relaxed_correct("106", ["100"])  # 6% off
    assert relaxed_correct("45%", ["0.45"])  # "x%" reads x / 100
    assert not relaxed_correct("45%", ["45"])
    assert relaxed_correct("Red Bar", ["red bar"])  # case-insensitive
    assert not relaxed_correct("The red bar", ["red bar"])  # no article removal, unlike default
    assert relaxed_correct("1,000", ["1000"])
    items = [_item(["100"], iid="a"), _item(["100"], iid="b"), _item(["Yes"], iid="c")]
    _, agg = _run("relaxed", list(zip(items, ["104", "94", "yes"])))
    assert agg["relaxed_accuracy"] == pytest.approx(2 / 3)  # 4% yes, 6% no, "yes" yes


# --- POPE -----------------------------------------------------------------------------------------


def test_pope_parsing():
    assert pope_parse("No, there is not.") == "no"
    assert pope_parse("There is a dog.") == "yes"
    assert pope_parse("Yes") == "yes"
    assert pope_parse("There is not a cat in the image.") == "no"
    assert pope_parse("Yes. There is no cat in the other image.") == "yes"  # first sentence only
    assert pope_parse("NO") == "yes"  # the official rule matches "No"/"no"/"not" words only


def test_pope_confusion_matrix():
    # TP 3, FP 1, FN 2, TN 4 (positive = yes)
    cases = [("yes", "Yes")] * 3 + [("no", "Yes")] + [("yes", "No.")] * 2 + [("no", "No")] * 4
    pairs = [
        (_item([label], meta={"label": label}, iid=str(i)), pred)
        for i, (label, pred) in enumerate(cases)
    ]
    recs, agg = _run("pope", pairs)
    assert sum(r["correct"] for r in recs) == 7
    assert agg["accuracy"] == pytest.approx(7 / 10)
    assert agg["precision"] == pytest.approx(3 / 4)
    assert agg["recall"] == pytest.approx(3 / 5)
    assert agg["f1"] == pytest.approx(2 / 3)  # 2 * 0.75 * 0.6 / 1.35
    assert agg["yes_ratio"] == pytest.approx(4 / 10)
    # label from answers[0] when meta has none
    assert METRICS["pope"].score(_item(["no"]), "No, it is not.")["correct"]


# --- CircularEval ---------------------------------------------------------------------------------

TEXTS = ["cat", "dog", "bird", "fish"]


def _rotations(group, answer_text, n, category="c"):
    """n circular rotations of TEXTS (answer: the letter where answer_text lands)."""
    out = []
    for k in range(n):
        texts = TEXTS[k:] + TEXTS[:k]
        options = tuple(zip("ABCD", texts))
        letter = "ABCD"[texts.index(answer_text)]
        out.append(_item([letter], options, category, {"group": group}, f"{group}-{k}"))
    return out


def test_circular_eval():
    g1 = _rotations("1", "dog", 4)  # all 4 right
    g2 = _rotations("2", "bird", 2)  # one of 2 wrong
    g3 = _rotations("3", "fish", 1)  # right
    pairs = [(it, it.answers[0]) for it in g1]
    pairs += [(g2[0], f"({g2[0].answers[0]})"), (g2[1], "A")]  # g2[1]'s answer is B (bird)
    pairs += [(g3[0], "fish")]  # the option text
    recs, agg = _run("circular", pairs)
    assert g2[1].answers == ("B",)
    assert [r["correct"] for r in recs] == [True] * 5 + [False, True]
    assert agg["accuracy"] == pytest.approx(6 / 7)
    assert agg["circular_accuracy"] == pytest.approx(2 / 3)  # groups 1 and 3 of 3
    assert agg["n_groups"] == 3
    assert agg["circular_accuracy"] < agg["accuracy"]


# --- MathVista ------------------------------------------------------------------------------------


def test_mathvista():
    integer = {"question_type": "free_form", "answer_type": "integer", "precision": None}
    flt = {"question_type": "free_form", "answer_type": "float", "precision": 2}
    mc = {
        "question_type": "multi_choice",
        "answer_type": "text",
        "precision": None,
        "choices": ["triangle", "square", "circle"],
    }
    assert mathvista_extract("3 apples and 5 pears make 8.", integer) == "8"  # the last number
    assert mathvista_extract("(B)", mc) == "B"
    cases = [
        (_item(["8"], meta=integer, iid="i1"), "3 apples and 5 pears make 8.", True, "8"),
        (_item(["2"], meta=integer, iid="i2"), "about 1.5", False, "1"),  # int(1.5) = 1
        (_item(["1.46"], meta=flt, iid="f1"), "It is roughly 1.4567", True, "1.46"),  # 2 decimals
        (_item(["1.46"], meta=flt, iid="f2"), "1.4", False, "1.4"),
        (_item(["square"], meta=mc, iid="m1"), "(B)", True, "square"),  # letter -> choice 2
        (_item(["square"], meta=mc, iid="m2"), "square", True, "square"),  # exact text
        (_item(["square"], meta=mc, iid="m3"), "squares", True, "square"),  # nearest choice
        (_item(["square"], meta=mc, iid="m4"), "C", False, "circle"),
    ]
    recs, agg = _run("mathvista", [(it, p) for it, p, _, _ in cases])
    assert [r["correct"] for r in recs] == [ok for *_, ok, _ in cases]
    assert [r["normalized"] for r in recs] == [n for *_, n in cases]
    assert agg["accuracy"] == pytest.approx(5 / 8)


# --- MMMU -----------------------------------------------------------------------------------------

OPTIONS = (("A", "nucleus"), ("B", "ribosome"), ("C", "mitochondria"), ("D", "membrane"))


def test_mmmu_choice_parsing():
    assert mmmu_parse_choice("(B)", OPTIONS) == "B"
    assert mmmu_parse_choice("The answer is B.", OPTIONS) == "B"
    assert mmmu_parse_choice("C. mitochondria", OPTIONS) == "C"  # " C." (lmms-eval's addition)
    # over 5 words, no letter: the option text
    assert mmmu_parse_choice("It is made in the mitochondria of cells", OPTIONS) == "C"
    assert mmmu_parse_choice("Not (A) but (D)", OPTIONS) == "D"  # several: the last one
    assert mmmu_parse_choice("I do not know", OPTIONS) is None  # MMMU would pick at random


def test_mmmu_open_parsing_and_metric():
    assert 12.5 in mmmu_parse_open("The area is 12.50 square units")
    assert "paris" in mmmu_parse_open("So the answer is Paris.")
    cases = [
        (_item(["B"], OPTIONS, "Biology", iid="1"), "The answer is B.", True),
        (_item(["A"], OPTIONS, "Biology", iid="2"), "(B)", False),
        (_item(["A"], OPTIONS, "Biology", iid="3"), "no idea", False),  # unparsed: wrong
        (_item(["12.5"], (), "Math", iid="4"), "The area is 12.50 square units", True),
        (_item(["1000"], (), "Math", iid="5"), "The total is 1,000 dollars", True),
        (_item(["12.5"], (), "Math", iid="6"), "The area is 13", False),
        (_item(["Paris"], (), "Geography", iid="7"), "So the answer is Paris.", True),
    ]
    recs, agg = _run("mmmu", [(it, p) for it, p, _ in cases])
    assert [r["correct"] for r in recs] == [ok for *_, ok in cases]
    assert [r["category"] for r in recs][:3] == ["Biology"] * 3
    assert agg["accuracy"] == pytest.approx(4 / 7)


# --- OCRBench -------------------------------------------------------------------------------------


def test_ocrbench():
    cases = [
        (_item(["Hello World"], iid="1"), "The text says HELLO world.", True),  # contained
        (_item(["hello world"], iid="2"), "hello", False),
        (_item(["x^{2}+1"], category="HME100k", iid="3"), "x ^ { 2 } + 1", True),  # spaces out
        (_item(["X^{2}"], category="HME100k", iid="4"), "x^{2}", False),  # HME keeps case
    ]
    recs, agg = _run("ocrbench", [(it, p) for it, p, _ in cases])
    assert [r["correct"] for r in recs] == [ok for *_, ok in cases]
    assert agg["score"] == 2 and isinstance(agg["score"], int)
    assert agg["accuracy"] == pytest.approx(0.5)
