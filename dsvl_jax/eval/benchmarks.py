"""DeepSeek-VL's Table 5-6 benchmarks, each read in the layout its authors ship -> `EvalSet`.

`load_<name>(path, images=None, limit=None)`; `READERS[name] = (loader, metric name)`. `path` is the
data file or the benchmark's folder (the shipped file names are looked up inside). `images` is the
image folder where a layout keeps pictures apart (default: where the release puts them, beside the
data). `EvalSet.format` names the layout read.

  name        metric     format             layout read
  mmbench     circular   vlmevalkit_tsv     VLMEvalKit MMBench_DEV_EN*.tsv
  mmbench_cn  circular   vlmevalkit_tsv     VLMEvalKit MMBench_DEV_CN*.tsv
  seed        default    vlmevalkit_tsv     VLMEvalKit SEEDBench_IMG*.tsv, or
                         seed_json          SEED-Bench.json + SEED-Bench-image/<data_id>
  scienceqa   default    scienceqa_json     problems.json + pid_splits.json "test" +
                                            images/<split>/<pid>/image.png
  ai2d        default    vlmevalkit_tsv     VLMEvalKit AI2D_TEST*.tsv, or
                         hf_parquet         *.parquet {question, options, answer index, image}
  mmmu        mmmu       mmmu_parquet       HF MMMU/MMMU <Subject>/validation-*.parquet
  pope        pope       pope_jsonl         coco_pope_{random,popular,adversarial}.json(l) + val2014
  textvqa     vqa        textvqa_json       TextVQA_0.5.1_val.json + train_images/<image_id>.jpg
  docvqa      anls       docvqa_json        val_v1.0.json + documents/
  chartqa     relaxed    chartqa_json       test_human.json, test_augmented.json + png/
  mathvista   mathvista  mathvista_json     testmini.json {pid: problem} + images/, or
                         mathvista_parquet  HF testmini-*.parquet (decoded_image bytes)
  ocrbench    ocrbench   ocrbench_json      OCRBench.json + OCRBench_Images/

Item fields the metrics read: MMBench meta["group"] (the original question's index: VLMEvalKit's
circular rotations have index >= 1e6 and come from index % 1e6; a `g` column wins); POPE
answers=(label,), meta["label"]; MathVista meta question_type, answer_type, precision, choices, unit
(the prompt is MathVista's `query`, so `options` stay empty); MMMU meta question_type; OCRBench
meta["dataset"] (HME100k is scored apart).

MMMU: each `<image k>` in the question and options becomes IMAGE_TAG and the images follow the tags
in order of appearance (question, then options A, B, ...). An image referenced twice is included
twice, since the model sees one picture per tag. An image column that is set but never referenced
gets its tag at the start of the question (column order), ahead of the referenced ones.

Bad rows follow items.py: never dropped silently, each becomes a `Skipped` (id, where, reason,
detail) with where = file:line (text), file:[i] (JSON list), file:<key> (JSON dict of records) or
file:<row> (parquet). Filtered on purpose (not bad): SEED questions whose data_type is not "image".
One module for all twelve readers (over the ~400-line aim): each is a short record -> EvalItem
function on shared plumbing, and READERS stays the one table the CLI reads.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from dsvl_jax import jsonfile
from dsvl_jax.data.records import IMAGE_TAG
from dsvl_jax.eval.items import (
    LETTERS,
    EvalItem,
    EvalSet,
    ItemError,
    Skipped,
    _blank,
    _check_image_header,
    _item,
    _json_records,
    _mc_answer,
    _options,
    _text,
    _tsv_records,
    resolve_image,
)

Rows = Iterator[tuple[str, str, Callable[[], EvalItem]]]  # (where, id for Skipped, build)
_CIRCULAR = 1_000_000  # VLMEvalKit: rotation k of question i has index i + k * 1e6
_MMMU_TAG = re.compile(r"<image (\d+)>")
_MMMU_IMAGES = 7
_POPE_VARIANTS = ("random", "popular", "adversarial")


# --- shared plumbing ------------------------------------------------------------------------------


def _collect(name: str, fmt: str, path: Any, rows: Iterable, limit: int | None) -> EvalSet:
    """Build items row by row (images checked here, so only up to `limit` rows are opened)."""
    items: list[EvalItem] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for where, rid, build in rows:
        if limit is not None and len(items) + len(skipped) >= limit:
            break
        try:
            item = build()
            if item.id in seen:
                raise ItemError("duplicate_id", f"id {item.id!r} appears more than once")
        except ItemError as e:
            skipped.append(Skipped(rid, where, e.reason, e.detail))
            continue
        seen.add(item.id)
        items.append(item)
    return EvalSet(str(path), fmt, items, skipped, benchmark=name, metric=READERS[name][1])


def _raise(err: ItemError) -> EvalItem:
    raise err


def _thunks(recs: Iterable[tuple[str, str, Any]], make: Callable, *args: Any) -> Rows:
    """(where, id, record) -> (where, id, build); a record that is not an object is bad_json."""
    for where, rid, rec in recs:
        if isinstance(rec, ItemError):
            yield where, rid, functools.partial(_raise, rec)
        elif not isinstance(rec, dict):
            err = ItemError("bad_json", f"expected an object, got {type(rec).__name__}")
            yield where, rid, functools.partial(_raise, err)
        else:
            yield where, rid, functools.partial(make, rec, rid, where, *args)


def _rid(rec: Any, key: str, default: str = "") -> str:
    return (_text(rec.get(key)) if isinstance(rec, dict) else "") or default


def _need(rec: dict, key: str) -> str:
    v = _text(rec.get(key))
    if not v:
        raise ItemError("missing_field", f"no {key!r}")
    return v


def _find(path: str, patterns: tuple[str, ...], what: str, many: bool = False) -> list[Path]:
    """`path` itself when a file, else the files of the first pattern that matches in the folder
    (several only when `many` or for parquet shards)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{what} data {path} not found")
    for pat in patterns:
        hits = sorted(x for x in p.glob(pat) if x.is_file())
        if len(hits) > 1 and not (many or pat.endswith(".parquet")):
            names = [str(h.relative_to(p)) for h in hits]
            raise ValueError(f"{path}: several {what} files match {pat!r}: {names}; pass one file")
        if hits:
            return hits
    raise FileNotFoundError(
        f"{path}: no {what} data in this folder (expected {' or '.join(patterns)})"
    )


def _root(images: str | None, base: Path, *subdirs: str) -> Path:
    """--images, else the first shipped image folder under `base` that exists, else `base`."""
    if images:
        if not Path(images).is_dir():
            raise FileNotFoundError(f"--images {images}: not a directory")
        return Path(images)
    return next((base / s for s in subdirs if (base / s).is_dir()), base)


def _load_json(path: Path) -> Any:
    return jsonfile.read(path, ValueError)


def _json_list(path: Path, data: Any, key: str, what: str) -> Iterator[tuple[str, str, Any]]:
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected {what} to be a JSON list, got {type(data).__name__}")
    for i, rec in enumerate(data):
        yield f"{path}:[{i}]", _rid(rec, key), rec


def _file_image(root: Path, rel: str, *alts: str) -> str | bytes:
    """An image file under root (first of rel, alts that exists), header checked."""
    for c in (rel, *alts):
        if c and (root / c).is_file():
            return resolve_image(c, root)
    raise ItemError("image_missing", f"image file {root / rel} not found")


def _image_cell(v: Any, root: Path, what: str) -> str | bytes:
    """A parquet image cell: {bytes, path} struct (bytes win, as HF writes both), bytes, a path or
    base64 string."""
    if isinstance(v, dict):
        if v.get("bytes"):
            v = v["bytes"]
        elif not _blank(v.get("path")):
            return _file_image(root, _text(v["path"]))
        else:
            raise ItemError("image_missing", f"{what} has neither bytes nor a path")
    if isinstance(v, (bytes, bytearray)):
        try:
            _check_image_header(bytes(v))
        except ItemError as e:
            raise ItemError(e.reason, f"{what}: {e.detail}") from None
        return bytes(v)
    img = resolve_image(v, root)
    if img is None:
        raise ItemError("image_missing", f"{what} is empty")
    return img


def _parquet(files: list[Path], columns: tuple[str, ...], need: tuple[str, ...], key: str):
    """(file:row, id, row as Python values) over parquet files, reading `columns` in batches."""
    import pyarrow.parquet as pq

    n = 0
    for f in files:
        with pq.ParquetFile(f) as pf:
            have = set(pf.schema_arrow.names)
            if missing := [c for c in need if c not in have]:
                raise ValueError(f"{f}: no column(s) {missing}; the file has {sorted(have)}")
            row = 0
            for batch in pf.iter_batches(64, columns=[c for c in columns if c in have]):
                for rec in batch.to_pylist():
                    yield f"{f}:{row}", _rid(rec, key, str(n)), rec
                    row, n = row + 1, n + 1


def _letters(choices: Any, answer: Any) -> tuple[list[tuple[str, str]], str]:
    """A list of choices + the answer's index -> options and the answer letter."""
    if not isinstance(choices, (list, tuple)) or len(choices) < 2:
        raise ItemError("missing_field", f"choices must be a list of 2+ options, got {choices!r}")
    opts = _options(list(choices))
    try:
        k = int(_text(answer))
    except ValueError:
        k = -1
    if not 0 <= k < len(opts):
        raise ItemError("bad_answer", f"answer {answer!r} is not an index into {len(opts)} choices")
    return opts, LETTERS[k]


# --- VLMEvalKit TSV: MMBench, MMBench-CN, SEED-Bench-IMG, AI2D ------------------------------------


def _group(rec: dict) -> str:
    g, idx = _text(rec.get("g")), _text(rec.get("index"))
    if g:
        return g
    return str(int(idx) % _CIRCULAR) if idx.isdigit() and int(idx) >= _CIRCULAR else idx


def _tsv_item(rec: dict, rid: str, where: str, root: Path, circular: bool) -> EvalItem:
    item = _item(rec, root, where, default_id=rid or where)
    if not circular:
        return item
    meta = {"group": _group(rec), "l2_category": _text(rec.get("l2-category"))}
    return dataclasses.replace(item, meta=meta)


def _tsv(name: str, f: Path, images: str | None, limit: int | None, circular=False) -> EvalSet:
    recs = ((w, _rid(rec, "index"), rec) for w, rec, _ in _tsv_records(f))
    rows = _thunks(recs, _tsv_item, _root(images, f.parent), circular)
    return _collect(name, "vlmevalkit_tsv", f, rows, limit)


def load_mmbench(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    (f,) = _find(path, ("MMBench_DEV_EN*.tsv",), "mmbench")
    return _tsv("mmbench", f, images, limit, circular=True)


def load_mmbench_cn(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    (f,) = _find(path, ("MMBench_DEV_CN*.tsv",), "mmbench_cn")
    return _tsv("mmbench_cn", f, images, limit, circular=True)


# --- SEED-Bench -----------------------------------------------------------------------------------


def _seed_item(rec: dict, rid: str, where: str, root: Path, types: dict) -> EvalItem:
    question, answer, data_id = _need(rec, "question"), _need(rec, "answer"), _need(rec, "data_id")
    opts = _options({x.upper(): rec.get(f"choice_{x}") for x in "abcd" if f"choice_{x}" in rec})
    if len(opts) < 2:
        raise ItemError("missing_field", f"{len(opts)} of choice_a..choice_d set, need 2+")
    qtype = rec.get("question_type_id")
    return EvalItem(
        id=_need(rec, "question_id"),
        question=question,
        answers=(_mc_answer(answer, opts),),
        options=tuple(opts),
        category=types.get(_text(qtype), _text(qtype)),
        images=(_file_image(root, data_id, data_id + ".jpg"),),
        where=where,
    )


def load_seed(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    (f,) = _find(path, ("SEED-Bench.json", "SEEDBench_IMG*.tsv"), "seed")
    if f.suffix.lower() == ".tsv":
        return _tsv("seed", f, images, limit)
    data = _load_json(f)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise ValueError(f'{f}: expected SEED-Bench JSON {{"questions": [...], "question_type"}}')
    types = {_text(v): k for k, v in (data.get("question_type") or {}).items()}
    recs = (
        r
        for r in _json_list(f, data["questions"], "question_id", "questions")
        if not isinstance(r[2], dict) or r[2].get("data_type", "image") == "image"
    )
    rows = _thunks(recs, _seed_item, _root(images, f.parent, "SEED-Bench-image"), types)
    return _collect("seed", "seed_json", f, rows, limit)


# --- ScienceQA ------------------------------------------------------------------------------------


def _scienceqa_item(rec: dict, rid: str, where: str, root: Path) -> EvalItem:
    opts, letter = _letters(rec.get("choices"), rec.get("answer"))
    image = _text(rec.get("image"))
    split = _text(rec.get("split")) or "test"
    return EvalItem(
        id=rid,
        question=_need(rec, "question"),
        answers=(letter,),
        options=tuple(opts),
        category=_text(rec.get("subject")),
        images=(_file_image(root, f"{split}/{rid}/{image}"),) if image else (),
        hint=_text(rec.get("hint")),
        where=where,
        meta={"grade": _text(rec.get("grade")), "topic": _text(rec.get("topic"))},
    )


def load_scienceqa(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    (f,) = _find(
        path, ("problems.json", "*/problems.json", "data/scienceqa/problems.json"), "scienceqa"
    )
    problems = _load_json(f)
    if not isinstance(problems, dict):
        raise ValueError(f"{f}: expected ScienceQA problems.json, a JSON object {{pid: problem}}")
    splits = f.parent / "pid_splits.json"
    if splits.is_file():
        pids = _load_json(splits).get("test")
        if not isinstance(pids, list):
            raise ValueError(f"{splits}: no 'test' list of pids")
    else:  # no pid_splits.json: the problems' own split field
        pids = [k for k, v in problems.items() if isinstance(v, dict) and v.get("split") == "test"]
    missing = ItemError("missing_field", "pid listed in pid_splits.json is not in problems.json")
    recs = ((f"{f}:{p}", str(p), problems.get(str(p), missing)) for p in pids)
    rows = _thunks(recs, _scienceqa_item, _root(images, f.parent, "images"))
    return _collect("scienceqa", "scienceqa_json", f, rows, limit)


# --- AI2D -----------------------------------------------------------------------------------------


def _ai2d_item(rec: dict, rid: str, where: str, root: Path) -> EvalItem:
    opts, letter = _letters(rec.get("options"), rec.get("answer"))
    if rec.get("image") is None:
        raise ItemError("missing_field", "no 'image'")
    return EvalItem(
        id=rid,
        question=_need(rec, "question"),
        answers=(letter,),
        options=tuple(opts),
        images=(_image_cell(rec["image"], root, "image"),),
        where=where,
    )


def load_ai2d(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    files = _find(path, ("AI2D_TEST*.tsv", "**/*.parquet"), "ai2d")
    if files[0].suffix.lower() == ".tsv":
        return _tsv("ai2d", files[0], images, limit)
    cols = ("id", "question", "options", "answer", "image")
    recs = _parquet(files, cols, ("question", "options", "answer", "image"), "id")
    rows = _thunks(recs, _ai2d_item, _root(images, files[0].parent))
    return _collect("ai2d", "hf_parquet", path, rows, limit)


# --- MMMU -----------------------------------------------------------------------------------------


def _mmmu_item(rec: dict, rid: str, where: str, root: Path) -> EvalItem:
    question, answer = _need(rec, "question"), _need(rec, "answer")
    qtype = _text(rec.get("question_type")) or "multiple-choice"
    raw = rec.get("options")
    try:
        choices = ast.literal_eval(raw) if isinstance(raw, str) and raw.strip() else raw or []
    except (ValueError, SyntaxError) as e:
        raise ItemError("bad_json", f"options {raw!r} is not a Python list literal ({e})") from None
    if not isinstance(choices, (list, tuple)):
        raise ItemError("bad_json", f"options {raw!r} is not a list")
    order: list[int] = []  # image numbers in the order their tags appear

    def tags(text: str) -> str:
        def sub(m: re.Match) -> str:
            order.append(int(m.group(1)))
            return IMAGE_TAG

        return _MMMU_TAG.sub(sub, text)

    question = tags(question)
    opts = [(k, tags(v)) for k, v in _options(list(choices))] if qtype != "open" else []
    cells = {k: rec.get(f"image_{k}") for k in range(1, _MMMU_IMAGES + 1)}
    for k in order:
        if cells.get(k) is None:
            raise ItemError("image_missing", f"<image {k}> is referenced but image_{k} is empty")
    extra = [k for k, v in cells.items() if v is not None and k not in order]
    question = (IMAGE_TAG + "\n") * len(extra) + question
    decoded = {k: _image_cell(cells[k], root, f"image_{k}") for k in set(extra + order)}
    if qtype != "open":
        if len(opts) < 2:
            raise ItemError("bad_answer", f"{len(opts)} option(s); multiple choice needs 2+")
        answers: tuple[str, ...] = (_mc_answer(answer, opts),)
    else:  # an open answer may be a list literal of accepted answers
        try:
            lit = ast.literal_eval(answer) if answer.startswith("[") else None
        except (ValueError, SyntaxError):
            lit = None
        answers = tuple(_text(a) for a in lit) if isinstance(lit, list) and lit else (answer,)
    iid = _need(rec, "id")
    return EvalItem(
        id=iid,
        question=question,
        answers=answers,
        options=tuple(opts),
        category="_".join(iid.split("_")[1:-1]) or _text(rec.get("subfield")),
        images=tuple(decoded[k] for k in extra + order),
        where=where,
        meta={
            "question_type": qtype,
            "subfield": _text(rec.get("subfield")),
            "topic_difficulty": _text(rec.get("topic_difficulty")),
        },
    )


def load_mmmu(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    files = _find(path, ("**/validation-*.parquet",), "mmmu")
    img_cols = tuple(f"image_{k}" for k in range(1, _MMMU_IMAGES + 1))
    cols = ("id", "question", "options", "answer", "question_type", "subfield", "topic_difficulty")
    recs = _parquet(files, cols + img_cols, ("id", "question", "options", "answer"), "id")
    rows = _thunks(recs, _mmmu_item, _root(images, files[0].parent))
    return _collect("mmmu", "mmmu_parquet", path, rows, limit)


# --- POPE -----------------------------------------------------------------------------------------


def _pope_item(rec: dict, rid: str, where: str, root: Path, variant: str) -> EvalItem:
    qid, question = _need(rec, "question_id"), _need(rec, "text")
    label = _need(rec, "label").lower()
    if label not in ("yes", "no"):
        raise ItemError("bad_answer", f"label {label!r} is not yes / no")
    return EvalItem(
        id=f"{variant}/{qid}",
        question=question,
        answers=(label,),
        category=variant,
        images=(_file_image(root, _need(rec, "image")),),
        where=where,
        meta={"label": label},
    )


def _variant(f: Path, names: tuple[str, ...]) -> str:
    return next((v for v in names if v in f.stem.lower()), f.stem)


def load_pope(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    files = _find(path, ("coco_pope_*.json*", "**/coco_pope_*.json*"), "pope", many=True)
    rank = {v: i for i, v in enumerate(_POPE_VARIANTS)}
    files.sort(key=lambda f: rank.get(_variant(f, _POPE_VARIANTS), len(rank)))
    root = _root(images, files[0].parent, "val2014")

    def rows() -> Rows:
        for f in files:
            v = _variant(f, _POPE_VARIANTS)
            recs = ((w, f"{v}/{_rid(r, 'question_id')}", e or r) for w, r, e in _json_records(f))
            yield from _thunks(recs, _pope_item, root, v)

    return _collect("pope", "pope_jsonl", path, rows(), limit)


# --- TextVQA, DocVQA, ChartQA, OCRBench -----------------------------------------------------------


def _data_list(f: Path, key: str) -> Iterator[tuple[str, str, Any]]:
    data = _load_json(f)
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f'{f}: expected {{"data": [...]}}')
    return _json_list(f, data["data"], key, '"data"')


def _answer_list(rec: dict, key: str = "answers") -> tuple[str, ...]:
    raw = rec.get(key)
    out = tuple(_text(a) for a in (raw if isinstance(raw, list) else [raw]) if not _blank(a))
    if not out:
        raise ItemError("missing_field", f"no {key!r}")
    return out


def _textvqa_item(rec: dict, rid: str, where: str, root: Path) -> EvalItem:
    return EvalItem(
        id=_need(rec, "question_id"),
        question=_need(rec, "question"),
        answers=_answer_list(rec),  # the 10 annotators' answers, duplicates kept (VQA accuracy)
        images=(_file_image(root, _need(rec, "image_id") + ".jpg"),),
        where=where,
    )


def load_textvqa(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    (f,) = _find(path, ("TextVQA_0.5.1_val.json", "TextVQA_*_val.json"), "textvqa")
    rows = _thunks(
        _data_list(f, "question_id"), _textvqa_item, _root(images, f.parent, "train_images")
    )
    return _collect("textvqa", "textvqa_json", f, rows, limit)


def _docvqa_item(rec: dict, rid: str, where: str, root: Path) -> EvalItem:
    image = _need(rec, "image")
    return EvalItem(
        id=_need(rec, "questionId"),
        question=_need(rec, "question"),
        answers=_answer_list(rec),
        images=(_file_image(root, image, Path(image).name),),
        where=where,
        meta={"question_types": tuple(rec.get("question_types") or ())},
    )


def load_docvqa(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    (f,) = _find(path, ("val_v1.0.json", "val/val_v1.0.json", "val_v1.0*.json"), "docvqa")
    rows = _thunks(_data_list(f, "questionId"), _docvqa_item, _root(images, f.parent))
    return _collect("docvqa", "docvqa_json", f, rows, limit)


def _chartqa_item(rec: dict, rid: str, where: str, root: Path, variant: str) -> EvalItem:
    return EvalItem(
        id=rid,
        question=_need(rec, "query"),
        answers=(_need(rec, "label"),),
        category=variant,
        images=(_file_image(root, _need(rec, "imgname")),),
        where=where,
    )


def load_chartqa(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    pats = ("test_*.json", "test/test_*.json")
    files = _find(path, pats, "chartqa", many=True)

    def rows() -> Rows:
        for f in files:
            v = _variant(f, ("human", "augmented"))
            recs = (
                (w, f"{v}/{i}", r)
                for i, (w, _, r) in enumerate(_json_list(f, _load_json(f), "", "the file"))
            )
            yield from _thunks(recs, _chartqa_item, _root(images, f.parent, "png"), v)

    return _collect("chartqa", "chartqa_json", path, rows(), limit)


def _ocrbench_item(rec: dict, rid: str, where: str, root: Path) -> EvalItem:
    image = _need(rec, "image_path").removeprefix("./")
    return EvalItem(
        id=rid or where,
        question=_need(rec, "question"),
        answers=_answer_list(rec),
        category=_text(rec.get("type")),
        images=(_file_image(root, image, image.partition("/")[2]),),
        where=where,
        meta={"dataset": _text(rec.get("dataset_name"))},  # metrics: HME100k scoring
    )


def load_ocrbench(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    (f,) = _find(path, ("OCRBench.json", "*/OCRBench.json"), "ocrbench")
    recs = _json_list(f, _load_json(f), "id", "OCRBench.json")
    rows = _thunks(recs, _ocrbench_item, _root(images, f.parent, "OCRBench_Images"))
    return _collect("ocrbench", "ocrbench_json", f, rows, limit)


# --- MathVista ------------------------------------------------------------------------------------


def _mathvista_item(rec: dict, rid: str, where: str, root: Path) -> EvalItem:
    question, answer = _need(rec, "question"), _need(rec, "answer")
    choices = rec.get("choices")
    choices = tuple(_text(c) for c in choices) if isinstance(choices, list) and choices else None
    query = _text(rec.get("query"))
    if not query:  # MathVista's own layout of a question without its prepared query
        lines = [f"({LETTERS[i]}) {c}" for i, c in enumerate(choices or ())]
        query = "\n".join([question] + (["Choices:", *lines] if lines else []))
    md = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
    if rec.get("decoded_image") is not None:
        image = _image_cell(rec["decoded_image"], root, "decoded_image")
    else:
        rel = _need(rec, "image")
        image = _file_image(root, rel, Path(rel).name)
    precision = rec.get("precision")
    try:
        precision = None if _blank(precision) else float(precision)
    except (TypeError, ValueError):
        raise ItemError("bad_answer", f"precision {precision!r} is not a number") from None
    return EvalItem(
        id=_text(rec.get("pid")) or rid,
        question=query,
        answers=(answer,),
        category=_text(md.get("task")) or _text(md.get("category")),
        images=(image,),
        where=where,
        meta={
            "question_type": _text(rec.get("question_type")),
            "answer_type": _text(rec.get("answer_type")),
            "precision": precision,
            "choices": choices,
            "unit": _text(rec.get("unit")),
        },
    )


def load_mathvista(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    pats = ("testmini.json", "annot_testmini.json", "**/testmini-*.parquet")
    files = _find(path, pats, "mathvista")
    root = _root(images, files[0].parent)
    if files[0].suffix.lower() == ".parquet":
        cols = ("pid", "question", "image", "decoded_image", "choices", "unit", "precision")
        cols += ("answer", "question_type", "answer_type", "metadata", "query")
        recs = _parquet(files, cols, ("pid", "question", "answer"), "pid")
        return _collect(
            "mathvista", "mathvista_parquet", path, _thunks(recs, _mathvista_item, root), limit
        )
    (f,) = files
    data = _load_json(f)
    if isinstance(data, dict):
        recs = ((f"{f}:{k}", str(k), r) for k, r in data.items())
    else:
        recs = _json_list(f, data, "pid", "testmini")
    return _collect("mathvista", "mathvista_json", f, _thunks(recs, _mathvista_item, root), limit)


READERS: dict[str, tuple[Callable[..., EvalSet], str]] = {
    "mmbench": (load_mmbench, "circular"),
    "mmbench_cn": (load_mmbench_cn, "circular"),
    "seed": (load_seed, "default"),
    "scienceqa": (load_scienceqa, "default"),
    "ai2d": (load_ai2d, "default"),
    "mmmu": (load_mmmu, "mmmu"),
    "pope": (load_pope, "pope"),
    "textvqa": (load_textvqa, "vqa"),
    "docvqa": (load_docvqa, "anls"),
    "chartqa": (load_chartqa, "relaxed"),
    "mathvista": (load_mathvista, "mathvista"),
    "ocrbench": (load_ocrbench, "ocrbench"),
}
"""name -> (loader, metric name in eval/metrics.py)."""
