"""Importers: formats users already have -> `records.Example`s, with the skip policy applied.

  llava     LLaVA/ShareGPT JSON list (or JSONL) of {"id", "image": str | [str], "conversations":
            [{"from": "human"|"gpt"|"system", "value"}]}; "<image>" becomes IMAGE_TAG.
  captions  JSONL of {"id"?, "image": path, "caption" | "text"} -> kind "caption".
  pdf       a PDF file or a folder of them -> one "pdf" Example per page (page image + text layer).
  text      JSONL of {"id"?, "text"} -> kind "text".

Skip policy: a bad record raises `BadRecord` inside its importer and is counted in a `SkipCounter`
(reason and record id), never silently lost; a file that cannot be read at all is an error. The
counter raises `SkipRateExceeded` when the skipped share passes `max_skip_rate`: early once
`min_seen` records were seen, and at the end. Valid images are stored as their original encoded
bytes, after `records.decode_image` proved that they decode within the pixel limit.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from dsvl_jax.data import records
from dsvl_jax.data.pdf import render_pdf
from dsvl_jax.data.records import IMAGE_TAG, BadRecord, Example, Message
from dsvl_jax.errors import ConfigError, Error

FORMATS = ("llava", "captions", "pdf", "text")
DEFAULT_MAX_SKIP_RATE = 0.1
EARLY_CHECK_AFTER = 200  # records seen before the skip-rate cap is checked mid-import
LLAVA_TAG = "<image>"
LLAVA_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


class SkipRateExceeded(Error, RuntimeError):
    """Too many records of one input were bad: the input is probably wrong (paths, format, root)."""


class InputNotFound(FileNotFoundError, ConfigError):
    """The input path given to an importer does not exist."""


@dataclasses.dataclass
class SkipCounter:
    """Tally of one source (one input path): records written, and skipped ones by reason and id."""

    source: str
    max_skip_rate: float | None = DEFAULT_MAX_SKIP_RATE
    min_seen: int = EARLY_CHECK_AFTER
    written: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped_ids: list[dict] = dataclasses.field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def seen(self) -> int:
        return self.written + self.num_skipped

    @property
    def skip_rate(self) -> float:
        return self.num_skipped / self.seen if self.seen else 0.0

    def add_written(self) -> None:
        self.written += 1
        if self.seen >= self.min_seen:
            self.check()

    def add_skipped(self, err: BadRecord) -> None:
        self.skipped[err.reason] += 1
        self.skipped_ids.append(
            {"id": err.record_id, "reason": err.reason, "detail": err.detail[:300]}
        )
        if self.seen >= self.min_seen:
            self.check()

    def check(self) -> None:
        """Raise `SkipRateExceeded` (naming the source, the rate and the cap) if the cap is passed."""
        if self.max_skip_rate is None or self.skip_rate <= self.max_skip_rate:
            return
        reasons = ", ".join(f"{r}={c}" for r, c in self.skipped.most_common())
        first = ", ".join(f"{s['id']} ({s['reason']})" for s in self.skipped_ids[:5])
        raise SkipRateExceeded(
            f"{self.source}: skipped {self.num_skipped} of {self.seen} records ({self.skip_rate:.1%}), above "
            f"max_skip_rate={self.max_skip_rate:.1%} (--max_skip_rate={self.max_skip_rate:g}). "
            f"Reasons: {reasons}. First skipped: {first}. Check the input paths and --images root."
        )

    def report(self) -> dict:
        """JSON-able: {"source", "written", "skipped": {reason: n}, "skipped_ids": [{"id", "reason", "detail"}]}."""
        return {
            "source": self.source,
            "written": self.written,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_ids": list(self.skipped_ids),
        }

    def summary(self) -> str:
        reasons = ", ".join(f"{r}={c}" for r, c in sorted(self.skipped.items()))
        return f"{self.written} written, {self.num_skipped} skipped" + (
            f" ({reasons})" if reasons else ""
        )


def import_examples(
    fmt: str,
    path: str,
    counter: SkipCounter,
    *,
    images: str | None = None,
    max_pixels: int = records.DEFAULT_MAX_PIXELS,
    kind: str | None = None,
    dpi: int = 96,
) -> Iterator[Example]:
    """Good Examples of `path` in `fmt` (one of FORMATS); bad records go to `counter`.

    `images` is the root that image paths are resolved under (default: the input's folder); a
    path outside it (absolute, `..`, or a symlink leading out) is skipped as "image_path_escape".
    `kind` overrides the corpus kind (llava: "caption" with images, "text" without; pdf: "pdf").
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown import format {fmt!r}; one of {FORMATS}")
    if kind is not None and kind not in records.KINDS:
        raise ConfigError(f"kind {kind!r} is not one of {records.KINDS}")
    if not os.path.exists(path):
        raise InputNotFound(f"import input {path} does not exist")
    if fmt == "pdf":
        return _skip_policy(_pdf_items(path, dpi, kind or "pdf", max_pixels), counter)
    if not os.path.isfile(path):
        raise ConfigError(f"import input {path} is not a file ({fmt} reads one JSON/JSONL file)")
    root = Path(images if images is not None else os.path.dirname(os.path.abspath(path))).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"image root {root} (--images) is not a directory")
    load = lambda refs, rid: tuple(load_image(r, root, rid, max_pixels) for r in refs)  # noqa: E731
    build = {
        "llava": lambda rec, rid: _llava_example(rec, rid, load, kind),
        "captions": lambda rec, rid: _caption_example(rec, rid, load, kind or "caption"),
        "text": lambda rec, rid: _text_example(rec, rid, kind or "text"),
    }[fmt]
    items = _json_list_items(path) if fmt == "llava" and _is_json_list(path) else _jsonl_items(path)
    return _skip_policy(((rid, _parse_then(parse, build, rid)) for rid, parse in items), counter)


def _parse_then(parse: Callable[[], Any], build, fallback_id: str) -> Callable[[], Example]:
    def run() -> Example:
        rec = parse()
        return build(rec, _record_id(rec, fallback_id))

    return run


def _skip_policy(
    items: Iterable[tuple[str, Callable[[], Example]]], counter: SkipCounter
) -> Iterator[Example]:
    """Run each record's builder; a BadRecord is counted (with the fallback id if it has none)."""
    for rid, build in items:
        try:
            ex = records.validate(build())
        except BadRecord as e:
            e.record_id = e.record_id or rid
            counter.add_skipped(e)
            continue
        counter.add_written()
        yield ex
    counter.check()


# --- images ---------------------------------------------------------------------------------


def load_image(
    ref: Any, root: Path, record_id: str, max_pixels: int = records.DEFAULT_MAX_PIXELS
) -> bytes:
    """The original bytes of image `ref` (relative to `root`), after checking it decodes within max_pixels."""
    if not isinstance(ref, str) or not ref:
        raise BadRecord(
            "bad_conversation", f"image reference {ref!r} is not a non-empty path string", record_id
        )
    if os.path.isabs(ref) or ref.startswith("~"):
        raise BadRecord(
            "image_path_escape",
            f"{ref!r} is absolute; image paths must be relative to {root}",
            record_id,
        )
    try:
        path = (
            root / ref
        ).resolve()  # follows symlinks, so a link pointing out of root is caught too
    except (OSError, ValueError) as e:
        raise BadRecord("image_missing", f"{ref!r}: {e}", record_id) from None
    if not path.is_relative_to(root):
        raise BadRecord(
            "image_path_escape",
            f"{ref!r} resolves to {path}, outside the image root {root}",
            record_id,
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadRecord("image_missing", f"{path} does not exist", record_id) from None
    except OSError as e:
        raise BadRecord("image_missing", f"{path}: {type(e).__name__}: {e}", record_id) from None
    records.decode_image(data, max_pixels, record_id)  # empty / not an image / too large / corrupt
    return data


# --- record builders ------------------------------------------------------------------------


def _llava_example(rec: Any, rid: str, load, kind: str | None) -> Example:
    if not isinstance(rec, dict):
        raise BadRecord("bad_conversation", f"record is a {type(rec).__name__}, not an object", rid)
    _check_utf8(rec, rid)
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise BadRecord("bad_conversation", "missing or empty 'conversations' list", rid)
    msgs = []
    for j, turn in enumerate(conv):
        if not (
            isinstance(turn, dict)
            and isinstance(turn.get("from"), str)
            and isinstance(turn.get("value"), str)
        ):
            raise BadRecord(
                "bad_conversation",
                f"turn {j} needs string 'from' and 'value' fields, got {turn!r:.100}",
                rid,
            )
        role = LLAVA_ROLES.get(turn["from"])
        if role is None:
            raise BadRecord(
                "bad_conversation",
                f"turn {j}: role {turn['from']!r} is not one of {sorted(LLAVA_ROLES)}",
                rid,
            )
        msgs.append(Message(role, turn["value"].replace(LLAVA_TAG, IMAGE_TAG)))
    refs = rec.get("image")
    refs = [] if refs is None else [refs] if isinstance(refs, str) else refs
    if not isinstance(refs, list):
        raise BadRecord(
            "bad_conversation",
            f"'image' must be a path or a list of paths, got {type(refs).__name__}",
            rid,
        )
    if refs and not any(IMAGE_TAG in m.content for m in msgs):
        first_user = next((i for i, m in enumerate(msgs) if m.role == "user"), None)
        if first_user is not None:
            m = msgs[first_user]
            msgs[first_user] = Message(m.role, (IMAGE_TAG + "\n") * len(refs) + m.content)
    ex = Example(rid, kind or ("caption" if refs else "text"), tuple(msgs))
    return _with_images(ex, refs, load)


def _caption_example(rec: Any, rid: str, load, kind: str) -> Example:
    if not isinstance(rec, dict):
        raise BadRecord("bad_conversation", f"record is a {type(rec).__name__}, not an object", rid)
    _check_utf8(rec, rid)
    text = rec.get("caption", rec.get("text"))
    if not isinstance(text, str):
        raise BadRecord("bad_conversation", "needs a string 'caption' (or 'text') field", rid)
    if "image" not in rec:
        raise BadRecord("bad_conversation", "needs an 'image' path field", rid)
    ex = Example(rid, kind, (Message("text", IMAGE_TAG + text),))
    return _with_images(ex, [rec["image"]], load)


def _text_example(rec: Any, rid: str, kind: str) -> Example:
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        raise BadRecord("bad_conversation", "needs an object with a string 'text' field", rid)
    _check_utf8(rec, rid)
    return Example(rid, kind, (Message("text", rec["text"]),))


def _with_images(ex: Example, refs: list, load) -> Example:
    """Structure first (cheap, with placeholder images), then read and check the image files."""
    records.validate(dataclasses.replace(ex, images=(b"",) * len(refs)))
    return dataclasses.replace(ex, images=load(refs, ex.id))


def _pdf_items(
    path: str, dpi: int, kind: str, max_pixels: int
) -> Iterator[tuple[str, Callable[[], Example]]]:

    if os.path.isdir(path):
        files = sorted(
            p for p in Path(path).rglob("*") if p.suffix.lower() == ".pdf" and p.is_file()
        )
        names = [p.relative_to(path).as_posix() for p in files]
    else:
        files, names = [Path(path)], [os.path.basename(path)]
    for f, name in zip(files, names):
        try:
            pages = render_pdf(f.read_bytes(), dpi=dpi, record_id=name, max_pixels=max_pixels)
        except (
            BadRecord
        ) as e:  # the whole file is unreadable: one skipped record, named by the file
            yield name, (lambda e=e: _raise(e))
            continue
        for page in pages:
            rid = f"{name}#p{page.index}"
            yield rid, (lambda page=page, rid=rid: _pdf_example(page, rid, kind))


def _pdf_example(page, rid: str, kind: str) -> Example:
    if not page.text.strip():
        raise BadRecord("empty_text", "page has no text layer", rid)
    return Example(rid, kind, (Message("text", IMAGE_TAG + page.text),), (page.png,))


def _raise(e: Exception):
    raise e


# --- reading files --------------------------------------------------------------------------


def _record_id(rec: Any, fallback: str) -> str:
    rid = rec.get("id") if isinstance(rec, dict) else None
    if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid):
        # printable even if not UTF-8
        return str(rid).encode("utf-8", "backslashreplace").decode("utf-8")
    return fallback


def _check_utf8(obj: Any, rid: str) -> None:
    """Strings decoded with surrogateescape carry invalid UTF-8 bytes as lone surrogates."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRecord(
                "bad_utf8",
                f"invalid UTF-8 in {obj[:60].encode('utf-8', 'backslashreplace')!r}",
                rid,
            ) from None
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_utf8(k, rid)
            _check_utf8(v, rid)
    elif isinstance(obj, list):
        for v in obj:
            _check_utf8(v, rid)


def _is_json_list(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _json_list_items(path: str) -> Iterator[tuple[str, Callable[[], Any]]]:
    """A JSON list file, decoded leniently so that one record's bad bytes cost only that record."""
    name = os.path.basename(path)
    text = Path(path).read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: not valid JSON ({e}); expected a list of records or JSON lines"
        ) from None
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: top-level JSON is a {type(data).__name__}, expected a list of records"
        )
    for i, rec in enumerate(data):
        yield f"{name}[{i}]", (lambda rec=rec: rec)


def _jsonl_items(path: str) -> Iterator[tuple[str, Callable[[], Any]]]:
    """JSON lines, read as bytes and decoded per line: a bad line is one bad record, not a dead file."""
    name = os.path.basename(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            raw = raw.removeprefix(b"\xef\xbb\xbf") if lineno == 1 else raw
            if raw.strip():
                yield (
                    f"{name}:{lineno}",
                    (lambda raw=raw, rid=f"{name}:{lineno}": _parse_line(raw, rid)),
                )


def _parse_line(raw: bytes, rid: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        # name the record by its own id when the rest of the line still parses
        with contextlib.suppress(json.JSONDecodeError):
            rid = _record_id(json.loads(raw.decode("utf-8", "surrogateescape")), rid)
        raise BadRecord("bad_utf8", f"line is not valid UTF-8: {e}", rid) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRecord("bad_conversation", f"line is not JSON: {e}", rid) from None
