"""webdataset / parquet / obelics / text (gz, zst, parquet, .txt) imports, end to end through prepare.

Each input holds good records and planted bad ones (truncated, zero-byte and missing images, text
that is not UTF-8, an image file that is not there); the report must name exactly the bad ids with
their reasons, and the good records must read back with the image bytes that were written.
"""

import gzip
import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from PIL import Image

from dsvl_jax.data import builders, importers, shards
from dsvl_jax.data.records import IMAGE_TAG, Example, Message

T = IMAGE_TAG


def _img(seed: int, fmt: str = "PNG") -> bytes:
    px = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format=fmt)
    return buf.getvalue()


GOOD = {i: _img(i) for i in range(6)}
JPEG = _img(9, "JPEG")
TRUNC = _img(7)[:100]  # header intact, pixel data cut off


def _prepare(fmt, path, out, **kw):
    res = builders.prepare(fmt, str(path), str(out), max_skip_rate=1.0, **kw)
    skips = {s["id"]: s["reason"] for s in res.report["skipped_ids"]}
    assert len(skips) == len(res.report["skipped_ids"])
    return res.report, skips, {ex.id: ex for ex in shards.iter_examples([res.dataset_dir])}


def _tar(path, members, opener=open):
    with opener(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _bad_utf8_strings(values):
    """A string column holding bytes that are not UTF-8 (pyarrow checks nothing when built this way)."""
    b = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(b), b.buffers(), null_count=b.null_count)


def test_webdataset_tar_shards(tmp_path):
    d = tmp_path / "wds"
    d.mkdir()
    _tar(
        d / "00000.tar",
        [
            ("000000000.jpg", JPEG),
            ("000000000.txt", b"a noisy photo"),
            ("000000000.json", b'{"caption": "ignored: .txt wins"}'),
            ("000000001.json", json.dumps({"key": "1", "caption": "from json"}).encode()),
            ("000000001.png", GOOD[1]),
            ("000000002.png", TRUNC),
            ("000000002.txt", b"truncated"),
            ("000000003.jpg", b""),
            ("000000003.txt", b"zero bytes"),
            ("000000004.txt", b"no image"),
            ("000000005.png", GOOD[2]),
            ("000000005.txt", b"caf\xe9"),
            ("000000006.png", GOOD[3]),
        ],
    )
    _tar(
        d / "00001.tar.gz",
        [("00001/000010000.png", GOOD[4]), ("00001/000010000.txt", b"shard two")],
        gzip.open,
    )
    (d / "notes.txt").write_text("not a shard")
    rep, skips, got = _prepare("webdataset", d / "0000*", tmp_path / "out")
    assert skips == {
        "000000002": "image_corrupt",
        "000000003": "image_empty",
        "000000004": "image_missing",
        "000000005": "bad_utf8",
        "000000006": "bad_conversation",
    }
    assert got == {
        "000000000": Example(
            "000000000", "caption", (Message("text", T + "a noisy photo"),), (JPEG,)
        ),
        "000000001": Example(
            "000000001", "caption", (Message("text", T + "from json"),), (GOOD[1],)
        ),
        "00001/000010000": Example(
            "00001/000010000", "caption", (Message("text", T + "shard two"),), (GOOD[4],)
        ),
    }
    assert rep["written"] == 3 and rep["images_written"] == 3

    broken = tmp_path / "broken.tar"
    broken.write_bytes((d / "00000.tar").read_bytes()[:5300])  # cut inside the second sample
    with pytest.raises(
        ValueError, match="broken.tar: the tar stream breaks off after sample '000000000'"
    ):
        list(importers.import_examples("webdataset", str(broken), importers.SkipCounter("b", 1.0)))


def test_parquet_hf_layout(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "a.png").write_bytes(GOOD[5])
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(
        pa.table(
            {
                "id": ["p_bytes", "p_path", "p_trunc", "p_zero", "p_noimg", "p_utf8"],
                "image": pa.array(
                    [
                        {"bytes": GOOD[0], "path": "elsewhere.png"},
                        {"bytes": None, "path": "a.png"},
                        {"bytes": TRUNC, "path": None},
                        {"bytes": b"", "path": None},
                        None,
                        {"bytes": GOOD[0], "path": None},
                    ],
                    image,
                ),
                "caption": _bad_utf8_strings([b"noise", b"file", b"t", b"z", b"n", b"caf\xe9"]),
            }
        ),
        d / "train-00000-of-00002.parquet",
    )
    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    part = pa.struct([("type", pa.string()), ("text", pa.string())])
    msg = pa.struct([("role", pa.string()), ("content", pa.list_(part))])
    user = [{"type": "image"}, {"type": "text", "text": "Compare"}, {"type": "image"}]
    pq.write_table(
        pa.table(
            {
                "images": pa.array(
                    [[{"bytes": GOOD[1]}], [{"bytes": GOOD[2]}, {"bytes": JPEG}], []],
                    pa.list_(image),
                ),
                "conversations": pa.array(
                    [
                        [{"from": "human", "value": "What?"}, {"from": "gpt", "value": "Noise."}],
                        None,
                        [
                            {"from": "system", "value": "Be brief."},
                            {"from": "human", "value": "Hi"},
                            {"from": "gpt", "value": "Hello"},
                        ],
                    ],
                    pa.list_(turn),
                ),
                "messages": pa.array(
                    [
                        None,
                        [
                            {"role": "user", "content": user + [{"type": "text", "text": " now"}]},
                            {"role": "assistant", "content": [{"type": "text", "text": "Same."}]},
                        ],
                        None,
                    ],
                    pa.list_(msg),
                ),
            }
        ),
        d / "train-00001-of-00002.parquet",
    )
    rep, skips, got = _prepare("parquet", d / "train-*.parquet", tmp_path / "out")
    assert skips == {
        "p_trunc": "image_corrupt",
        "p_zero": "image_empty",
        "p_noimg": "image_missing",
        "p_utf8": "bad_utf8",
    }
    second = "train-00001-of-00002.parquet"
    assert got == {
        "p_bytes": Example("p_bytes", "caption", (Message("text", T + "noise"),), (GOOD[0],)),
        "p_path": Example("p_path", "caption", (Message("text", T + "file"),), (GOOD[5],)),
        f"{second}:0": Example(
            f"{second}:0",
            "caption",
            (Message("user", T + "\nWhat?"), Message("assistant", "Noise.")),
            (GOOD[1],),
        ),
        f"{second}:1": Example(
            f"{second}:1",
            "caption",
            (Message("user", f"{T}\nCompare{T} now"), Message("assistant", "Same.")),
            (GOOD[2], JPEG),
        ),
        f"{second}:2": Example(
            f"{second}:2",
            "text",
            (Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello")),
        ),
    }
    assert rep["images_written"] == 5

    pq.write_table(pa.table({"url": ["x"]}), tmp_path / "other.parquet")
    with pytest.raises(
        ValueError, match=r"other.parquet: no column caption / .*the file has \['url'\]"
    ):
        list(
            importers.import_examples(
                "parquet", str(tmp_path / "other.parquet"), importers.SkipCounter("o", 1.0)
            )
        )


def test_obelics_documents(tmp_path):
    d = tmp_path / "obelics"
    d.mkdir()
    (d / "a.png").write_bytes(GOOD[5])
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(
        pa.table(
            {
                "id": ["d_good", "d_path", "d_missing", "d_trunc", "d_url"],
                "texts": [
                    ["Intro", None, "Outro"],
                    [None, "After"],
                    [None, "x"],
                    ["x", None],
                    [None, "x"],
                ],
                "images": pa.array(
                    [
                        [None, {"bytes": GOOD[0]}, None],
                        [{"path": "a.png"}, None],
                        [{"path": "gone.png"}, None],
                        [None, {"bytes": TRUNC}],
                        [{"path": "https://example.com/x.png"}, None],
                    ],
                    pa.list_(image),
                ),
            }
        ),
        d / "part-0.parquet",
    )
    pq.write_table(  # images as plain bytes, no id column, text as binary
        pa.table(
            {
                "texts": pa.array(
                    [[b"Only", None], [None, b"zero"], [b"caf\xe9"]], pa.list_(pa.binary())
                ),
                "images": pa.array([[None, GOOD[1]], [b"", None], [None]], pa.list_(pa.binary())),
            }
        ),
        d / "part-1.parquet",
    )
    rep, skips, got = _prepare("obelics", d / "part-*.parquet", tmp_path / "out")
    assert skips == {
        "d_missing": "image_missing",
        "d_trunc": "image_corrupt",
        "d_url": "image_missing",
        "part-1.parquet:1": "image_empty",
        "part-1.parquet:2": "bad_utf8",
    }
    assert got == {
        "d_good": Example(
            "d_good", "interleaved", (Message("text", f"Intro\n{T}\nOutro"),), (GOOD[0],)
        ),
        "d_path": Example("d_path", "interleaved", (Message("text", f"{T}\nAfter"),), (GOOD[5],)),
        "part-1.parquet:0": Example(
            "part-1.parquet:0", "interleaved", (Message("text", f"Only\n{T}"),), (GOOD[1],)
        ),
    }
    assert rep["written"] == 3 and rep["images_written"] == 3


def test_text_compressed_parquet_and_txt(tmp_path):
    d = tmp_path / "text"
    d.mkdir()
    with gzip.open(d / "a.jsonl.gz", "wb") as f:
        f.write(b'{"id": "gz1", "text": "gzipped words"}\n{"text": "caf\xe9"}\n')
    (d / "b.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(b'{"id": "zst1", "text": "zstd words"}\n')
    )
    pq.write_table(
        pa.table({"text": _bad_utf8_strings([b"parquet row", b"\xff\xfe"])}), d / "c.parquet"
    )
    (d / "d.txt").write_text("A whole book.\n\nSecond paragraph.\n")
    (d / "e.txt").write_bytes(b"latin-1 caf\xe9")
    (d / "f.pdf").write_bytes(b"not read: not a text suffix")
    rep, skips, got = _prepare("text", d, tmp_path / "out")
    assert skips == {"a.jsonl.gz:2": "bad_utf8", "c.parquet:1": "bad_utf8", "e.txt": "bad_utf8"}
    text = lambda rid, s: Example(rid, "text", (Message("text", s),))  # noqa: E731
    assert got == {
        "gz1": text("gz1", "gzipped words"),
        "zst1": text("zst1", "zstd words"),
        "c.parquet:0": text("c.parquet:0", "parquet row"),
        "d.txt": text("d.txt", "A whole book.\n\nSecond paragraph.\n"),
    }
    assert rep["written"] == 4 and rep["images_written"] == 0
