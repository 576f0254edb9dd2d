"""`python -m dsvl_jax.data prepare|generate|inspect` as a user types it (one subprocess per command)."""

import glob
import json
import os

import numpy as np
from PIL import Image

from dsvl_jax.data import records, shards

import commands


def _data_cli(*args, ok=True):
    p = commands.run("data", *args, timeout=300)
    assert (p.returncode == 0) == ok, p.stderr[-3000:]
    return p


def test_prepare_llava_with_report_and_skip_cap(tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    Image.fromarray(np.full((12, 20, 3), 200, np.uint8)).save(img / "a.png")
    conv = [
        {"from": "human", "value": "<image>\nWhat colour?"},
        {"from": "gpt", "value": "Light grey."},
    ]
    data = [
        {"id": "ok1", "image": "a.png", "conversations": conv},
        {"id": "ok2", "image": "a.png", "conversations": conv},
        {"id": "lost", "image": "lost.png", "conversations": conv},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(data))
    args = [
        "prepare",
        "--format=llava",
        f"--input={tmp_path / 'llava.json'}",
        f"--images={img}",
        f"--out={tmp_path / 'out'}",
        f"--report={tmp_path / 'report.json'}",
    ]

    p = _data_cli(*args, "--max_skip_rate=0.2", ok=False)  # 1 of 3 bad: above the cap, clear error
    assert str(tmp_path / "llava.json") in p.stderr and "33.3%" in p.stderr and "20.0%" in p.stderr
    assert "error" in json.loads((tmp_path / "report.json").read_text())

    p = _data_cli(*args, "--max_skip_rate", "0.5")
    assert "2 written, 1 skipped (image_missing=1)" in p.stdout.strip().splitlines()[-1]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["written"] == 2 and rep["skipped"] == {"image_missing": 1}
    assert [(s["id"], s["reason"]) for s in rep["skipped_ids"]] == [("lost", "image_missing")]
    assert glob.glob(
        str(tmp_path / "out" / "dsvl_imported" / "1.0.0" / "dsvl_imported-train.array_record-*")
    )
    src = shards.open_source(str(tmp_path / "out"))
    assert [src[i].id for i in range(len(src))] == ["ok1", "ok2"]
    assert src[0].images == ((img / "a.png").read_bytes(),)


def test_generate_all_kinds_then_inspect(tmp_path):
    out = tmp_path / "corpus"
    p = _data_cli(
        "generate", "--n=2", "--seed=3", "--image_size=64", f"--out={out}", "--tokenizer_vocab=400"
    )
    assert "generated 7 corpora" in p.stdout
    assert "image token id 4" in p.stdout and (out / "tokenizer.model").exists()
    from dsvl_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(out / "tokenizer.model"))
    assert (
        tok.decode(tok.encode("Which fruit has the largest value?"))
        == "Which fruit has the largest value?"
    )
    sources = shards.open_sources(str(out))
    assert sorted(os.path.dirname(os.path.dirname(k)) for k in sources) == sorted(
        f"dsvl_{k}" for k in records.KINDS
    )
    for name, src in sources.items():
        assert name.endswith("n2_seed3_px64/1.0.0") and len(src) == 2
        ex = src[1]
        assert f"dsvl_{ex.kind}" in name and records.validate(ex) is ex
        assert ex.is_multimodal == (ex.kind != "text")

    sheet = tmp_path / "sheet.png"
    p = _data_cli("inspect", str(out), "--n", "8", f"--out={sheet}")
    assert "8 samples from 7 dataset(s)" in p.stdout
    im = Image.open(sheet)
    assert im.size == (4 * 256, 2 * (192 + 84)) and len(set(im.convert("L").getdata())) > 16


def test_usage_error_names_the_commands():
    p = _data_cli("shuffle", ok=False)
    assert all(c in p.stderr for c in ("prepare", "generate", "inspect"))


def test_prepare_a_glob_of_shards_with_workers_and_beam(tmp_path):
    """--input as a glob over compressed shards; --workers 2 and --runner=beam write the same records."""
    import gzip

    Image.fromarray(np.full((12, 20, 3), 90, np.uint8)).save(tmp_path / "a.png")
    for s in range(3):
        lines = [
            json.dumps({"id": f"{s}-{i}", "image": "a.png", "caption": f"c {s} {i}"})
            for i in range(2)
        ]
        with gzip.open(tmp_path / f"part-{s}.jsonl.gz", "wt") as f:
            f.write("\n".join(lines) + "\n")
    ids = {}
    for name, extra in (("w2", ["--workers=2"]), ("beam", ["--runner=beam"])):
        p = _data_cli(
            "prepare",
            "--format=captions",
            f"--input={tmp_path / 'part-*.jsonl.gz'}",
            f"--out={tmp_path / name}",
            f"--report={tmp_path / name}.json",
            *extra,
        )
        assert "6 written, 0 skipped" in p.stdout
        assert json.loads((tmp_path / f"{name}.json").read_text())["images_written"] == 6
        src = shards.open_source(str(tmp_path / name))
        ids[name] = [src[i].id for i in range(len(src))]
    assert ids["w2"] == ids["beam"] == [f"{s}-{i}" for s in range(3) for i in range(2)]
