"""The mmc4 (interleaved documents) and ocr (image + transcription) import formats, end to end.

Each input holds good records and planted bad ones; the report must name exactly the bad ids with
their reasons, and the good records must read back from the shards as expected (images
byte-identical, tags where their images go).
"""

import gzip
import io
import json

import numpy as np
from PIL import Image

from dsvl_jax.data import builders, importers, shards
from dsvl_jax.data.records import IMAGE_TAG, Example, Message

ROW_TOKENS = 4096  # stage-2 seq_len (experiments/stage2_pretrain.py)
IMAGE_TOKENS = 576


def _image(w=24, h=16, seed=0, fmt="PNG") -> bytes:
    px = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format=fmt)
    return buf.getvalue()


def _read_back(result) -> dict[str, Example]:
    src = shards.open_source(result.dataset_dir)
    return {ex.id: ex for ex in (src[i] for i in range(len(src)))}


def _skips(report) -> dict[str, str]:
    return {s["id"]: s["reason"] for s in report["skipped_ids"]}


def _doc(sentences, images, **extra) -> dict:
    info = [{"image_name": n, "matched_text_index": i, "matched_sim": 0.3} for n, i in images]
    return {"text_list": sentences, "image_info": info, **extra}


def _image_root(tmp_path):
    root = tmp_path / "mmc4_images"
    root.mkdir()
    good = {f"img{k}.png": _image(20 + k, 12, seed=k) for k in (0, 1, 3, 4, 5)}
    good["img2.jpg"] = _image(30, 20, seed=2, fmt="JPEG")  # stored as is, not re-encoded
    for name, data in good.items():
        (root / name).write_bytes(data)
    (root / "trunc.png").write_bytes(_image(64, 64, seed=9)[:2000])
    (root / "zero.png").write_bytes(b"")
    return root, good


def _jsonl(docs) -> bytes:
    return b"".join(json.dumps(d).encode() + b"\n" for d in docs)


def test_mmc4_documents_and_planted_bad_records(tmp_path):
    root, good = _image_root(tmp_path)
    s = ["Intro.", "Second.", "Third has no image.", "Fourth.", "Last."]
    # image_info order is not sentence order; images of one sentence keep their image_info order
    six = [("img3.png", 3), ("img0.png", 0), ("img2.jpg", 3), ("img1.png", 1)]
    six += [("img4.png", 4), ("img5.png", 0)]
    docs = [
        _doc(s, six, id="doc6", url="https://example.com/a"),
        _doc(["No id here.", "Pictured."], [("img1.png", 1)], url="https://example.com/b"),
        _doc(["Words."], [("gone.png", 0)], id="missing"),
        _doc(["Words."], [("trunc.png", 0)], id="trunc"),
        _doc(["Words."], [("zero.png", 0)], id="zero"),
        _doc(["caf@@"], [("img0.png", 0)], id="utf8"),
        _doc(["One.", "Two."], [("img0.png", 2)], id="range"),
        _doc(["One."], [("img0.png", -1)], id="negative"),
        _doc([], [], id="notext"),
    ]
    path = tmp_path / "docs.jsonl"
    path.write_bytes(_jsonl(docs).replace(b"caf@@", b"caf\xe9"))
    res = builders.prepare(
        "mmc4", str(path), str(tmp_path / "out"), images=str(root), max_skip_rate=1.0
    )

    rep = res.report
    assert _skips(rep) == {
        "missing": "image_missing",
        "trunc": "image_corrupt",
        "zero": "image_empty",
        "utf8": "bad_utf8",
        "range": "bad_conversation",
        "negative": "bad_conversation",
        "notext": "empty_text",
    }
    details = {d["id"]: d["detail"] for d in rep["skipped_ids"]}
    assert "gone.png" in details["missing"] and "matched_text_index 2" in details["range"]
    assert rep["written"] == 2 and rep["images_written"] == 7

    got = _read_back(res)
    assert list(got) == ["doc6", "docs.jsonl:2"]
    t = IMAGE_TAG
    text = "\n".join(
        [t, t, "Intro.", t, "Second.", "Third has no image.", t, t, "Fourth.", t, "Last."]
    )
    order = ["img0.png", "img5.png", "img1.png", "img3.png", "img2.jpg", "img4.png"]
    assert got["doc6"] == Example(
        "doc6", "interleaved", (Message("text", text),), tuple(good[n] for n in order)
    )
    assert got["docs.jsonl:2"] == Example(
        "docs.jsonl:2",
        "interleaved",
        (Message("text", f"No id here.\n{t}\nPictured."),),
        (good["img1.png"],),
    )


def test_mmc4_gzip_kind_override_and_long_document(tmp_path):
    root, good = _image_root(tmp_path)
    path = tmp_path / "shard-0001.jsonl.gz"
    path.write_bytes(
        gzip.compress(_jsonl([_doc(["A.", "B."], [("img0.png", 1)]), _doc(["Only text."], [])]))
    )
    counter = importers.SkipCounter(str(path), 1.0)
    got = list(importers.import_examples("mmc4", str(path), counter, images=str(root)))
    assert [ex.id for ex in got] == ["shard-0001.jsonl.gz:1", "shard-0001.jsonl.gz:2"]
    assert got[0].messages == (Message("text", f"A.\n{IMAGE_TAG}\nB."),)
    assert got[0].images == (good["img0.png"],) and got[1].images == ()
    counter = importers.SkipCounter(str(path), 1.0)
    kinds = {
        ex.kind
        for ex in importers.import_examples(
            "mmc4", str(path), counter, kind="caption", images=str(root)
        )
    }
    assert kinds == {"caption"}

    # far longer than a training row (words alone > ROW_TOKENS, plus 6 x 576 image tokens): still
    # one Example holding every sentence and image; splitting it is the trainer's job
    sentences = [f"Sentence {i} says something about the pictures." for i in range(ROW_TOKENS // 4)]
    images = [(n, i * 100) for i, n in enumerate(sorted(good))]
    long = tmp_path / "long.jsonl"
    long.write_bytes(_jsonl([_doc(sentences, images, id="long")]))
    counter = importers.SkipCounter(str(long), 1.0)
    (ex,) = importers.import_examples("mmc4", str(long), counter, images=str(root))
    lines = ex.messages[0].content.split("\n")
    assert [ln for ln in lines if ln != IMAGE_TAG] == sentences
    assert len(" ".join(sentences).split()) + IMAGE_TOKENS * len(images) > ROW_TOKENS
    assert ex.images == tuple(good[n] for n in sorted(good)) and counter.images_written == 6


def test_ocr_folder_pairs(tmp_path):
    d = tmp_path / "scans"
    (d / "sub").mkdir(parents=True)
    files = {
        "a.png": _image(seed=1),
        "sub/b.jpg": _image(40, 30, seed=2, fmt="JPEG"),
        "c.webp": _image(16, 16, seed=3, fmt="WEBP"),
        "notext.png": _image(seed=4),
        "trunc.png": _image(64, 64, seed=5)[:2000],
        "zero.png": b"",
        "blank.jpeg": _image(seed=6, fmt="JPEG"),
        "latin.png": _image(seed=7),
    }
    texts = {
        "a.txt": b"Hello\nworld\n",
        "sub/b.mmd": b"# Title\n\n$x^2$ | table\n",  # preferred over b.txt
        "sub/b.txt": b"Title x2 table",
        "c.txt": "\ufeffcaf\u00e9".encode(),
        "trunc.txt": b"cut short",
        "zero.txt": b"nothing drawn",
        "blank.txt": b"  \n\n",
        "latin.txt": b"caf\xe9",
        "orphan.txt": b"a transcription without an image is not an input",
    }
    for name, data in {**files, **texts}.items():
        (d / name).write_bytes(data)
    res = builders.prepare("ocr", str(d), str(tmp_path / "out"), max_skip_rate=1.0)

    rep = res.report
    assert _skips(rep) == {
        "notext": "empty_text",
        "trunc": "image_corrupt",
        "zero": "image_empty",
        "blank": "empty_text",
        "latin": "bad_utf8",
    }
    assert rep["written"] == 3 and rep["images_written"] == 3
    got = _read_back(res)
    t = IMAGE_TAG
    assert got == {
        "a": Example("a", "ocr", (Message("text", t + "Hello\nworld"),), (files["a.png"],)),
        "c": Example("c", "ocr", (Message("text", t + "café"),), (files["c.webp"],)),
        "sub/b": Example(
            "sub/b",
            "ocr",
            (Message("text", t + "# Title\n\n$x^2$ | table"),),
            (files["sub/b.jpg"],),
        ),
    }
