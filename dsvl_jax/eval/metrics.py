"""Each benchmark's official metric, by name: how one answer is scored and how scores add up.

A `Metric` is (score(item, prediction) -> the item's report record, aggregate(records) -> {name:
value}). Records always hold id, category, type, question, prediction, answers and `correct` (bool)
plus the metric's own fields; aggregate returns `n` and values in [0, 1] (None when nothing to
average; the one exception is OCRBench's `score`, a count). The runner (eval/runner.py) applies
aggregate overall and per category. Each metric follows its benchmark's official script, as
reimplemented here (no dependency); where ours differs, the metric's docstring says how.

  name       benchmarks              record fields                  headline
  default    any                     exact/relaxed or choice        accuracy
  vqa        TextVQA, VQAv2          vqa_accuracy                   vqa_accuracy
  anls       DocVQA, InfographicVQA  anls                           anls
  relaxed    ChartQA                 relaxed                        relaxed_accuracy
  pope       POPE                    label, parsed                  f1
  circular   MMBench (CircularEval)  group, choice                  circular_accuracy
  mathvista  MathVista               extracted, normalized          accuracy
  mmmu       MMMU                    parsed                         accuracy
  ocrbench   OCRBench                (correct only)                 score (int, out of 1000)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

from dsvl_jax.eval import scoring
from dsvl_jax.eval.items import LETTERS, EvalItem


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    score: Callable[[EvalItem, str], dict]
    aggregate: Callable[[Sequence[dict]], dict]
    headline: str = "accuracy"  # the value a summary table shows first


# --- shared helpers ------------------------------------------------------------------------------


def record(item: EvalItem, prediction: str, correct: bool, **fields) -> dict:
    return {
        "id": item.id,
        "category": item.category,
        "type": item.kind,
        "question": item.question,
        "prediction": prediction,
        "answers": list(item.answers),
        **fields,
        "correct": bool(correct),
    }


def accuracy(records: Sequence[dict]) -> dict:
    return {"n": len(records), "accuracy": scoring.mean([r["correct"] for r in records])}


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; each costs 1), two rows of the DP table."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


# --- VQA accuracy (TextVQA, VQAv2) ---------------------------------------------------------------
# Tables and steps of the official answer normalisation: the VQA challenge's vqaEval.py
# (PythonEvaluationTools), as packaged in EvalAIAnswerProcessor by the TextVQA / M4C evaluator.
# Contractions (missing apostrophe -> spelled out); the official odd entries are kept as they are.
_CONTRACTION_TEXT = """aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't
    couldn'tve=couldn't've couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't
    hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd
    hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's Id've=I'd've
    I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll
    let's=let's maam=ma'am mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've
    mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock
    oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
    shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't
    shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
    somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
    somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've
    someonell=someone'll someones=someone's somethingd=something'd somethingd've=something'd've
    something'dve=something'd've somethingll=something'll thats=that's thered=there'd
    thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
    theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've
    twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't
    whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd
    wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll
    whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've
    wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll
    y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd
    youd've=you'd've you'dve=you'd've youll=you'll youre=you're youve=you've"""
_CONTRACTIONS = dict(pair.split("=") for pair in _CONTRACTION_TEXT.split())
_DIGIT_WORDS = "zero one two three four five six seven eight nine ten"
_NUMBER_WORDS = {"none": "0", **{w: str(i) for i, w in enumerate(_DIGIT_WORDS.split())}}
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<"]
_VQA_PUNCT += ["@", "`", ",", "?", "!"]
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a (mistyped) lookahead, so in
# effect every '.' not followed by a digit is removed ("5." -> "5", "3.5" kept). Kept as is.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")


def vqa_normalize(s: str) -> str:
    """The official VQA answer processing: lower case, drop ',' '?', split "'s"; punctuation
    removed (glued when the text has "p " / " p" or a digit comma, else replaced by a space);
    periods not before a digit removed; number words -> digits; articles dropped; contractions."""
    s = s.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    s = s.replace("\n", " ").replace("\t", " ").strip()
    out = s
    for p in _VQA_PUNCT:
        glue = p + " " in s or " " + p in s or _COMMA_STRIP.search(s) is not None
        out = out.replace(p, "" if glue else " ")
    out = _PERIOD_STRIP.sub("", out)
    words = [_NUMBER_WORDS.get(w, w) for w in out.lower().split()]
    words = [w for w in words if w not in ("a", "an", "the")]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Mean over the leave-one-out subsets of the human answers of min(1, #matches / 3).

    With the usual 10 answers, k matching humans give 1.0 for k >= 4, 0.9 for 3, 0.6 for 2, 0.3 for
    1. A lone reference (not a VQA layout) scores 1 on a match instead of the formula's 0."""
    gts = [vqa_normalize(a) for a in answers]
    p = vqa_normalize(prediction)
    if len(gts) < 2:
        return float(p in gts)
    hits = [g == p for g in gts]
    total = sum(hits)
    return sum(min(1.0, (total - h) / 3) for h in hits) / len(gts)


def _score_vqa(item: EvalItem, prediction: str) -> dict:
    """Both sides are normalised (the TextVQA evaluator and lmms-eval do so). The VQAv2 script
    itself normalises only when the 10 answers disagree, and then only the punctuation of the
    answers, since its stored answers are already processed. `correct`: at least one human gave
    this answer (vqa_accuracy > 0), so `accuracy` is the any-annotator match rate."""
    acc = vqa_accuracy(prediction, item.answers)
    return record(item, prediction, acc > 0, vqa_accuracy=acc)


def _aggregate_vqa(records: Sequence[dict]) -> dict:
    return {**accuracy(records), "vqa_accuracy": scoring.mean([r["vqa_accuracy"] for r in records])}


# --- ANLS (DocVQA, InfographicVQA) ---------------------------------------------------------------
ANLS_THRESHOLD = 0.5


def anls(prediction: str, answers: Sequence[str], threshold: float = ANLS_THRESHOLD) -> float:
    """max over answers of 1 - NL, NL = edit distance / the longer length of the lowercased,
    stripped strings; 0 when NL >= threshold (the ST-VQA/DocVQA definition; lmms-eval keeps credit
    at exactly NL = 0.5). Two empty strings are equal (NL 0)."""
    p = prediction.strip().lower()
    best = 0.0
    for a in answers:
        g = a.strip().lower()
        nl = levenshtein(p, g) / max(len(p), len(g)) if (p or g) else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def _score_anls(item: EvalItem, prediction: str) -> dict:
    """`correct`: some answer within the threshold (anls > 0)."""
    s = anls(prediction, item.answers)
    return record(item, prediction, s > 0, anls=s)


def _aggregate_anls(records: Sequence[dict]) -> dict:
    return {**accuracy(records), "anls": scoring.mean([r["anls"] for r in records])}


# --- relaxed accuracy (ChartQA) ------------------------------------------------------------------


def _chart_number(s: str) -> float | None:
    v = scoring.to_number(s)
    if v is not None and s.strip().rstrip(".").endswith("%"):
        v /= 100  # as pix2struct's relaxed_correctness: "45%" reads 0.45
    return v


def relaxed_correct(prediction: str, answers: Sequence[str]) -> bool:
    """ChartQA's relaxed accuracy (the paper; pix2struct's `relaxed_correctness`): when both read as
    numbers, |pred - ref| <= 5% of |ref|; otherwise the case-insensitive strings are equal.

    Unlike scoring.relaxed_match, non-numbers are compared verbatim (no punctuation or article
    removal) and "x%" is x / 100. Differences kept from scoring.to_number: thousands commas, '$',
    a trailing '.' still read as numbers (pix2struct's float() refuses them), and a reference of 0
    needs an exact 0 (pix2struct falls back to string equality there)."""
    p = _chart_number(prediction)
    for a in answers:
        r = _chart_number(a)
        if p is not None and r is not None:
            if (p == r) if r == 0 else abs(p - r) <= scoring.RELAXED_TOLERANCE * abs(r):
                return True
        elif prediction.strip().lower() == a.strip().lower():
            return True
    return False


def _score_relaxed(item: EvalItem, prediction: str) -> dict:
    ok = relaxed_correct(prediction, item.answers)
    return record(item, prediction, ok, relaxed=ok)


def _aggregate_relaxed(records: Sequence[dict]) -> dict:
    acc = accuracy(records)
    return {**acc, "relaxed_accuracy": acc["accuracy"]}


# --- POPE -----------------------------------------------------------------------------------------


def pope_parse(text: str) -> str:
    """POPE's evaluate.py rule, reproduced exactly: keep the text before the first '.', drop ',',
    split on single spaces; "no" when a word is exactly "No", "no" or "not", else "yes" (so "NO" or
    "No\\n..." read as yes there too)."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def _score_pope(item: EvalItem, prediction: str) -> dict:
    label = str(item.meta.get("label", item.answers[0] if item.answers else "")).strip().lower()
    parsed = pope_parse(prediction)
    return record(item, prediction, parsed == label, label=label, parsed=parsed)


def _aggregate_pope(records: Sequence[dict]) -> dict:
    """Positive class "yes", as POPE. The papers' POPE number (LLaVA-1.5's table, reused by the
    DeepSeek-VL comparison) is F1, hence the headline; POPE's three splits are averaged there, so
    read the per-category rows (one per split) rather than OVERALL, which pools them."""
    tp = sum(r["parsed"] == "yes" and r["label"] == "yes" for r in records)
    fp = sum(r["parsed"] == "yes" and r["label"] != "yes" for r in records)
    fn = sum(r["parsed"] != "yes" and r["label"] == "yes" for r in records)
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        **accuracy(records),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": scoring.mean([r["parsed"] == "yes" for r in records]),
    }


# --- CircularEval (MMBench) -----------------------------------------------------------------------


def _score_circular(item: EvalItem, prediction: str) -> dict:
    """item.meta["group"]: the original question shared by its rotations (default: the item alone).
    The letter comes from scoring.parse_choice; MMBench's ChatGPT fallback for unmatched answers is
    not run, so an unreadable answer is wrong."""
    choice = scoring.parse_choice(prediction, item.options)
    group = str(item.meta.get("group", item.id))
    ok = choice is not None and choice == item.answers[0]
    return record(item, prediction, ok, group=group, choice=choice)


def _aggregate_circular(records: Sequence[dict]) -> dict:
    """A question counts only if every one of its rotations is answered right."""
    groups: dict[str, bool] = {}
    for r in records:
        groups[r["group"]] = groups.get(r["group"], True) and r["correct"]
    return {
        **accuracy(records),
        "circular_accuracy": scoring.mean(list(groups.values())),
        "n_groups": len(groups),
    }


# --- MathVista ------------------------------------------------------------------------------------
_NUM = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")


def _last_number(text: str) -> str | None:
    found = _NUM.findall(text)
    return found[-1].replace(",", "") if found else None


def mathvista_extract(prediction: str, meta: dict) -> str:
    """Rule-based answer extraction. The official pipeline asks GPT-4 to extract the answer from the
    response (after a few quick rules); here: multi_choice: the exact text of a choice, else the
    letter scoring.parse_choice reads, else the whole answer (normalisation then picks the choice
    nearest in edit distance); integer / float: the last number in the text; text / list: the
    stripped text."""
    s = prediction.strip()
    if meta.get("question_type") == "multi_choice":
        choices = [str(c) for c in meta.get("choices") or []]
        if s in choices:
            return s
        letter = scoring.parse_choice(s, list(zip(LETTERS, choices)))
        return letter or s
    if meta.get("answer_type") in ("integer", "float"):
        return _last_number(s) or ""
    return s


def mathvista_normalize(extraction: str, meta: dict) -> str | None:
    """The official `normalize_extracted_answer`: multi_choice -> a choice's text ("(B)" or "B" by
    position, else the choice nearest in edit distance); integer -> str(int(float(x))); float ->
    str(round(float(x), precision)) (precision None: no rounding); list / text -> str(x). None when
    a number does not parse."""
    if meta.get("question_type") == "multi_choice":
        choices = [str(c) for c in meta.get("choices") or []]
        if not choices:
            return None
        x = extraction.strip()
        paren = re.findall(r"\(([a-zA-Z])\)", x)
        if paren:
            x = paren[0].upper()
        letters = list(LETTERS[: len(choices)])
        if x in letters:
            return choices[letters.index(x)]
        dists = [levenshtein(x, c) for c in choices]
        return choices[dists.index(min(dists))]
    kind = meta.get("answer_type")
    try:
        if kind == "integer":
            return str(int(float(extraction)))
        if kind == "float":
            prec = meta.get("precision")
            return str(float(extraction) if prec is None else round(float(extraction), int(prec)))
    except (ValueError, OverflowError):
        return None
    return str(extraction)


def _score_mathvista(item: EvalItem, prediction: str) -> dict:
    """Correct as the official `safe_equal`: the normalised extraction equals the answer string."""
    extracted = mathvista_extract(prediction, item.meta)
    norm = mathvista_normalize(extracted, item.meta)
    ok = norm is not None and bool(item.answers) and norm == item.answers[0]
    return record(item, prediction, ok, extracted=extracted, normalized=norm)


# --- MMMU -----------------------------------------------------------------------------------------


def mmmu_parse_choice(response: str, options: Sequence[tuple[str, str]]) -> str | None:
    """MMMU's `parse_multi_choice_response`: "(A)" anywhere; else " A " as a word; else (our
    addition, as lmms-eval) " A." ; else, for answers over 5 words, an option's text; several
    candidates -> the one that occurs last. MMMU picks a random letter when nothing is found; we
    return None (wrong), so scores do not depend on a seed."""
    letters = [k for k, _ in options]
    index2ans = dict(options)
    for ch in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(ch)
    response = f" {response} "
    kind = "paren"
    cands = [k for k in letters if f"({k})" in response]
    if not cands:
        kind = "word"
        cands = [k for k in letters if f" {k} " in response]
    if not cands:
        kind = "dot"
        cands = [k for k in letters if f" {k}." in response]
    if not cands and len(response.split()) > 5:
        kind = "text"
        cands = [k for k, v in options if v.lower() in response.lower()]
    if len(cands) <= 1:
        return cands[0] if cands else None
    key = {"paren": "({})", "word": " {} ", "dot": " {}."}
    if kind == "text":
        pos = [response.lower().rfind(index2ans[k].lower()) for k in cands]
    else:
        pos = [response.rfind(key[kind].format(k)) for k in cands]
    return cands[pos.index(max(pos))]


_MMMU_NUMBERS = [
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),  # with thousands commas
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),  # scientific
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])"),  # plain
]


def _mmmu_norm(s: str) -> list:
    """MMMU's `normalize_str`: a number -> [float rounded to 2 decimals]; a one-character string
    -> [" c", "c "] (no trivial substring matches); else [lowercased]."""
    s = s.strip()
    try:
        return [round(float(s.replace(",", "")), 2)]
    except ValueError:
        s = s.lower()
        return [" " + s, s + " "] if len(s) == 1 else [s]


def mmmu_parse_open(response: str) -> list:
    """MMMU's `parse_open_response`: per line, the shortest tail after a key phrase ("could be",
    "so", "is", "thus", "therefore", "final", "answer", "result"; "=" on the last line), or the
    whole text; plus every number in them; each normalised by `normalize_str`. (The official
    sentence split looks for '. ' before a capital after lowercasing, so only newlines split.)"""
    resp = response.strip().strip(".").lower()
    parts = re.split(r"\.\s(?=[A-Z])|\n", resp)
    keys = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
    found = []
    for i, part in enumerate(parts):
        shortest = ""  # the official loop, whose quirks (an empty tail is replaced) are kept
        for key in [*keys, "="] if i == len(parts) - 1 else keys:
            if key in part:
                tail = part.split(key)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest not in (":", ",", ".", "!", "?", ";", "'"):
            found.append(shortest)
    found = found or [resp]
    cands = list(found)
    for f in found:
        for pat in _MMMU_NUMBERS:
            cands += pat.findall(f)
    out: list = []
    for c in cands:
        out += [n for n in _mmmu_norm(c) if n not in out]
    return out


def mmmu_open_correct(preds: Sequence, answers: Sequence[str]) -> bool:
    """MMMU's `eval_open`: a parsed number equals a gold number, or a gold string occurs inside a
    parsed string."""
    gold = [g for a in answers for g in _mmmu_norm(a)]
    for p in preds:
        if isinstance(p, str):
            if any(isinstance(g, str) and g in p for g in gold):
                return True
        elif p in gold:
            return True
    return False


def _score_mmmu(item: EvalItem, prediction: str) -> dict:
    if item.options:
        parsed = mmmu_parse_choice(prediction, item.options)
        ok = parsed is not None and parsed in item.answers
        return record(item, prediction, ok, parsed=parsed)
    parsed = mmmu_parse_open(prediction)
    return record(item, prediction, mmmu_open_correct(parsed, item.answers), parsed=parsed)


# --- OCRBench -------------------------------------------------------------------------------------
_HME = ("hme100k", "handwritten mathematical expression recognition")


def ocrbench_correct(prediction: str, answers: Sequence[str], hme: bool = False) -> bool:
    """OCRBench's rule: a ground-truth answer, lowercased and stripped, occurs in the lowercased
    prediction; for HME100k (formulas) spaces are removed on both sides and case is kept, as the
    official script does."""
    p = prediction.strip().replace("\n", " ")
    if hme:
        p = p.replace(" ", "")
        return any(a.strip().replace("\n", " ").replace(" ", "") in p for a in answers)
    return any(a.lower().strip().replace("\n", " ") in p.lower() for a in answers)


def _score_ocrbench(item: EvalItem, prediction: str) -> dict:
    """HME100k items: item.meta["dataset"] or the category names it."""
    hme = any(str(x).strip().lower() in _HME for x in (item.category, item.meta.get("dataset")))
    return record(item, prediction, ocrbench_correct(prediction, item.answers, hme))


def _aggregate_ocrbench(records: Sequence[dict]) -> dict:
    """`score` is the number of correct items (an int; OCRBench reports it out of its 1000)."""
    return {**accuracy(records), "score": sum(bool(r["correct"]) for r in records)}


METRICS: dict[str, Metric] = {
    "default": Metric("default", scoring.score, scoring.metrics),
    "vqa": Metric("vqa", _score_vqa, _aggregate_vqa, "vqa_accuracy"),
    "anls": Metric("anls", _score_anls, _aggregate_anls, "anls"),
    "relaxed": Metric("relaxed", _score_relaxed, _aggregate_relaxed, "relaxed_accuracy"),
    "pope": Metric("pope", _score_pope, _aggregate_pope, "f1"),
    "circular": Metric("circular", _score_circular, _aggregate_circular, "circular_accuracy"),
    "mathvista": Metric("mathvista", _score_mathvista, accuracy),
    "mmmu": Metric("mmmu", _score_mmmu, accuracy),
    "ocrbench": Metric("ocrbench", _score_ocrbench, _aggregate_ocrbench, "score"),
}
