"""What every importer shares: the skip policy (SkipCounter), the import context (image root, pixel
cap, kind), safe image loading, record ids, UTF-8 checks and JSON / JSON-lines reading.

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
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from dsvl_jax.data import records
from dsvl_jax.data.inputs import InputNotFound, open_binary
from dsvl_jax.data.records import BadRecord, Example
from dsvl_jax.errors import Error
from dsvl_jax.jsonfile import TOO_DEEP  # JSON past the recursion limit: one bad record, not a crash

DEFAULT_MAX_SKIP_RATE = 0.1
EARLY_CHECK_AFTER = 200  # records seen before the skip-rate cap is checked mid-import
# one record's build: (its fallback id, a thunk that builds the Example or raises BadRecord)
Item = tuple[str, Callable[[], Example]]

__all__ = ["InputNotFound"]


class SkipRateExceeded(Error, RuntimeError):
    """Too many records of one input were bad: the input is probably wrong (paths, format, root)."""


@dataclasses.dataclass
class SkipCounter:
    """Tally of one source (one input path): records written, and skipped ones by reason and id."""

    source: str
    max_skip_rate: float | None = DEFAULT_MAX_SKIP_RATE
    min_seen: int = EARLY_CHECK_AFTER
    written: int = 0
    images_written: int = 0
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

    def add_written(self, images: int = 0) -> None:
        self.written += 1
        self.images_written += images
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
            "images_written": self.images_written,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_ids": list(self.skipped_ids),
        }

    def merge(self, report: dict) -> None:
        """Add another counter's report (one unit of a parallel import), then apply the cap."""
        self.written += report["written"]
        self.images_written += report["images_written"]
        self.skipped.update(report["skipped"])
        self.skipped_ids.extend(report["skipped_ids"])
        if self.seen >= self.min_seen:
            self.check()

    def summary(self) -> str:
        reasons = ", ".join(f"{r}={c}" for r, c in sorted(self.skipped.items()))
        return f"{self.written} written, {self.num_skipped} skipped" + (
            f" ({reasons})" if reasons else ""
        )


@dataclasses.dataclass(frozen=True)
class ImportContext:
    """How one import reads its records: where image paths resolve, the pixel cap, the kind override
    (None: the format's default), the PDF render dpi. Picklable: parallel workers get a copy."""

    images: str  # resolved image root
    max_pixels: int = records.DEFAULT_MAX_PIXELS
    kind: str | None = None
    dpi: int = 96

    def load(self, refs: Iterable[Any], record_id: str) -> tuple[bytes, ...]:
        """The checked bytes of image paths `refs` under the image root."""
        return tuple(load_image(r, Path(self.images), record_id, self.max_pixels) for r in refs)

    def check_bytes(self, data: Any, record_id: str, what: str = "image") -> bytes:
        """Embedded image bytes (parquet, tar members), checked like files are."""
        if not isinstance(data, (bytes, bytearray)):
            raise BadRecord(
                "image_missing", f"{what} has no bytes ({type(data).__name__})", record_id
            )
        records.decode_image(bytes(data), self.max_pixels, record_id)
        return bytes(data)


def parse_then(parse: Callable[[], Any], build, fallback_id: str) -> Callable[[], Example]:
    def run() -> Example:
        rec = parse()
        return build(rec, record_id(rec, fallback_id))

    return run


def skip_policy(
    items: Iterable[Item], counter: SkipCounter, final_check: bool = True
) -> Iterator[Example]:
    """Run each record's builder; a BadRecord is counted (with the fallback id if it has none)."""
    for rid, build in items:
        try:
            ex = records.validate(build())
        except BadRecord as e:
            e.record_id = e.record_id or rid
            counter.add_skipped(e)
            continue
        except RecursionError:  # a record the parser took but a builder walks recursively
            counter.add_skipped(BadRecord("bad_conversation", f"record is {TOO_DEEP}", rid))
            continue
        counter.add_written(len(ex.images))
        yield ex
    if final_check:
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


def with_images(ex: Example, refs: list, load) -> Example:
    """Structure first (cheap, with placeholder images), then read and check the image files."""
    records.validate(dataclasses.replace(ex, images=(b"",) * len(refs)))
    return dataclasses.replace(ex, images=load(refs, ex.id))


# --- record ids, text, JSON --------------------------------------------------------------------------


def record_id(rec: Any, fallback: str) -> str:
    rid = rec.get("id") if isinstance(rec, dict) else None
    if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid):
        # printable even if not UTF-8
        return str(rid).encode("utf-8", "backslashreplace").decode("utf-8")
    return fallback


def check_utf8(obj: Any, rid: str) -> None:
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
            check_utf8(k, rid)
            check_utf8(v, rid)
    elif isinstance(obj, list):
        for v in obj:
            check_utf8(v, rid)


def is_json_list(path: str) -> bool:
    with open_binary(path) as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def json_list_items(path: str, name: str = "") -> Iterator[tuple[str, Callable[[], Any]]]:
    """A JSON list file, decoded leniently so that one record's bad bytes cost only that record."""
    name = name or os.path.basename(path)
    with open_binary(path) as f:
        raw = f.read()
    text = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: not valid JSON ({e}); expected a list of records or JSON lines"
        ) from None
    except RecursionError:  # one list: no record boundaries to skip by
        raise ValueError(f"{path}: {TOO_DEEP}; expected a list of records or JSON lines") from None
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: top-level JSON is a {type(data).__name__}, expected a list of records"
        )
    for i, rec in enumerate(data):
        yield f"{name}[{i}]", (lambda rec=rec: rec)


def jsonl_items(path: str, name: str = "") -> Iterator[tuple[str, Callable[[], Any]]]:
    """JSON lines (optionally .gz / .zst), read as bytes and decoded per line: a bad line is one bad
    record, not a dead file. Ids fall back to `<name>:<line>`."""
    name = name or os.path.basename(path)
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            raw = raw.removeprefix(b"\xef\xbb\xbf") if lineno == 1 else raw
            if raw.strip():
                yield (
                    f"{name}:{lineno}",
                    (lambda raw=raw, rid=f"{name}:{lineno}": parse_line(raw, rid)),
                )


def parse_line(raw: bytes, rid: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        # name the record by its own id when the rest of the line still parses
        with contextlib.suppress(json.JSONDecodeError, RecursionError):
            rid = record_id(json.loads(raw.decode("utf-8", "surrogateescape")), rid)
        raise BadRecord("bad_utf8", f"line is not valid UTF-8: {e}", rid) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRecord("bad_conversation", f"line is not JSON: {e}", rid) from None
    except RecursionError:
        raise BadRecord("bad_conversation", f"line is {TOO_DEEP}", rid) from None


def is_heldout(record_id: str, share: float) -> bool:
    """A stable, id-based draw: the same record falls on the same side on every machine and rerun."""
    h = int.from_bytes(hashlib.sha256(record_id.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < share
