"""MMC4 documents -> one "interleaved" Example each (the `mmc4` import format).

Input: JSON lines (.jsonl, optionally .gz / .zst) or a JSON list (.json) of documents
`{"text_list": [sentence, ...], "image_info": [{"image_name", "matched_text_index", ...}], "id"?, ...}`.
MMC4 ships its images apart from the text, so `image_name` resolves under the image root
(`--images`).

Record (the embedded interleaved corpus's shape): one "text" message holding the document in order,
one line per sentence and one line per image: each image's IMAGE_TAG goes on the line right before
its matched sentence, several images of one sentence in their `image_info` order; the images follow
the order of their tags. A document is never cut: splitting one longer than a row is the trainer's
job (data/splitting.py). A document without images stays a (text-only) interleaved record.

Id: the document's `id` field, else `<file name>:<line>` (`<file name>[<index>]` in a JSON list).
Bad documents are skipped whole: an image file missing or unreadable (reason names the file),
`matched_text_index` out of range or a malformed field (bad_conversation), invalid UTF-8 (bad_utf8),
no sentence with text (empty_text).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dsvl_jax.data.import_common import (
    ImportContext,
    Item,
    check_utf8,
    is_json_list,
    json_list_items,
    jsonl_items,
    parse_then,
    with_images,
)
from dsvl_jax.data.records import IMAGE_TAG, BadRecord, Example, Message

SUFFIXES = (".jsonl", ".json")


def items(file: str, name: str, ctx: ImportContext) -> Iterator[Item]:
    """One record per document of `file`, in file order."""
    raw = json_list_items(file, name) if is_json_list(file) else jsonl_items(file, name)
    for rid, parse in raw:
        yield rid, parse_then(parse, lambda rec, rid: document_example(rec, rid, ctx), rid)


def document_example(rec: Any, rid: str, ctx: ImportContext) -> Example:
    """One MMC4 document -> an interleaved Example with its images read and checked."""
    if not isinstance(rec, dict):
        raise BadRecord("bad_conversation", f"record is a {type(rec).__name__}, not an object", rid)
    check_utf8(rec, rid)
    sentences = rec.get("text_list")
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise BadRecord("bad_conversation", "'text_list' must be a list of strings", rid)
    if not any(s.strip() for s in sentences):
        raise BadRecord("empty_text", "'text_list' holds no text", rid)
    placed = _placed_images(rec.get("image_info") or [], len(sentences), rid)
    lines, refs = [], []
    for i, sentence in enumerate(sentences):
        for name in placed.get(i, ()):
            lines.append(IMAGE_TAG)
            refs.append(name)
        lines.append(sentence)
    ex = Example(rid, ctx.kind or "interleaved", (Message("text", "\n".join(lines)),))
    return with_images(ex, refs, ctx.load)


def _placed_images(info: Any, n_sentences: int, rid: str) -> dict[int, list[str]]:
    """sentence index -> the image names matched to it, in `image_info` order."""
    if not isinstance(info, list):
        raise BadRecord("bad_conversation", "'image_info' must be a list", rid)
    placed: dict[int, list[str]] = {}
    for j, img in enumerate(info):
        name = img.get("image_name") if isinstance(img, dict) else None
        idx = img.get("matched_text_index") if isinstance(img, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRecord("bad_conversation", f"image_info[{j}] has no 'image_name' string", rid)
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < n_sentences:
            raise BadRecord(
                "bad_conversation",
                f"image_info[{j}] ({name}): matched_text_index {idx!r} is not in "
                f"[0, {n_sentences}) (the text_list)",
                rid,
            )
        placed.setdefault(idx, []).append(name)
    return placed
