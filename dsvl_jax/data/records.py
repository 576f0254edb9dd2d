"""The one record schema every source, importer, builder and the pipeline share.

A record is one training example: an id, its corpus kind, a list of messages and the encoded
images the messages refer to, in order, through `IMAGE_TAG`. Images stay encoded (PNG/JPEG bytes)
on disk and are decoded in the loader, so shards stay small and a bad image costs one record.

Roles: "text" is pretraining text (loss on every token: captions, OCR targets, PDF text layers,
interleaved documents, text-only corpora); "user"/"assistant" (and an optional leading "system")
form an SFT conversation (loss on assistant answers only).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import warnings

import numpy as np
from PIL import Image

IMAGE_TAG = "<image_placeholder>"
KINDS = ("screenshot", "pdf", "ocr", "chart", "interleaved", "caption", "text")
MULTIMODAL_KINDS = tuple(k for k in KINDS if k != "text")
ROLES = ("system", "user", "assistant", "text")
DEFAULT_MAX_PIXELS = 64_000_000  # decompression-bomb guard: ~8000x8000


class BadRecord(ValueError):
    """A record that the skip policy drops and counts. `reason` is a short stable key for reports."""

    REASONS = (
        "image_missing",
        "image_empty",
        "image_corrupt",
        "not_an_image",
        "image_too_large",
        "image_path_escape",
        "image_count_mismatch",
        "bad_conversation",
        "bad_utf8",
        "empty_text",
    )

    def __init__(self, reason: str, detail: str = "", record_id: str = ""):
        if reason not in self.REASONS:
            raise ValueError(f"unknown BadRecord reason {reason!r}; one of {self.REASONS}")
        self.reason, self.detail, self.record_id = reason, detail, record_id
        super().__init__(f"record {record_id or '?'}: {reason}: {detail}")


@dataclasses.dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    kind: str
    messages: tuple[Message, ...]
    images: tuple[bytes, ...] = ()

    @property
    def is_multimodal(self) -> bool:
        return bool(self.images)


def validate(ex: Example) -> Example:
    """Structural checks (no image decode): known kind/roles, conversation order, tag count == images."""
    if ex.kind not in KINDS:
        raise BadRecord("bad_conversation", f"kind {ex.kind!r} is not one of {KINDS}", ex.id)
    if not ex.messages:
        raise BadRecord("bad_conversation", "no messages", ex.id)
    roles = [m.role for m in ex.messages]
    for m in ex.messages:
        if m.role not in ROLES:
            raise BadRecord("bad_conversation", f"role {m.role!r} is not one of {ROLES}", ex.id)
        if not isinstance(m.content, str):
            raise BadRecord(
                "bad_conversation", f"content of a {m.role} message is not a string", ex.id
            )
    if "text" in roles:
        if set(roles) != {"text"}:
            raise BadRecord(
                "bad_conversation", "'text' messages cannot mix with conversation roles", ex.id
            )
    else:
        turns = roles[1:] if roles[0] == "system" else roles
        if (
            not turns
            or len(turns) % 2
            or any(r != ("user", "assistant")[i % 2] for i, r in enumerate(turns))
        ):
            raise BadRecord(
                "bad_conversation", f"roles must alternate user/assistant, got {roles}", ex.id
            )
    if not any(m.content.replace(IMAGE_TAG, "").strip() for m in ex.messages):
        raise BadRecord("empty_text", "no text besides image tags", ex.id)
    tags = sum(m.content.count(IMAGE_TAG) for m in ex.messages)
    if tags != len(ex.images):
        raise BadRecord(
            "image_count_mismatch", f"{tags} {IMAGE_TAG} tags but {len(ex.images)} images", ex.id
        )
    return ex


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, record_id: str = ""
) -> Image.Image:
    """Encoded bytes -> RGB PIL image. The size is checked from the header before any pixel is decoded."""

    if not data:
        raise BadRecord("image_empty", "0 bytes", record_id)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombWarning as e:
        raise BadRecord("image_too_large", str(e), record_id) from None
    except Image.DecompressionBombError as e:
        raise BadRecord("image_too_large", str(e), record_id) from None
    # PIL raises UnidentifiedImageError, OSError, SyntaxError... for non-images
    except Exception as e:  # noqa: BLE001
        # PIL names the in-memory buffer by address: drop it so reports are reproducible
        msg = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e))
        raise BadRecord("not_an_image", f"{type(e).__name__}: {msg}", record_id) from None
    w, h = im.size
    if w * h > max_pixels or w <= 0 or h <= 0:
        raise BadRecord(
            "image_too_large", f"{w}x{h} = {w * h} pixels > limit {max_pixels}", record_id
        )
    try:
        im.load()
        return im.convert("RGB")
    except Exception as e:  # noqa: BLE001 - any decoder failure is a corrupt image, skipped and counted
        raise BadRecord("image_corrupt", f"{type(e).__name__}: {e}", record_id) from None


# --- on-disk form (tfds FeaturesDict / ArrayRecord) -------------------------------------------


def to_features(ex: Example) -> dict:
    """Example -> the dict a tfds builder yields (see `features()`)."""
    return {
        "id": ex.id,
        "kind": ex.kind,
        "messages": json.dumps([dataclasses.asdict(m) for m in ex.messages], ensure_ascii=False),
        "images": list(ex.images),
    }


def features():
    """tfds features: strings as Text, images as a sequence of encoded bytes (no TensorFlow needed)."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {
            "id": tfds.features.Text(),
            "kind": tfds.features.Text(),
            "messages": tfds.features.Text(),
            "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
        }
    )


def from_features(d: dict) -> Example:
    """A decoded tfds record (strings come back as bytes) -> Example."""
    s = lambda x: x.decode("utf-8") if isinstance(x, bytes) else str(x)  # noqa: E731
    msgs = tuple(Message(m["role"], m["content"]) for m in json.loads(s(d["messages"])))
    return Example(
        id=s(d["id"]), kind=s(d["kind"]), messages=msgs, images=tuple(bytes(b) for b in d["images"])
    )
