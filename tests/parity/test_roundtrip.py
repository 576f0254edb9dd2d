"""HF -> dsvl_jax (orbax checkpoint) -> HF is bit-exact, and transformers loads the export unchanged."""

import json
import os
from pathlib import Path

import numpy as np
import torch

from dsvl_jax.checkpoints import to_hf
from dsvl_jax.interop.hf_import import read_safetensors

import hf_oracle


def test_roundtrip_bit_exact_and_loadable(converted):
    out = str(converted["root"] / "exported")
    res = to_hf(converted["ckpt"], out)
    assert "model.safetensors" in res["files"]
    src, dst = read_safetensors(converted["hf_dir"]), read_safetensors(out)
    assert sorted(src) == sorted(dst)
    for k in src:
        assert src[k].dtype == dst[k].dtype and src[k].shape == dst[k].shape, k
        assert np.array_equal(src[k], dst[k]), f"{k} changed in the round trip"
    # transformers reads the exported folder as is, into the same class, with identical outputs.
    cls = type(converted["model"])
    reloaded = cls.from_pretrained(out).eval()
    assert json.loads(Path(os.path.join(out, "config.json")).read_text())["architectures"] == [
        cls.__name__
    ]
    b = hf_oracle.batch(converted["hybrid"])
    with torch.no_grad():
        a = converted["model"](**{k: torch.tensor(v) for k, v in b.items()}).logits
        c = reloaded(**{k: torch.tensor(v) for k, v in b.items()}).logits
    assert torch.equal(a, c)


def test_sharded_export_reads_back(converted, tmp_path):
    """Large models are written as several safetensors shards with an index; import reads them all."""
    from dsvl_jax.checkpoints import params_equal
    from dsvl_jax.interop.hf_export import save_hf
    from dsvl_jax.interop.hf_import import load_hf

    files = save_hf(str(tmp_path), converted["cfg"], converted["params"], max_shard_bytes=200_000)
    assert "model.safetensors.index.json" in files and len(files) > 3
    cfg, params = load_hf(str(tmp_path))
    assert cfg == converted["cfg"]
    assert params_equal(params, converted["params"])


def test_bfloat16_export_loads_in_transformers(converted, tmp_path):
    from dsvl_jax.interop.hf_export import save_hf

    save_hf(str(tmp_path), converted["cfg"], converted["params"], dtype="bfloat16")
    m = type(converted["model"]).from_pretrained(str(tmp_path))
    assert next(m.parameters()).dtype == torch.bfloat16
