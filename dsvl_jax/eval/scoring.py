"""Scores of generated answers: exact match, relaxed accuracy, multiple-choice letters, per category.

- `normalize_answer`: lower case, punctuation removed (a '.' between digits and thousands commas are
  kept as numbers: "3.5" stays 3.5, "1,000" becomes 1000), articles a/an/the removed, whitespace
  collapsed (SQuAD/VQA-style).
- exact match: the normalized prediction equals one normalized reference answer.
- relaxed accuracy (ChartQA): when the reference and the prediction both read as numbers ("12",
  "-3.5", "1,000", "45%", "$7"), |pred - ref| <= 5% of |ref| (exact when ref is 0); otherwise exact
  match.
- multiple choice: `parse_choice` reads the option letter of a generated answer (MMBench-style
  matching, below); correct when it equals the answer letter; an unreadable answer counts as wrong
  and is counted in `mc_unparsed`.

Per item, `correct` is the headline: exact match for open questions, the letter for multiple
choice; `accuracy` is its mean. `summarize` reports all metrics overall and per category.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence

RELAXED_TOLERANCE = 0.05
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)$")


def normalize_answer(s: str) -> str:
    s = _THOUSANDS.sub("", str(s).lower())
    s = _DECIMAL.sub("\0", s)  # protect decimal points from the punctuation pass
    s = _PUNCT.sub(" ", s).replace("\0", ".")
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, answers: Iterable[str]) -> bool:
    p = normalize_answer(prediction)
    return any(p == normalize_answer(a) for a in answers)


def to_number(s: str) -> float | None:
    """'12', '-3.5', '1,000', '45%', '$7', ' 3.0 ' -> float; anything else -> None."""
    t = str(s).strip().rstrip(".").replace(",", "")
    t = t.lstrip("$€£").rstrip("%").strip()
    return float(t) if _NUMBER.match(t) else None


def relaxed_match(
    prediction: str, answers: Iterable[str], tolerance: float = RELAXED_TOLERANCE
) -> bool:
    p = to_number(prediction)
    for a in answers:
        r = to_number(a)
        if p is not None and r is not None:
            if (p == r) if r == 0 else abs(p - r) <= tolerance * abs(r):
                return True
        elif normalize_answer(prediction) == normalize_answer(a):
            return True
    return False


def parse_choice(text: str, options: Sequence[tuple[str, str]]) -> str | None:
    """The option letter a generated answer names, or None when it names none or several.

    In order: the whole answer is one option's text; it starts with a letter ("B", "B.", "(B)",
    "B) ...", "B: ...") and names no other letter; "answer/option/choice (is) B"; exactly one option
    letter stands alone as a word; exactly one option's text occurs in the answer. Like MMBench's
    matcher, a leading article "A" reads as option A when A is an option.
    """
    letters = [k for k, _ in options]
    s = text.strip()
    if not s:
        return None
    norm = normalize_answer(s)
    texts = {k: normalize_answer(v) for k, v in options}
    same = [k for k, v in texts.items() if v and v == norm]
    if len(same) == 1:
        return same[0]
    alone = {w for w in re.findall(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", s) if w in letters}
    m = re.match(r"^\(?([A-Z])\)?(?=$|[\s.:)\],])", s)
    if m and m.group(1) in letters and alone <= {m.group(1)}:
        return m.group(1)
    m = re.search(
        r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Z])\)?(?![A-Za-z])", s, re.IGNORECASE
    )
    if m and m.group(1) in letters:
        return m.group(1)
    if len(alone) == 1:
        return alone.pop()
    inside = [
        k for k, v in texts.items() if v and re.search(r"(?<!\w)" + re.escape(v) + r"(?!\w)", norm)
    ]
    return inside[0] if len(inside) == 1 else None


def score(item, prediction: str) -> dict:
    """One item's record for the report (item: eval.items.EvalItem)."""
    rec = {
        "id": item.id,
        "category": item.category,
        "type": item.kind,
        "question": item.question,
        "prediction": prediction,
        "answers": list(item.answers),
    }
    if item.options:
        choice = parse_choice(prediction, item.options)
        rec.update(options=dict(item.options), choice=choice, correct=choice == item.answers[0])
    else:
        rec.update(
            exact=exact_match(prediction, item.answers),
            relaxed=relaxed_match(prediction, item.answers),
        )
        rec["correct"] = rec["exact"]
    return rec


def mean(xs) -> float | None:
    """The mean of a list of scores (bools count 0/1); None when there is nothing to average."""
    return sum(xs) / len(xs) if xs else None


def metrics(records: Sequence[dict]) -> dict:
    """Headline and per-kind metrics of scored records; metrics of a kind with no items are None."""
    open_ = [r for r in records if r["type"] == "open"]
    mc = [r for r in records if r["type"] == "mc"]
    return {
        "n": len(records),
        "accuracy": mean([r["correct"] for r in records]),
        "n_open": len(open_),
        "exact_match": mean([r["exact"] for r in open_]),
        "relaxed_accuracy": mean([r["relaxed"] for r in open_]),
        "n_mc": len(mc),
        "mc_accuracy": mean([r["correct"] for r in mc]),
        "mc_unparsed": sum(r["choice"] is None for r in mc),
    }


def summarize(records: Sequence[dict]) -> dict:
    """{"overall": metrics, "per_category": {category: metrics}} ("" = no category, shown as '-')."""
    cats: dict[str, list[dict]] = {}
    for r in records:
        cats.setdefault(r["category"] or "-", []).append(r)
    return {
        "overall": metrics(records),
        "per_category": {c: metrics(rs) for c, rs in sorted(cats.items())},
    }


def format_table(summary: dict) -> str:
    """A plain-text table: one row per category, then the overall row."""

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    rows = [(c, m) for c, m in summary["per_category"].items()] + [("OVERALL", summary["overall"])]
    width = max(8, *(len(c) for c, _ in rows))
    head = f"{'category':<{width}}  {'n':>5}  {'acc':>6}  {'exact':>6}  {'relaxed':>7}  {'mc_acc':>6}  {'unparsed':>8}"
    lines = [head, "-" * len(head)]
    for c, m in rows:
        lines.append(
            f"{c:<{width}}  {m['n']:>5}  {pct(m['accuracy']):>6}  {pct(m['exact_match']):>6}  "
            f"{pct(m['relaxed_accuracy']):>7}  {pct(m['mc_accuracy']):>6}  {m['mc_unparsed']:>8}"
        )
    return "\n".join(lines)
