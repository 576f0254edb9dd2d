"""Importers: the formats corpora ship in -> `records.Example`s, one input file at a time.

  llava       LLaVA/ShareGPT JSON list (or JSONL) of {"id", "image": str | [str], "conversations":
              [{"from": "human"|"gpt"|"system", "value"}]}; "<image>" becomes IMAGE_TAG.
  captions    JSONL of {"id"?, "image": path, "caption" | "text"} -> kind "caption".
  pdf         PDF files -> one "pdf" Example per page (page image + text layer).
  text        JSONL of {"id"?, "text"}, a parquet `text` column, or .txt files (one document
              each) -> kind "text" (data/import_parquet.py for parquet and .txt).
  webdataset  img2dataset tar shards: <key>.jpg|png|webp + <key>.txt|.json caption -> one "caption"
              Example per key (data/import_webdataset.py).
  parquet     HF datasets parquet: `image` / `images` {bytes, path} + caption | conversations |
              OpenAI messages -> caption or conversation Examples (data/import_parquet.py).
  obelics     OBELICS parquet: aligned `texts` / `images` lists -> one "interleaved" Example per
              document (data/import_parquet.py).
  mmc4        MMC4 JSONL documents (text_list + image_info, images under --images) -> one
              "interleaved" Example per document (data/import_mmc4.py).
  ocr         images with a sibling .mmd (Nougat) or .txt transcription -> one "ocr" Example each
              (data/import_ocr.py).
  (more formats: READERS below, one module each)

`--input` is a file, a folder or a glob (data/inputs.py); JSON lines may be .gz or .zst. Each
format is a `Reader`: the file suffixes it takes and `items(file, name, ctx)`, the records of one
file as (fallback id, build thunk) pairs. `import_examples` runs every input file in order under
one SkipCounter (the skip policy: data/import_common.py); data/prepare_parallel.py runs the same
per-file work in worker processes or on Apache Beam.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dsvl_jax.data import records
from dsvl_jax.data.import_common import (
    DEFAULT_MAX_SKIP_RATE,
    EARLY_CHECK_AFTER,
    ImportContext,
    InputNotFound,
    Item,
    SkipCounter,
    SkipRateExceeded,
    check_utf8,
    is_json_list,
    json_list_items,
    jsonl_items,
    parse_then,
    skip_policy,
    with_images,
)
from dsvl_jax.data.inputs import Inputs, expand
from dsvl_jax.data.pdf import render_pdf
from dsvl_jax.data.records import IMAGE_TAG, BadRecord, Example, Message
from dsvl_jax.errors import ConfigError

# format modules (one reader each) import here:
from dsvl_jax.data import import_webdataset  # isort: skip
from dsvl_jax.data import import_parquet  # isort: skip
from dsvl_jax.data.inputs import base_suffix  # isort: skip
from dsvl_jax.data import import_mmc4  # isort: skip
from dsvl_jax.data import import_ocr  # isort: skip

LLAVA_TAG = "<image>"
LLAVA_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


@dataclasses.dataclass(frozen=True)
class Reader:
    """One format: the input file suffixes it reads (compression stripped) and its records."""

    suffixes: tuple[str, ...]
    items: Callable[[str, str, ImportContext], Iterator[Item]]  # (file, name, ctx) -> items


def _json_reader(build) -> Callable[[str, str, ImportContext], Iterator[Item]]:
    def items(file: str, name: str, ctx: ImportContext) -> Iterator[Item]:
        raw = json_list_items(file, name) if is_json_list(file) else jsonl_items(file, name)
        return (
            (rid, parse_then(parse, lambda rec, rid: build(rec, rid, ctx), rid))
            for rid, parse in raw
        )

    return items


# --- record builders ------------------------------------------------------------------------


def _llava_example(rec: Any, rid: str, ctx: ImportContext) -> Example:
    if not isinstance(rec, dict):
        raise BadRecord("bad_conversation", f"record is a {type(rec).__name__}, not an object", rid)
    check_utf8(rec, rid)
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
    ex = Example(rid, ctx.kind or ("caption" if refs else "text"), tuple(msgs))
    return with_images(ex, refs, ctx.load)


def _caption_example(rec: Any, rid: str, ctx: ImportContext, kind: str) -> Example:
    if not isinstance(rec, dict):
        raise BadRecord("bad_conversation", f"record is a {type(rec).__name__}, not an object", rid)
    check_utf8(rec, rid)
    text = rec.get("caption", rec.get("text"))
    if not isinstance(text, str):
        raise BadRecord("bad_conversation", "needs a string 'caption' (or 'text') field", rid)
    if "image" not in rec:
        raise BadRecord("bad_conversation", "needs an 'image' path field", rid)
    ex = Example(rid, kind, (Message("text", IMAGE_TAG + text),))
    return with_images(ex, [rec["image"]], ctx.load)


def _text_example(rec: Any, rid: str, kind: str) -> Example:
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        raise BadRecord("bad_conversation", "needs an object with a string 'text' field", rid)
    check_utf8(rec, rid)
    return Example(rid, kind, (Message("text", rec["text"]),))


def _pdf_items(file: str, name: str, ctx: ImportContext) -> Iterator[Item]:
    """One PDF file: one record per page, `<name>#p<index>`."""
    try:
        pages = render_pdf(
            Path(file).read_bytes(), dpi=ctx.dpi, record_id=name, max_pixels=ctx.max_pixels
        )
    except BadRecord as e:  # the whole file is unreadable: one skipped record, named by the file
        yield name, (lambda e=e: _raise(e))
        return
    for page in pages:
        rid = f"{name}#p{page.index}"
        yield rid, (lambda page=page, rid=rid: _pdf_example(page, rid, ctx.kind or "pdf"))


def _pdf_example(page, rid: str, kind: str) -> Example:
    if not page.text.strip():
        raise BadRecord("empty_text", "page has no text layer", rid)
    return Example(rid, kind, (Message("text", IMAGE_TAG + page.text),), (page.png,))


def _raise(e: Exception):
    raise e


READERS: dict[str, Reader] = {
    "llava": Reader(
        (".json", ".jsonl"), _json_reader(lambda rec, rid, ctx: _llava_example(rec, rid, ctx))
    ),
    "captions": Reader(
        (".jsonl", ".json"),
        _json_reader(lambda rec, rid, ctx: _caption_example(rec, rid, ctx, ctx.kind or "caption")),
    ),
    "pdf": Reader((".pdf",), lambda file, name, ctx: _pdf_items(file, name, ctx)),
    "text": Reader(
        (".jsonl", ".txt", ".parquet"),
        lambda file, name, ctx: {
            ".txt": import_parquet.text_txt_items,
            ".parquet": import_parquet.text_parquet_items,
        }.get(
            base_suffix(file),
            _json_reader(lambda rec, rid, ctx: _text_example(rec, rid, ctx.kind or "text")),
        )(file, name, ctx),
    ),
    "webdataset": Reader(import_webdataset.SUFFIXES, import_webdataset.items),
    "parquet": Reader(import_parquet.SUFFIXES, import_parquet.items),
    "obelics": Reader(import_parquet.SUFFIXES, import_parquet.obelics_items),
    "mmc4": Reader(import_mmc4.SUFFIXES, import_mmc4.items),
    "ocr": Reader(import_ocr.SUFFIXES, import_ocr.items),
}
FORMATS = tuple(READERS)


def plan(
    fmt: str,
    path: str,
    *,
    images: str | None = None,
    max_pixels: int = records.DEFAULT_MAX_PIXELS,
    kind: str | None = None,
    dpi: int = 96,
) -> tuple[Inputs, ImportContext]:
    """The input files of `path` in format `fmt` and how to read them; checks before any work.

    `images` is the root image paths resolve under (default: the input's folder, or the folder /
    glob prefix it names); a path outside it (absolute, `..`, a symlink leading out) is skipped as
    "image_path_escape". `kind` overrides the corpus kind of every record.
    """
    if fmt not in READERS:
        raise ConfigError(f"unknown import format {fmt!r}; one of {FORMATS}")
    if kind is not None and kind not in records.KINDS:
        raise ConfigError(f"kind {kind!r} is not one of {records.KINDS}")
    inputs = expand(path, READERS[fmt].suffixes)
    root = Path(images if images is not None else inputs.root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"image root {root} (--images) is not a directory")
    return inputs, ImportContext(str(root), max_pixels, kind, dpi)


def import_file(
    fmt: str, file: str, name: str, ctx: ImportContext, counter: SkipCounter, final_check=True
) -> Iterator[Example]:
    """The good Examples of one input file; bad records go to `counter`."""
    return skip_policy(READERS[fmt].items(file, name, ctx), counter, final_check)


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
    """Good Examples of every input file of `path` (file, folder or glob) in `fmt`, in order."""
    inputs, ctx = plan(fmt, path, images=images, max_pixels=max_pixels, kind=kind, dpi=dpi)

    def run() -> Iterator[Example]:
        for f in inputs.files:
            yield from import_file(fmt, f, inputs.name(f), ctx, counter, final_check=False)
        counter.check()

    return run()


__all__ = [
    "DEFAULT_MAX_SKIP_RATE",
    "EARLY_CHECK_AFTER",
    "FORMATS",
    "READERS",
    "ImportContext",
    "InputNotFound",
    "Reader",
    "SkipCounter",
    "SkipRateExceeded",
    "import_examples",
    "import_file",
    "plan",
]
