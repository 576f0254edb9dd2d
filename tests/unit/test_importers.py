"""Importers and the skip policy: planted bad records are skipped with the right reason, good ones survive.

Each corpus holds good records and one bad record of each kind; the report must list exactly the bad
ids, and the good records must read back from the ArrayRecord shards identical (images byte-identical).
"""

import io
import json
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dsvl_jax.data import builders, importers, shards
from dsvl_jax.data.records import IMAGE_TAG, Example, Message


def _png(w=24, h=16, seed=0, fmt="PNG") -> bytes:
    px = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format=fmt)
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A tiny valid-looking PNG whose header claims w x h pixels (a decompression bomb's calling card)."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def image_root(tmp_path):
    """images/ with good files and one bad file of each kind, plus files outside it to escape to."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    good = {
        "a.png": _png(seed=1),
        "b.jpg": _png(40, 30, seed=2, fmt="JPEG"),
        "sub/c.png": _png(8, 8, seed=3),
    }
    for name, data in good.items():
        (root / name).write_bytes(data)
    (root / "empty.png").write_bytes(b"")
    (root / "trunc.png").write_bytes(_png(64, 64, seed=4)[:2000])
    (root / "notimg.png").write_bytes(b"just some notes, not pixels\n")
    (root / "huge.png").write_bytes(_png_header_only(9000, 9000))  # 81M px > default 64M limit
    (tmp_path / "escape.png").write_bytes(_png(seed=5))
    os.symlink(tmp_path / "escape.png", root / "link.png")
    return root, good


def _conv(*turns):
    return [{"from": f, "value": v} for f, v in turns]


def _read_back(result):
    src = shards.open_source(os.path.dirname(os.path.dirname(result.dataset_dir)))
    assert src.dataset_dir == os.path.abspath(result.dataset_dir)
    return {ex.id: ex for ex in (src[i] for i in range(len(src)))}, src


def test_llava_planted_bad_records(tmp_path, image_root):
    root, good = image_root
    q = "<image>\nWhat is this?"
    recs = [
        {"id": "g_one", "image": "a.png", "conversations": _conv(("human", q), ("gpt", "Noise."))},
        {
            "id": "g_two",
            "image": ["b.jpg", "sub/c.png"],
            "conversations": _conv(
                ("human", "<image> vs <image>?"),
                ("gpt", "Different."),
                ("human", "Sure?"),
                ("gpt", "Yes."),
            ),
        },
        {
            "id": "g_notag",
            "image": "a.png",
            "conversations": _conv(("human", "Describe."), ("gpt", "Pixels.")),
        },
        {
            "id": 7,
            "conversations": _conv(("system", "Be brief."), ("human", "Hi"), ("gpt", "Hello")),
        },
        {"id": "missing", "image": "nope.png", "conversations": _conv(("human", q), ("gpt", "x"))},
        {"id": "empty", "image": "empty.png", "conversations": _conv(("human", q), ("gpt", "x"))},
        {"id": "trunc", "image": "trunc.png", "conversations": _conv(("human", q), ("gpt", "x"))},
        {"id": "txt", "image": "notimg.png", "conversations": _conv(("human", q), ("gpt", "x"))},
        {"id": "huge", "image": "huge.png", "conversations": _conv(("human", q), ("gpt", "x"))},
        {
            "id": "dotdot",
            "image": "../escape.png",
            "conversations": _conv(("human", q), ("gpt", "x")),
        },
        {
            "id": "abs",
            "image": str(root / "a.png"),
            "conversations": _conv(("human", q), ("gpt", "x")),
        },
        {"id": "symlink", "image": "link.png", "conversations": _conv(("human", q), ("gpt", "x"))},
        {
            "id": "roles",
            "image": "a.png",
            "conversations": _conv(("human", q), ("human", "again?")),
        },
        {
            "id": "novalue",
            "image": "a.png",
            "conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}],
        },
        {
            "id": "count",
            "image": "a.png",
            "conversations": _conv(("human", "<image><image>"), ("gpt", "x")),
        },
        {"id": "utf8", "conversations": _conv(("human", "@@BAD@@"), ("gpt", "x"))},
    ]
    path = tmp_path / "llava.json"
    # latin-1 byte in one record
    path.write_bytes(json.dumps(recs).encode().replace(b"@@BAD@@", b"caf\xe9"))
    res = builders.prepare(
        "llava", str(path), str(tmp_path / "out"), images=str(root), max_skip_rate=None
    )

    expected_skips = {
        "missing": "image_missing",
        "empty": "image_empty",
        "trunc": "image_corrupt",
        "txt": "not_an_image",
        "huge": "image_too_large",
        "dotdot": "image_path_escape",
        "abs": "image_path_escape",
        "symlink": "image_path_escape",
        "roles": "bad_conversation",
        "novalue": "bad_conversation",
        "count": "image_count_mismatch",
        "utf8": "bad_utf8",
    }
    rep = res.report
    assert {s["id"]: s["reason"] for s in rep["skipped_ids"]} == expected_skips
    assert len(rep["skipped_ids"]) == len(expected_skips) and rep["written"] == 4
    assert (
        sum(rep["skipped"].values()) == len(expected_skips)
        and rep["skipped"]["image_path_escape"] == 3
    )

    got, _ = _read_back(res)
    assert list(got) == ["g_one", "g_two", "g_notag", "7"]  # input order kept
    tag = IMAGE_TAG
    assert got["g_one"] == Example(
        "g_one",
        "caption",
        (Message("user", f"{tag}\nWhat is this?"), Message("assistant", "Noise.")),
        (good["a.png"],),
    )
    # original bytes, JPEG not re-encoded
    assert got["g_two"].images == (good["b.jpg"], good["sub/c.png"])
    assert (
        got["g_two"].messages[0].content == f"{tag} vs {tag}?" and len(got["g_two"].messages) == 4
    )
    assert got["g_notag"].messages[0] == Message("user", f"{tag}\nDescribe.")
    assert got["7"] == Example(
        "7",
        "text",
        (Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello")),
    )


def test_captions_and_text_jsonl(tmp_path, image_root):
    root, good = image_root
    lines = [
        json.dumps({"id": "c1", "image": "a.png", "caption": "random noise"}).encode(),
        json.dumps({"image": "sub/c.png", "text": "tiny"}).encode(),  # no id: named file:line
        b"",
        json.dumps({"id": "c_utf8", "image": "a.png", "caption": "@@"})
        .encode()
        .replace(b"@@", b"\xff\xfe"),
        b'{"id": "c_broken", "image": ',
        json.dumps({"id": "c_nocap", "image": "a.png"}).encode(),
        json.dumps({"id": "c_empty", "image": "a.png", "caption": "  "}).encode(),
        json.dumps({"id": "c_missing", "image": "gone.png", "caption": "x"}).encode(),
    ]
    cap = tmp_path / "caps.jsonl"
    cap.write_bytes(b"\n".join(lines) + b"\n")
    res = builders.prepare(
        "captions", str(cap), str(tmp_path / "caps_out"), images=str(root), max_skip_rate=None
    )
    assert {s["id"]: s["reason"] for s in res.report["skipped_ids"]} == {
        "c_utf8": "bad_utf8",
        "caps.jsonl:5": "bad_conversation",
        "c_nocap": "bad_conversation",
        "c_empty": "empty_text",
        "c_missing": "image_missing",
    }
    got, _ = _read_back(res)
    assert got == {
        "c1": Example(
            "c1", "caption", (Message("text", IMAGE_TAG + "random noise"),), (good["a.png"],)
        ),
        "caps.jsonl:2": Example(
            "caps.jsonl:2", "caption", (Message("text", IMAGE_TAG + "tiny"),), (good["sub/c.png"],)
        ),
    }

    txt = tmp_path / "text.jsonl"
    txt.write_bytes(
        b'{"id": "t1", "text": "plain words"}\n{"text": "caf\xe9"}\n{"text": "\xc3\xa9t\xc3\xa9"}\n'
        b'{"id": "t_list", "text": ["no"]}\n'
    )
    res = builders.prepare("text", str(txt), str(tmp_path / "text_out"), max_skip_rate=None)
    assert {s["id"]: s["reason"] for s in res.report["skipped_ids"]} == {
        "text.jsonl:2": "bad_utf8",
        "t_list": "bad_conversation",
    }
    got, _ = _read_back(res)
    assert got == {
        "t1": Example("t1", "text", (Message("text", "plain words"),)),
        "text.jsonl:3": Example("text.jsonl:3", "text", (Message("text", "été"),)),
    }


def test_pdf_folder(tmp_path):
    from dsvl_jax.data.pdf import make_pdf

    d = tmp_path / "pdfs"
    (d / "sub").mkdir(parents=True)
    (d / "doc.pdf").write_bytes(make_pdf(["Hello page one", ""]))  # second page has no text layer
    (d / "sub" / "two.pdf").write_bytes(make_pdf(["Second document"]))
    (d / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
    (d / "notes.txt").write_text("ignored: not a .pdf")
    res = builders.prepare("pdf", str(d), str(tmp_path / "out"), dpi=24, max_skip_rate=None)
    assert {s["id"]: s["reason"] for s in res.report["skipped_ids"]} == {
        "broken.pdf": "image_corrupt",
        "doc.pdf#p1": "empty_text",
    }
    got, _ = _read_back(res)
    assert list(got) == ["doc.pdf#p0", "sub/two.pdf#p0"]
    ex = got["doc.pdf#p0"]
    assert ex.kind == "pdf" and ex.messages == (Message("text", IMAGE_TAG + "Hello page one"),)
    w, h = Image.open(io.BytesIO(ex.images[0])).size  # A4 at 24 dpi (PDFium may round up a pixel)
    assert abs(w - 595 * 24 / 72) <= 1 and abs(h - 842 * 24 / 72) <= 1


def test_skip_rate_cap_names_input_rate_and_cap(tmp_path):
    path = tmp_path / "mostly_bad.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": "ok" if i < 2 else ""}) + "\n" for i in range(8))
    )
    with pytest.raises(importers.SkipRateExceeded) as e:  # 6 of 8 empty: 75% > 25%
        builders.prepare("text", str(path), str(tmp_path / "out"), max_skip_rate=0.25)
    msg = str(e.value)
    assert str(path) in msg and "75.0%" in msg and "25.0%" in msg and "empty_text=6" in msg
    # nothing half-written is kept
    assert not os.path.exists(tmp_path / "out" / "dsvl_imported" / "1.0.0")

    # Early stop: the cap is checked once min_seen records were seen, long before the end of the file.
    path.write_text(
        "not json\n" * 5 + "".join(json.dumps({"text": "fine"}) + "\n" for _ in range(100))
    )
    counter = importers.SkipCounter(str(path), max_skip_rate=0.5, min_seen=5)
    with pytest.raises(importers.SkipRateExceeded, match="skipped 5 of 5 records"):
        list(importers.import_examples("text", str(path), counter))
    assert counter.written == 0


def test_source_reopen_pickle_and_overwrite(tmp_path):
    """Two imports in one process land in their own data_dirs; sources pickle; reuse needs --overwrite."""
    import grain

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"id": "x", "text": "from a"}) + "\n")
    b.write_text(
        "".join(json.dumps({"id": f"y{i}", "text": f"from b {i}"}) + "\n" for i in range(3))
    )
    ra = builders.prepare("text", str(a), str(tmp_path / "A"))
    rb = builders.prepare("text", str(b), str(tmp_path / "B"))
    sa, sb = shards.open_source(str(tmp_path / "A")), shards.open_source(rb.dataset_dir)
    assert (
        (len(sa), len(sb)) == (1, 3) and sa[0].messages[0].content == "from a" and sb[-1].id == "y2"
    )
    files = sorted(os.listdir(rb.dataset_dir))
    assert "dataset_info.json" in files and any(".array_record-00000-of-" in f for f in files)
    assert sorted(os.listdir(tmp_path / "B")) == ["dsvl_imported"]  # no stray downloads/ folder
    clone = pickle.loads(pickle.dumps(sb))
    assert [clone[i] for i in range(3)] == [sb[i] for i in range(3)]
    ds = grain.MapDataset.source(sb).shuffle(seed=0)
    assert sorted(ex.id for ex in ds) == ["y0", "y1", "y2"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        builders.prepare("text", str(b), str(tmp_path / "A"))
    builders.prepare("text", str(b), str(tmp_path / "A"), overwrite=True)
    assert len(shards.open_source(str(tmp_path / "A"))) == 3
    assert ra.report["written"] == 1


def test_holdout_split_by_record_id(tmp_path):
    """prepare --holdout: a stable id-drawn share goes to OUT/heldout/, disjoint from the rest and together
    the whole input; generate --holdout draws new records of each kind there."""
    txt = tmp_path / "text.jsonl"
    txt.write_text(
        "".join(json.dumps({"id": f"t{i}", "text": f"words {i}"}) + "\n" for i in range(200))
    )
    res = builders.prepare("text", str(txt), str(tmp_path / "out"), holdout=0.2)
    train = {ex.id for ex in shards.iter_examples([res.dataset_dir])}
    held = {ex.id for ex in shards.iter_examples([res.report["heldout_dir"]])}
    assert res.report["heldout_dir"].startswith(str(tmp_path / "out" / "heldout"))
    assert not train & held and train | held == {f"t{i}" for i in range(200)}
    assert 20 <= len(held) == res.report["heldout_records"] <= 60
    assert held == {f"t{i}" for i in range(200) if builders.is_heldout(f"t{i}", 0.2)}
    # OUT opens as the training split (its heldout/ is not part of it), OUT/heldout as the held-out one
    assert len(shards.open_source(str(tmp_path / "out"))) == len(train)
    assert len(shards.open_source(str(tmp_path / "out" / "heldout"))) == len(held)
    dirs = builders.generate_corpus(("caption",), str(tmp_path / "gen"), n=8, holdout=0.25)
    held_dir = tmp_path / "gen" / "dsvl_caption" / "heldout"
    got = {
        ex.id
        for ex in shards.iter_examples([str(p.parent) for p in held_dir.rglob("dataset_info.json")])
    }
    assert len(got) == 2 and not got & {ex.id for ex in shards.iter_examples(dirs.values())}
