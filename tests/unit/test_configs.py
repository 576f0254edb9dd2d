"""Shipped model sizes: parameter counts against the spec (eval_shape, no allocation), goldens, validation."""

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
