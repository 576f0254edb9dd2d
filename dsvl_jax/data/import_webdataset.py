"""The `webdataset` format: tar shards as img2dataset writes them -> one caption Example per sample.

A sample is the run of consecutive tar members sharing a key, the member path up to the first dot of
its file name (`00000/000000123.jpg`, `.txt`, `.json` -> key `00000/000000123`). Its image is the
`.jpg|.jpeg|.png|.webp` member, its caption `<key>.txt` (UTF-8) or else the "caption" / "text" field
of `<key>.json`. The record id is the key as is: img2dataset numbers keys across the shards of one
download (shard id + index), so they are unique within a dataset without the shard name; import
datasets whose keys may collide into separate outputs. The tar is read as a stream (`.tar.gz` /
`.tar.zst` too), one sample in memory at a time, and nothing is extracted to disk. A tar that breaks
off mid-stream is an error naming the file and the last good sample: its tail cannot be counted.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator

from dsvl_jax.data.import_common import ImportContext, Item
from dsvl_jax.data.inputs import open_binary
from dsvl_jax.data.records import IMAGE_TAG, BadRecord, Example, Message

SUFFIXES = (".tar",)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def split_key(member: str) -> tuple[str, str]:
    """`dir/000123.seg.png` -> (`dir/000123`, `seg.png`): webdataset's key / extension rule."""
    head, base = posixpath.split(member)
    stem, _, ext = base.partition(".")
    return posixpath.join(head, stem), ext.lower()


def samples(file: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: member bytes}) per run of consecutive members with one key, in tar order."""
    key, parts, last = None, {}, None
    with open_binary(file) as raw:
        f = _Counting(raw)
        try:
            with tarfile.open(fileobj=f, mode="r|") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    k, ext = split_key(m.name)
                    if k != key and key is not None:
                        yield key, parts
                        last, parts = key, {}
                    key = k
                    parts[ext] = tar.extractfile(m).read()
                # tarfile ends quietly at a header cut short: only the end-of-archive block is an end
                while f.read(1 << 20):
                    pass
                if f.count - tar.offset < tarfile.BLOCKSIZE:
                    raise tarfile.ReadError(f"no end-of-archive block at byte {tar.offset}")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ValueError(
                f"{file}: the tar stream breaks off "
                + (f"after sample {last!r}" if last else "before its first sample")
                + f": {type(e).__name__}: {e}"
            ) from None
    if key is not None:
        yield key, parts


class _Counting:
    """A stream that counts the bytes read through it (where the tar data ends)."""

    def __init__(self, f):
        self.f, self.count = f, 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.count += len(data)
        return data


def items(file: str, name: str, ctx: ImportContext) -> Iterator[Item]:
    """One tar shard: one record per sample key; a key seen earlier in the shard is a bad record."""
    seen: set[str] = set()
    for key, parts in samples(file):
        dup = key in seen
        seen.add(key)
        yield key, (lambda key=key, parts=parts, dup=dup: _example(key, parts, dup, ctx))


def _example(key: str, parts: dict[str, bytes], dup: bool, ctx: ImportContext) -> Example:
    if dup:
        raise BadRecord("bad_conversation", "key appears again after other samples", key)
    images = [ext for ext in parts if ext in IMAGE_EXTS]
    if not images:
        raise BadRecord("image_missing", f"no image member ({'/'.join(IMAGE_EXTS)})", key)
    if len(images) > 1:
        raise BadRecord("image_count_mismatch", f"{len(images)} image members {images}", key)
    text = Message("text", IMAGE_TAG + _caption(parts, key))
    image = ctx.check_bytes(parts[images[0]], key, f"member {key}.{images[0]}")
    return Example(key, ctx.kind or "caption", (text,), (image,))


def _caption(parts: dict[str, bytes], key: str) -> str:
    if "txt" in parts:
        return _utf8(parts["txt"], key, "txt")
    if "json" in parts:
        try:
            meta = json.loads(_utf8(parts["json"], key, "json"))
        except json.JSONDecodeError as e:
            raise BadRecord("bad_conversation", f"{key}.json is not JSON: {e}", key) from None
        text = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
        if isinstance(text, str):
            return text
    raise BadRecord("bad_conversation", "no caption (.txt, or .json 'caption' / 'text')", key)


def _utf8(data: bytes, key: str, ext: str) -> str:
    try:
        return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord("bad_utf8", f"{key}.{ext} is not valid UTF-8: {e}", key) from None
