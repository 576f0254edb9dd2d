"""Shipped model sizes: parameter counts against the spec (eval_shape, no allocation), goldens, validation.
Shipped experiments: goldens, and the real sizes against the paper's Tables 4 (hyper-parameters), 1 and 2
(mixes)."""

import os
from pathlib import Path

import pytest

from dsvl_jax.model import params as P
from dsvl_jax.model.config import ConfigError, model_config_from_dict
from dsvl_jax.model.sizes import SIZES, model_config, model_config_dict

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "golden")

# docs/recipe.md#parameter-counts (rounded there to 0.01M / 0.001B).
SPEC = {
    "1.3b": {"siglip": 303.7e6, "adaptor": 6.30e6, "llm": 1.653e9, "llm/blocks": 1.233e9},
    "7b": {
        "siglip": 303.7e6,
        "sam": 88.9e6 + 2 * 0.79e6 + 5.90e6,
        "adaptor": 20.98e6,
        "llm": 6.910e9,
        "llm/blocks": 6.072e9,
    },
}


@pytest.mark.parametrize("size", ["1.3b", "7b"])
def test_parameter_counts_match_spec(size):
    abstract = P.abstract_params(model_config(size))
    for part, want in SPEC[size].items():
        got = P.count_params(abstract, part)
        # Spec figures are rounded to their last digit: 0.2% covers the rounding, not a missing tensor
        # (the smallest tensor family, e.g. one LayerNorm per block, would move counts far less but
        # any missing weight matrix moves them by more).
        assert abs(got - want) / want < 2e-3, (size, part, got, want)
    if size == "1.3b":
        assert P.count_params(abstract, "sam") == 0
    total = P.count_params(abstract)
    assert abs(total - sum(v for k, v in SPEC[size].items() if k != "llm/blocks")) / total < 1e-3


def test_7b_exact_figures():
    """Exact arithmetic for the 7B parts whose formula is short."""
    a = P.abstract_params(model_config("7b"))
    d, f, v, layers = 4096, 11008, 102400, 30
    assert P.count_params(a, "llm/blocks") == layers * (4 * d * d + 3 * d * f + 2 * d)
    assert P.count_params(a, "llm") == layers * (4 * d * d + 3 * d * f + 2 * d) + 2 * v * d + d
    assert P.count_params(a, "adaptor") == 2 * (1024 * 2048 + 2048) + 4096 * 4096 + 4096
    assert P.count_params(a, "sam/downsample") == 9 * (256 * 512 + 512 * 1024)


def _flat_text(cfg_dict) -> str:
    return "".join(f"{k}: {v!r}\n" for k, v in sorted(P.flatten(cfg_dict.to_dict(), ".").items()))


@pytest.mark.parametrize("size", sorted(SIZES))
def test_config_golden(size):
    """A change to a shipped size shows up as a diff of tests/golden/model_<size>.txt (UPDATE_GOLDEN=1)."""
    text = _flat_text(model_config_dict(size))
    path = os.path.join(GOLDEN, f"model_{size}.txt")
    if os.environ.get("UPDATE_GOLDEN"):
        with open(path, "w") as f:
            f.write(text)
    assert Path(path).read_text() == text
    assert model_config_from_dict(model_config_dict(size)) == model_config(size)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("adaptor.kind", "mlp", "model.adaptor.kind"),
        ("siglip.image_size", 30, "model.siglip.image_size"),
        ("llm.kv_heads", 3, "model.llm.heads"),
        ("sam.global_attn_indexes", (), "model.sam.global_attn_indexes"),
        ("remat_policy", "sometimes", "model.remat_policy"),
    ],
)
def test_invalid_configs_name_the_field(field, value, needle):
    d = model_config_dict("tiny").to_dict()
    node = d
    *parents, last = field.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        model_config_from_dict(d)


def test_unknown_field_is_refused():
    d = model_config_dict("tiny").to_dict()
    d["llm"]["n_layers"] = 3
    with pytest.raises(ConfigError, match="n_layers"):
        model_config_from_dict(d)


EXPERIMENTS = os.path.join(os.path.dirname(GOLDEN), os.pardir, "experiments")


@pytest.mark.parametrize("size", ["tiny", "1.3b", "7b"])
@pytest.mark.parametrize("stage", ["stage1_aligner", "stage2_pretrain", "stage3_sft"])
def test_experiment_golden(stage, size):
    """Every shipped experiment at every size loads, validates (model section, stage, batch) and matches its
    flattened golden tests/golden/experiments/<stage>_<size>.txt (UPDATE_GOLDEN=1 rewrites it)."""
    from dsvl_jax.config import load_experiment
    from dsvl_jax.train.loop import validate

    cfg = load_experiment(os.path.join(EXPERIMENTS, f"{stage}.py"), size)
    validate(cfg)
    text = _flat_text(cfg)
    path = os.path.join(GOLDEN, "experiments", f"{stage}_{size}.txt")
    if os.environ.get("UPDATE_GOLDEN"):
        with open(path, "w") as f:
            f.write(text)
    assert Path(path).read_text() == text


def _experiment(stage, size):
    from dsvl_jax.config import load_experiment

    return load_experiment(os.path.join(EXPERIMENTS, f"{stage}.py"), size)


STAGE_FILES = {1: "stage1_aligner", 2: "stage2_pretrain", 3: "stage3_sft"}
# Paper Table 4, typed in here (not read from the experiment files), per (stage, size):
# lr, schedule, warm-up steps, training steps, batch size, sequence length (stage 1: text tokens),
# packing. Every column: weight decay 0, clip 1.0, AdamW betas 0.9 / 0.95.
TABLE_4 = {
    (1, "1.3b"): (1.0e-3, "cosine", 128, 15000, 256, 512, False),
    (2, "1.3b"): (3e-5, "step", 2000, 96000, 1024, 4096, True),
    (3, "1.3b"): (2.0e-5, "cosine", 256, 10000, 256, 4096, False),
    (1, "7b"): (1.0e-3, "cosine", 128, 15000, 256, 512, False),
    (2, "7b"): (4.2e-5, "step", 2000, 42000, 2304, 4096, True),
    (3, "7b"): (2.0e-5, "cosine", 256, 10000, 256, 4096, False),
}
# Paper §3.2 / Fig. 3 text: stage 1 the VL adaptor, stage 2 + LLM, stage 3 + SigLIP; SAM's trunk never.
TRAINS = {
    1: {"adaptor", "sam_adaptor"},
    2: {"adaptor", "sam_adaptor", "llm"},
    3: {"adaptor", "sam_adaptor", "llm", "siglip"},
}
IMAGE_TOKENS = 576  # 384 px / 16 px patches = 24 x 24 per image, both real sizes


@pytest.mark.parametrize("stage,size", sorted(TABLE_4))
def test_real_configs_follow_table_4(stage, size):
    lr, schedule, warmup, steps, batch, seq, pack = TABLE_4[(stage, size)]
    c = _experiment(STAGE_FILES[stage], size)
    t = c.train
    got = (t.stage, t.lr, t.schedule, t.warmup_steps, t.steps, t.batch_size)
    assert got == (stage, lr, schedule, warmup, steps, batch)
    assert c.data.pack is pack
    assert (t.weight_decay, t.clip_norm, t.b1, t.b2) == (0.0, 1.0, 0.9, 0.95)
    assert set(t.trainable) == TRAINS[stage]
    assert model_config_from_dict(c.model).num_image_tokens == IMAGE_TOKENS
    if stage == 1:  # Table 4's 512 is the text; each row also holds one image
        assert t.seq_len >= IMAGE_TOKENS + seq and t.seq_len % 128 == 0, t.seq_len
        assert t.seq_len == 1152
    else:
        assert t.seq_len == seq


# Table 1 (stage 2) and Table 2 (stage 3) shares in percent, per source name, typed in here.
TABLE_1 = {
    "interleaved": 13.1,
    "caption": 11.1,
    "chart": 2.1,
    "web_code": 0.4,
    "scene_ocr": 1.2,
    "doc_ocr": 2.1,
    "text": 70.0,
}
TABLE_2 = {"in_house": 10.5, "general": 35.5, "chart": 4.1, "web_code": 2.0, "text": 47.9}


@pytest.mark.parametrize("size", ["1.3b", "7b"])
def test_real_mixes_follow_tables_1_and_2(size):
    s1 = _experiment(STAGE_FILES[1], size)
    assert {k: v.weight for k, v in s1.data.sources.items()} == {"caption": 1.25, "ocr": 2.5}
    assert s1.data.text_ratio == 0.0

    s2 = _experiment(STAGE_FILES[2], size)
    want = dict(TABLE_1, **({"sft": 1.0} if size == "1.3b" else {}))  # 1.3B: the repo's SFT share
    assert {k: v.weight for k, v in s2.data.sources.items()} == want
    assert s2.data.text_ratio == 0.7  # Table 1's text share, the 1.3B SFT source left out
    if size == "1.3b":
        assert s2.data.sources.sft.group == "multimodal"

    s3 = _experiment(STAGE_FILES[3], size)
    assert {k: v.weight for k, v in s3.data.sources.items()} == TABLE_2
    assert s3.data.text_ratio == 0.479

    for c in (s1, s2, s3):  # held-out splits of the same sources
        assert c.eval.every_steps == 1000
        assert set(c.eval.sources) == set(c.data.sources)
        for name, s in c.eval.sources.items():
            assert s.path == c.data.sources[name].path + "/heldout"
        # the split follows the data path when a run points a source at its own corpus
        o = c.unlock()
        o.data.sources[name].path = "/corpora/mine"
        assert o.eval.sources[name].path == "/corpora/mine/heldout"


STAND_INS = {"web_code": "screenshot", "scene_ocr": "ocr", "doc_ocr": "pdf", "general": "caption"}
STAND_INS.update(in_house="interleaved", sft="chart")


@pytest.mark.parametrize("size", ["tiny", "1.3b", "7b"])
@pytest.mark.parametrize("stage", sorted(STAGE_FILES))
def test_every_source_names_a_corpus_kind(stage, size):
    """Each source reads <data_root>/dsvl_<kind>[/heldout] of an embedded corpus kind by default;
    text sources form the language group."""
    from dsvl_jax.data.records import KINDS

    c = _experiment(STAGE_FILES[stage], size)
    for section, tail in ((c.data, ""), (c.eval, "/heldout")):
        for name, s in section.sources.items():
            assert s.kind == STAND_INS.get(name, name) and s.kind in KINDS, (name, s.kind)
            assert s.path == f"{c.data_root}/dsvl_{s.kind}{tail}"
            assert s.group == ("text" if s.kind == "text" else "multimodal")
