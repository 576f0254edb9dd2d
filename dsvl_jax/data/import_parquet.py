"""Parquet corpora (the HF datasets layout, OBELICS) and plain-text files -> `records.Example`s.

  parquet   an `image` {bytes, path} struct (or `images`, a list of them) with `caption` / `text`
            (-> kind "caption"), LLaVA `conversations` [{from, value}] or OpenAI `messages`
            [{role, content: str | [{type: "text" | "image", text}]}] (-> a conversation).
  obelics   aligned `texts` / `images` lists, one of the two set at each position -> one
            "interleaved" document: the texts and an IMAGE_TAG per image, in order, joined by "\n".
  text      a `text` column (text_parquet_items), or a .txt file as one document (text_txt_items).

Files are read in batches of BATCH_ROWS rows (row group by row group), only the columns a format
uses, never whole. Record ids: the `id` column, else `<file name>:<0-based row>`; a .txt file is one
record named by its file name, since books and dumps are documents and the splitter cuts long text
into windows later. Images: bytes are checked where they sit (bytes win over a path, as HF writes
both); a path string resolves under the image root; a URL is "image_missing" (download first).
A row whose strings are not UTF-8 is one "bad_utf8" record; a file without the format's columns is
an error naming the columns it has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dsvl_jax.data.import_common import ImportContext, Item, parse_then, with_images
from dsvl_jax.data.inputs import open_binary
from dsvl_jax.data.records import IMAGE_TAG, BadRecord, Example, Message

SUFFIXES = (".parquet",)
BATCH_ROWS = 64  # rows in memory at a time: OBELICS rows hold a document's images
LLAVA_TAG = "<image>"
ROLES = {  # LLaVA's `from` and OpenAI's `role` -> ours (the LLaVA importer's table, plus OpenAI's)
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


# --- reading ---------------------------------------------------------------------------------


def rows(file: str, name: str, columns: tuple[str, ...], need: tuple[str, ...]) -> Iterator[Item]:
    """(`name:row`, a thunk giving the row as Python values) per row, reading only `columns`, at
    least one of `need`; a row that does not decode (strings not UTF-8) raises "bad_utf8"."""
    try:
        with pq.ParquetFile(file) as pf:
            have = set(pf.schema_arrow.names)
            if not have & set(need):
                raise ValueError(
                    f"{file}: no column {' / '.join(need)} to read; the file has {sorted(have)}"
                )
            row = 0
            for batch in pf.iter_batches(BATCH_ROWS, columns=[c for c in columns if c in have]):
                try:
                    recs = batch.to_pylist()
                except UnicodeDecodeError:
                    recs = [_row(batch, i, f"{name}:{row + i}") for i in range(batch.num_rows)]
                for rec in recs:
                    yield f"{name}:{row}", (lambda rec=rec: _raise(rec) if _bad(rec) else rec)
                    row += 1
    except pa.ArrowException as e:
        raise ValueError(f"{file}: not a readable parquet file: {type(e).__name__}: {e}") from None


def _row(batch: pa.RecordBatch, i: int, rid: str) -> Any:
    try:
        return batch.slice(i, 1).to_pylist()[0]
    except UnicodeDecodeError as e:
        if "id" in batch.schema.names:
            with contextlib.suppress(UnicodeDecodeError):  # an id that decodes names the row
                rid = str(batch.column("id")[i].as_py() or rid)
        return BadRecord("bad_utf8", f"a string of the row is not valid UTF-8: {e}", rid)


def _bad(rec: Any) -> bool:
    return isinstance(rec, BadRecord)


def _raise(e: Exception):
    raise e


def _items(file, name, ctx, columns, need, build) -> Iterator[Item]:
    for rid, get in rows(file, name, columns, need):
        yield rid, parse_then(get, lambda rec, rid: build(rec, rid, ctx), rid)


# --- values ----------------------------------------------------------------------------------


def _text(value: Any, rid: str, what: str) -> str:
    """A string column's value (binary columns are decoded as UTF-8)."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRecord("bad_utf8", f"{what} is not valid UTF-8: {e}", rid) from None
    if not isinstance(value, str):
        raise BadRecord("bad_conversation", f"{what} is a {type(value).__name__}, not text", rid)
    return value


def image_bytes(ref: Any, rid: str, ctx: ImportContext, what: str = "image") -> bytes:
    """One image cell: bytes, a {bytes, path} struct (bytes first) or a path under the image root."""
    if isinstance(ref, dict):
        ref = ref.get("bytes") if ref.get("bytes") is not None else ref.get("path")
    if isinstance(ref, (bytes, bytearray)):
        return ctx.check_bytes(ref, rid, what)
    if isinstance(ref, str) and ref:
        if "://" in ref:
            raise BadRecord("image_missing", f"{what} is a URL ({ref:.100}); download first", rid)
        return ctx.load([ref], rid)[0]
    raise BadRecord("image_missing", f"{what} has neither bytes nor a path", rid)


def _load(ctx: ImportContext) -> Callable[[list, str], tuple[bytes, ...]]:
    return lambda refs, rid: tuple(
        image_bytes(r, rid, ctx, f"image {i}") for i, r in enumerate(refs)
    )


# --- parquet (HF datasets layout) ------------------------------------------------------------

PARQUET_COLUMNS = ("id", "image", "images", "caption", "text", "conversations", "messages")


def items(file: str, name: str, ctx: ImportContext) -> Iterator[Item]:
    """One HF-datasets parquet file: a caption or a conversation per row."""
    return _items(file, name, ctx, PARQUET_COLUMNS, PARQUET_COLUMNS[3:], _parquet_example)


def _parquet_example(rec: dict, rid: str, ctx: ImportContext) -> Example:
    if rec.get("images") is not None:
        refs = rec["images"]
        if not isinstance(refs, list):
            raise BadRecord("bad_conversation", "'images' is not a list", rid)
    else:
        refs = [rec["image"]] if "image" in rec else []  # a null image: "image_missing"
    if rec.get("conversations") is not None:
        msgs = _turns(rec["conversations"], "from", "value", rid)
    elif rec.get("messages") is not None:
        msgs = _turns(rec["messages"], "role", "content", rid)
    else:
        text = rec.get("caption") if rec.get("caption") is not None else rec.get("text")
        msgs = [Message("text", IMAGE_TAG * len(refs) + _text(text, rid, "'caption' / 'text'"))]
    if refs and not any(IMAGE_TAG in m.content for m in msgs):  # LLaVA's rule: 1st user turn
        first = next((i for i, m in enumerate(msgs) if m.role == "user"), None)
        if first is not None:
            msgs[first] = Message("user", (IMAGE_TAG + "\n") * len(refs) + msgs[first].content)
    ex = Example(rid, ctx.kind or ("caption" if refs else "text"), tuple(msgs))
    return with_images(ex, refs, _load(ctx))


def _turns(conv: Any, role_key: str, content_key: str, rid: str) -> list[Message]:
    if not isinstance(conv, list) or not conv:
        raise BadRecord("bad_conversation", "empty or not a list of turns", rid)
    msgs = []
    for j, turn in enumerate(conv):
        role = ROLES.get(turn.get(role_key)) if isinstance(turn, dict) else None
        if role is None:
            raise BadRecord(
                "bad_conversation", f"turn {j}: {role_key!r} not one of {sorted(ROLES)}", rid
            )
        content = turn.get(content_key)
        if isinstance(content, list):
            text = _parts(content, j, rid)
        else:
            text = _text(content, rid, f"turn {j} {content_key!r}").replace(LLAVA_TAG, IMAGE_TAG)
        msgs.append(Message(role, text))
    return msgs


def _parts(parts: list, j: int, rid: str) -> str:
    """OpenAI content parts -> text: an image part is IMAGE_TAG, followed by "\n" unless the next
    part starts with white space (LLaVA's "<image>\\n" layout); text parts are kept as they are."""
    out = ""
    for k, p in enumerate(parts):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "image":
            piece = IMAGE_TAG
        elif kind == "text":
            piece = _text(p.get("text"), rid, f"turn {j} part {k} 'text'")
        else:
            raise BadRecord("bad_conversation", f"turn {j} part {k}: type {kind!r}", rid)
        if out.endswith(IMAGE_TAG) and not piece[:1].isspace():
            out += "\n"
        out += piece
    return out


# --- obelics (interleaved documents) ---------------------------------------------------------


def obelics_items(file: str, name: str, ctx: ImportContext) -> Iterator[Item]:
    """One OBELICS-layout parquet file: one interleaved document per row."""
    return _items(file, name, ctx, ("id", "texts", "images"), ("texts",), _obelics_example)


def _obelics_example(rec: dict, rid: str, ctx: ImportContext) -> Example:
    texts, images = rec.get("texts"), rec.get("images")
    if not (isinstance(texts, list) and isinstance(images, list) and len(texts) == len(images)):
        raise BadRecord("bad_conversation", "'texts' and 'images' must be lists of one length", rid)
    pieces, refs = [], []
    for j, (text, image) in enumerate(zip(texts, images)):
        if text is not None and image is not None:
            raise BadRecord("bad_conversation", f"position {j} holds a text and an image", rid)
        if image is not None:
            pieces.append(IMAGE_TAG)
            refs.append(image)
        elif text is not None:  # a position with neither holds nothing to lose
            pieces.append(_text(text, rid, f"texts[{j}]"))
    ex = Example(rid, ctx.kind or "interleaved", (Message("text", "\n".join(pieces)),))
    return with_images(ex, refs, _load(ctx))


# --- text: parquet `text` column, .txt files ---------------------------------------------------


def text_parquet_items(file: str, name: str, ctx: ImportContext) -> Iterator[Item]:
    """A parquet file's `text` column: one text record per row."""
    return _items(file, name, ctx, ("id", "text"), ("text",), _text_example)


def _text_example(rec: dict, rid: str, ctx: ImportContext) -> Example:
    return Example(rid, ctx.kind or "text", (Message("text", _text(rec["text"], rid, "'text'")),))


def text_txt_items(file: str, name: str, ctx: ImportContext) -> Iterator[Item]:
    """A .txt file (.gz / .zst too) is one document, named by the file."""
    yield name, lambda: _txt_example(file, name, ctx)


def _txt_example(file: str, name: str, ctx: ImportContext) -> Example:
    with open_binary(file) as f:
        raw = f.read().removeprefix(b"\xef\xbb\xbf")
    return Example(name, ctx.kind or "text", (Message("text", _text(raw, name, "the file")),))
