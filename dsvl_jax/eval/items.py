"""Benchmark items: VQA-style JSONL and multiple-choice TSV/JSONL -> `EvalItem`s, bad rows reported.

Formats (chosen by the file suffix: .tsv, .jsonl, .json = a JSON list or JSONL):

  VQA JSONL   {"id", "image", "question", "answer": str | "answers": [str | {"answer": str}], "category"?}
              (ChartQA, TextVQA, DocVQA, VQAv2 exported as JSONL; "question_id" also names the id)
  MC JSONL    the same plus "options": {"A": text, ...} | [text, ...] (letters A, B, ... in order),
              "answer": a letter, or the text of one option; optional "hint"
  MC TSV      MMBench / SEED-Bench style: columns index, question, A, B, C, D (any single capital
              letters), answer (a letter), category, image, optional hint. Empty and "nan" cells are
              empty. image: base64 bytes, a path, or (MMBench) the index of another row whose image
              is the same picture.

Images: a path is resolved against `images` (default: the data file's folder); base64 is decoded.
A missing "image" (or an empty cell) makes a text-only item. The header of each image is read at
load time so a missing file, bad base64 or a non-image is reported with its row, not at generation.

Bad rows are never dropped silently: each becomes a `Skipped` (id, file:line, reason, detail) in
`EvalSet.skipped`, which the report lists. Reasons: bad_json, missing_field, bad_answer,
duplicate_id, image_missing, not_an_image, multi_image (+ at run time image_corrupt /
image_too_large, prompt_too_long).

Prompts (`EvalItem.prompt`): open questions are the question (optionally + a suffix such as
"Answer the question using a single word or phrase."); multiple choice follows MMBench:
[hint \\n] question \\n "A. text" lines \\n MC_INSTRUCTION.
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import io
import json
import sys
from pathlib import Path
from typing import Any

from dsvl_jax import jsonfile

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_EMPTY = ("", "nan", "none", "null")
_MAX_PATH = 1024  # longer image strings are base64, never paths


@dataclasses.dataclass(frozen=True)
class EvalItem:
    """One question. `answers`: accepted answers (open) or the one correct letter (multiple choice).
    `images`: resolved paths or encoded bytes, in order (empty: text only); where the question text
    holds IMAGE_TAG placeholders (MMMU's `<image k>`) they mark where each image goes, else the
    images come first. `where`: "file:line" for messages. `meta`: benchmark fields a metric reads
    (POPE's label, MathVista's answer type, MMBench's rotation group, ...)."""

    id: str
    question: str
    answers: tuple[str, ...]
    options: tuple[tuple[str, str], ...] = ()
    category: str = ""
    images: tuple[str | bytes, ...] = ()
    hint: str = ""
    where: str = ""
    meta: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def image(self) -> str | bytes | None:
        """The first image (None: text only)."""
        return self.images[0] if self.images else None

    @property
    def kind(self) -> str:
        return "mc" if self.options else "open"

    @property
    def letters(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.options)

    def prompt(self, open_suffix: str = "") -> str:
        """The user text (without the image tag)."""
        if not self.options:
            q = self.question.strip()
            return f"{q}\n{open_suffix.strip()}" if open_suffix.strip() else q
        lines = ([self.hint.strip()] if self.hint.strip() else []) + [self.question.strip()]
        lines += [f"{k}. {v.strip()}" for k, v in self.options] + [MC_INSTRUCTION]
        return "\n".join(lines)

    def image_bytes(self, k: int = 0) -> bytes | None:
        """The encoded bytes of image k (None when the item has fewer images)."""
        if k >= len(self.images):
            return None
        img = self.images[k]
        return img if isinstance(img, bytes) else Path(img).read_bytes()


@dataclasses.dataclass(frozen=True)
class Skipped:
    id: str
    where: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where} (id {self.id or '?'}): {self.reason}: {self.detail}"


@dataclasses.dataclass
class EvalSet:
    """The items of one benchmark file. `metric`: the name of its scoring in eval/metrics.py
    ("default": exact match / relaxed accuracy for open questions, letter accuracy for choices)."""

    path: str
    format: str
    items: list[EvalItem]
    skipped: list[Skipped]
    benchmark: str = ""
    metric: str = "default"


class ItemError(ValueError):
    """A bad row; `reason` is one of the short keys of the module docstring."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


# --- helpers ---------------------------------------------------------------------------------------


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or str(v).strip().lower() in _EMPTY


def _text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return "" if _blank(v) else str(v).strip()


def _check_image_header(data: bytes | str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im.size  # noqa: B018 - the header is parsed on open
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ItemError("not_an_image", f"{type(e).__name__}: {e}") from None


def resolve_image(value: Any, root: Path) -> str | bytes | None:
    """A path (relative to root, or absolute) or base64 -> resolved path / bytes; blank -> None."""
    if isinstance(value, list):
        if len(value) > 1:
            raise ItemError(
                "multi_image", f"{len(value)} images; the harness takes one image per question"
            )
        value = value[0] if value else None
    s = _text(value)
    if not s:
        return None
    if len(s) <= _MAX_PATH:
        p = Path(s) if Path(s).is_absolute() else root / s
        if p.is_file():
            _check_image_header(str(p))
            return str(p)
        looks_like_path = (
            "/" in s
            or "\\" in s
            or Path(s).suffix.lower()
            in (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
        )
        if looks_like_path:
            raise ItemError("image_missing", f"image file {p} not found")
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ItemError(
            "image_missing",
            f"image {s[:60]!r} is neither an existing file (under {root}) nor base64",
        ) from None
    if not data:
        raise ItemError("not_an_image", "empty base64 image")
    try:
        _check_image_header(data)
    except ItemError as e:
        raise ItemError(
            e.reason, f"image {s[:40]!r}: no such file, and as base64 not an image ({e.detail})"
        ) from None
    return data


def _answers(rec: dict) -> list[str]:
    raw = rec.get("answers", rec.get("answer"))
    if raw is None:
        return []
    if not isinstance(raw, list):
        raw = [raw]
    out = []
    for a in raw:
        a = a.get("answer") if isinstance(a, dict) else a
        if not _blank(a):
            out.append(_text(a))
    return out


def _options(raw: Any) -> list[tuple[str, str]]:
    if isinstance(raw, dict):
        opts = [(str(k).strip().upper(), _text(v)) for k, v in raw.items() if not _blank(v)]
        bad = [k for k, _ in opts if len(k) != 1 or k not in LETTERS]
        if bad:
            raise ItemError("bad_answer", f"option keys {bad} are not single letters A-Z")
        return sorted(opts)
    if isinstance(raw, list):
        if len(raw) > len(LETTERS):
            raise ItemError("bad_answer", f"{len(raw)} options, at most {len(LETTERS)}")
        return [(LETTERS[i], _text(v)) for i, v in enumerate(raw)]
    raise ItemError(
        "missing_field", f"options must be a dict of letters or a list, got {type(raw).__name__}"
    )


def _mc_answer(answer: str, options: list[tuple[str, str]]) -> str:
    letters = [k for k, _ in options]
    a = answer.strip()
    if a.upper() in letters and len(a) == 1:
        return a.upper()
    m = [k for k, v in options if v.strip().lower() == a.lower()]
    if len(m) == 1:
        return m[0]
    raise ItemError(
        "bad_answer", f"answer {answer!r} is not one of the option letters {''.join(letters)}"
    )


def _item(rec: dict, root: Path, where: str, default_id: str) -> EvalItem:
    iid = _text(rec.get("id", rec.get("question_id", rec.get("index", default_id)))) or default_id
    question = _text(rec.get("question", rec.get("prompt")))
    if not question:
        raise ItemError("missing_field", "no question")
    answers = _answers(rec)
    raw_opts = rec.get("options", rec.get("choices"))
    options = _options(raw_opts) if raw_opts is not None else []
    if not answers:
        raise ItemError("missing_field", "no answer" + (" letter" if options else "(s)"))
    if options:
        if len(options) < 2:
            raise ItemError(
                "bad_answer", f"{len(options)} option(s); multiple choice needs at least 2"
            )
        answers = [_mc_answer(answers[0], options)]
    image = resolve_image(rec.get("image", rec.get("image_path")), root)
    return EvalItem(
        id=iid,
        question=question,
        answers=tuple(answers),
        options=tuple(options),
        category=_text(rec.get("category", rec.get("type"))),
        images=() if image is None else (image,),
        hint=_text(rec.get("hint")),
        where=where,
    )


# --- readers -----------------------------------------------------------------------------------------


def _json_records(path: Path):
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from None
        except RecursionError:
            raise ValueError(f"{path}: {jsonfile.TOO_DEEP}") from None
        for i, rec in enumerate(data):
            yield f"{path}:[{i}]", rec, None
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        yield f"{path}:{n}", *parse_line(line)


def parse_line(line: str) -> tuple[Any, ItemError | None]:
    """One JSON line of a benchmark file: (record, None), or (None, why it is skipped); a line nested
    too deeply is one bad item, not a dead benchmark file."""
    try:
        return json.loads(line), None
    except json.JSONDecodeError as e:
        return None, ItemError("bad_json", str(e))
    except RecursionError:
        return None, ItemError("bad_json", jsonfile.TOO_DEEP)


def _tsv_records(path: Path):
    csv.field_size_limit(sys.maxsize)  # base64 images
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
        fields = rows[0].keys() if rows else []
    for col in ("question", "answer"):
        if rows and col not in fields:
            raise ValueError(f"{path}: TSV has no {col!r} column (columns: {sorted(fields)})")
    letters = [c for c in fields if len(c) == 1 and c in LETTERS]
    by_index = {_text(r.get("index")): r for r in rows}
    for n, r in enumerate(rows, 2):  # line 1 is the header
        rec: dict[str, Any] = {k: v for k, v in r.items() if k not in letters}
        opts = {k: r[k] for k in letters if not _blank(r.get(k))}
        if opts:
            rec["options"] = opts
        img = _text(r.get("image"))
        # MMBench: same picture as row `img`
        if img.isdigit() and img in by_index and by_index[img] is not r:
            rec["image"] = by_index[img].get("image")
        yield f"{path}:{n}", rec, None


def load_items(path: str, images: str | None = None, limit: int | None = None) -> EvalSet:
    """Read a benchmark file; bad rows go to `skipped`. Raises for an unreadable file or unknown suffix."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"eval data {path} not found")
    root = Path(images) if images else p.parent
    if images and not root.is_dir():
        raise FileNotFoundError(f"--images {images}: not a directory")
    suffix = p.suffix.lower()
    if suffix == ".tsv":
        fmt, records = "tsv", _tsv_records(p)
    elif suffix in (".jsonl", ".json"):
        fmt, records = "jsonl", _json_records(p)
    else:
        raise ValueError(
            f"{path}: unknown eval data format {suffix!r} (expected .tsv, .jsonl or .json)"
        )
    items: list[EvalItem] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for n, (where, rec, err) in enumerate(records):
        if limit is not None and len(items) + len(skipped) >= limit:
            break
        rid = ""
        try:
            if isinstance(rec, dict):
                rid = _text(rec.get("id", rec.get("question_id", rec.get("index"))))
            if err is not None:
                raise err
            if not isinstance(rec, dict):
                raise ItemError("bad_json", f"expected an object, got {type(rec).__name__}")
            item = _item(rec, root, where, default_id=str(n))
            if item.id in seen:
                raise ItemError("duplicate_id", f"id {item.id!r} appears more than once")
        except ItemError as e:
            skipped.append(Skipped(rid, where, e.reason, e.detail))
            continue
        except RecursionError:  # a record that parsed but nests too deeply to read
            skipped.append(Skipped(rid, where, "bad_json", "JSON nested too deeply to read"))
            continue
        seen.add(item.id)
        items.append(item)
    return EvalSet(str(p), fmt, items, skipped)
