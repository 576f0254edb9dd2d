"""`prepare` with --workers 1, --workers 2 and --runner beam (DirectRunner) writes the same records:
same ids, same bytes, same order, the same report (planted bad records named in each)."""

import io
import json
import os

import pytest
from PIL import Image

from dsvl_jax.data import builders, shards

N_FILES, PER_FILE = 4, 5


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 37 % 256, seed * 11 % 256, 90)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 caption JSONL shards (one gzip-compressed) in a folder, with 3 planted bad records."""
    import gzip

    root = tmp_path_factory.mktemp("par")
    (root / "img").mkdir()
    for f in range(N_FILES):
        lines = []
        for r in range(PER_FILE):
            k = f * PER_FILE + r
            (root / "img" / f"{k}.png").write_bytes(_png(k))
            lines.append({"id": f"s{k}", "image": f"img/{k}.png", "caption": f"sample {k}"})
        if f == 1:
            lines[2]["image"] = "img/missing.png"  # image_missing
            (root / "img" / "2.png").write_bytes(b"")  # s2: empty image
        if f == 3:
            (root / "img" / f"{f * PER_FILE}.png").write_bytes(_png(0)[:30])  # truncated
        text = "\n".join(json.dumps(x) for x in lines) + "\n"
        name = root / f"part-{f:02d}.jsonl"
        if f == 2:
            with gzip.open(str(name) + ".gz", "wt") as g:
                g.write(text)
        else:
            name.write_text(text)
    return root


def _prepare(corpus, out, **kw):
    res = builders.prepare(
        "captions", str(corpus), str(out), images=str(corpus), max_skip_rate=0.5, **kw
    )
    src = shards.open_source(res.dataset_dir)
    got = [(ex.id, ex.messages, ex.images) for ex in (src[i] for i in range(len(src)))]
    rep = {k: res.report[k] for k in ("written", "images_written", "skipped", "skipped_ids")}
    return got, rep


def test_every_runner_writes_the_same_records(corpus, tmp_path):
    one, rep1 = _prepare(corpus, tmp_path / "w1")
    assert len(one) == N_FILES * PER_FILE - 3 == rep1["written"] == rep1["images_written"]
    assert {(s["id"], s["reason"]) for s in rep1["skipped_ids"]} == {
        ("s2", "image_empty"),
        ("s7", "image_missing"),
        ("s15", "not_an_image"),
    }
    assert [x[0] for x in one][:3] == ["s0", "s1", "s3"]  # input order, folder sorted
    two, rep2 = _prepare(corpus, tmp_path / "w2", workers=2)
    assert two == one and rep2 == rep1
    beam, rep3 = _prepare(corpus, tmp_path / "beam", runner="beam")
    assert beam == one and rep3 == rep1
    assert not os.path.exists(tmp_path / "beam" / ".import_reports")


def test_beam_and_workers_apply_the_skip_cap_and_keep_the_holdout(corpus, tmp_path):
    from dsvl_jax.data.importers import SkipRateExceeded

    for kw in (dict(workers=2), dict(runner="beam")):
        with pytest.raises(SkipRateExceeded, match="skipped 3 of 20"):
            builders.prepare(
                "captions", str(corpus), str(tmp_path / str(kw)), max_skip_rate=0.1, **kw
            )
    kw = dict(holdout=0.3, max_skip_rate=0.5)
    a = builders.prepare("captions", str(corpus), str(tmp_path / "h1"), **kw)
    b = builders.prepare("captions", str(corpus), str(tmp_path / "h2"), runner="beam", **kw)
    for d in ("dataset_dir", "heldout_dir"):
        sa, sb = shards.open_source(a.report[d]), shards.open_source(b.report[d])
        assert [sa[i].id for i in range(len(sa))] == [sb[i].id for i in range(len(sb))]
    assert a.report["heldout_records"] > 0
