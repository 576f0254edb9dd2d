"""Image + transcription pairs -> one "ocr" Example per image (the `ocr` import format).

Input: a folder (or glob) of images (.png / .jpg / .jpeg / .webp), each with its transcription next to
it under the same stem: `page.mmd` (Nougat's markdown output) or `page.txt`; `.mmd` wins when both
exist, since it keeps the layout (headings, tables, formulas) that plain text drops. The image is
the input file itself, so `--images` plays no part.

Record (the embedded ocr corpus's shape): one "text" message, IMAGE_TAG + the transcription
(trailing whitespace removed). Id: the image's path relative to the input root, without its suffix
(`scans/page_007.png` -> `scans/page_007`).

Bad pairs are skipped: no transcription file, or one with no text (empty_text); a transcription that
is not UTF-8 (bad_utf8); an empty, truncated or oversized image (ctx.check_bytes's reason).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from dsvl_jax.data.import_common import ImportContext, Item
from dsvl_jax.data.records import IMAGE_TAG, BadRecord, Example, Message

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TRANSCRIPTS = (".mmd", ".txt")  # looked for in this order


def items(file: str, name: str, ctx: ImportContext) -> Iterator[Item]:
    """One image file -> its single record."""
    rid = os.path.splitext(name)[0]
    yield rid, (lambda: ocr_example(file, rid, ctx))


def ocr_example(file: str, rid: str, ctx: ImportContext) -> Example:
    text = transcription(Path(file), rid)
    try:
        data = Path(file).read_bytes()
    except OSError as e:
        raise BadRecord("image_missing", f"{file}: {type(e).__name__}: {e}", rid) from None
    image = ctx.check_bytes(data, rid)
    return Example(rid, ctx.kind or "ocr", (Message("text", IMAGE_TAG + text),), (image,))


def transcription(image: Path, rid: str) -> str:
    """The text of the image's sibling `.mmd` (preferred) or `.txt` file."""
    found = [image.with_suffix(s) for s in TRANSCRIPTS if image.with_suffix(s).is_file()]
    if not found:
        raise BadRecord(
            "empty_text", f"no transcription: neither {image.stem}.mmd nor {image.stem}.txt", rid
        )
    path = found[0]
    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff").rstrip()
    except UnicodeDecodeError as e:
        raise BadRecord("bad_utf8", f"{path.name} is not UTF-8: {e}", rid) from None
    except OSError as e:
        raise BadRecord("empty_text", f"{path.name}: {type(e).__name__}: {e}", rid) from None
    if not text.strip():
        raise BadRecord("empty_text", f"{path.name} holds no text", rid)
    return text
