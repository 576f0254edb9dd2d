"""Bad input gets one clear error that names the problem (file/tensor/field and expected value)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from dsvl_jax import api
from dsvl_jax.checkpoints import load_model, load_params, save_params
from dsvl_jax.errors import CheckpointError, CheckpointMismatch
from dsvl_jax.interop.hf_config import HFConfigError, from_hf, to_hf
from dsvl_jax.interop.hf_export import export_tensors, save_hf
from dsvl_jax.interop.hf_import import import_tensors, load_hf
from dsvl_jax.model import params as P
from dsvl_jax.model.sizes import model_config


@pytest.fixture(scope="module")
def tiny():
    cfg = model_config("tiny")
    return cfg, P.init_params(cfg, 1)


def _ids(cfg, n_images=1):
    ids = np.full((1, 2 + n_images * cfg.num_image_tokens), cfg.image_token_id, np.int32)
    ids[0, 0], ids[0, -1] = 1, 120
    return ids


def test_wrong_image_size(tiny):
    cfg, params = tiny
    with pytest.raises(
        api.InputError, match=r"pixel_values: expected shape \[N, 3, 32, 32\].*got \[1, 3, 48, 48\]"
    ):
        api.forward(cfg, params, _ids(cfg), np.zeros((1, 3, 48, 48)), np.zeros((1, 3, 64, 64)))
    with pytest.raises(
        api.InputError, match=r"high_res_pixel_values: expected shape \[1, 3, 64, 64\]"
    ):
        api.forward(cfg, params, _ids(cfg), np.zeros((1, 3, 32, 32)), np.zeros((1, 3, 32, 32)))
    with pytest.raises(api.InputError, match="high_res_pixel_values is required"):
        api.forward(cfg, params, _ids(cfg), np.zeros((1, 3, 32, 32)))


def test_image_token_count_mismatch(tiny):
    cfg, params = tiny
    with pytest.raises(
        api.InputError, match=r"hold 32 image tokens .* 1 image\(s\) need 1 x 16 = 16"
    ):
        api.forward(cfg, params, _ids(cfg, 2), np.zeros((1, 3, 32, 32)), np.zeros((1, 3, 64, 64)))


def test_out_of_vocab_ids_and_right_padding(tiny):
    cfg, params = tiny
    ids = _ids(cfg)
    ids[0, -1] = 999
    with pytest.raises(api.InputError, match=r"values must lie in \[0, 256\)"):
        api.forward(cfg, params, ids, np.zeros((1, 3, 32, 32)), np.zeros((1, 3, 64, 64)))
    mask = np.ones_like(_ids(cfg))
    mask[0, -1] = 0
    with pytest.raises(api.InputError, match=r"rows \[0\] are right-padded"):
        api.generate(
            cfg, params, _ids(cfg), np.zeros((1, 3, 32, 32)), np.zeros((1, 3, 64, 64)), mask
        )


def test_hf_tensors_missing_and_extra_are_named(tiny):
    cfg, params = tiny
    tensors = export_tensors(cfg, params)
    del tensors["model.language_model.layers.1.mlp.up_proj.weight"]
    tensors["model.language_model.layers.1.mlp.extra_proj.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(CheckpointMismatch) as e:
        import_tensors(cfg, tensors, source="some/dir")
    msg = str(e.value)
    assert "some/dir" in msg
    assert "missing 1 tensor(s): model.language_model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected 1 tensor(s): model.language_model.layers.1.mlp.extra_proj.weight" in msg


def test_hf_config_that_disagrees_with_tensors(tiny, tmp_path):
    """config.json says 3 LLM layers and a wider MLP; the safetensors hold 2 layers."""
    cfg, params = tiny
    save_hf(str(tmp_path), cfg, params)
    hf = json.loads(Path(tmp_path / "config.json").read_text())
    hf["text_config"]["num_hidden_layers"] = 3
    hf["text_config"]["intermediate_size"] = 96
    Path(tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointMismatch) as e:
        load_hf(str(tmp_path))
    msg = str(e.value)
    assert "model.language_model.layers.2.input_layernorm.weight" in msg
    # both shapes in the layout of the safetensors file (torch Linear: [out, in])
    assert (
        "shape mismatch" in msg
        and "mlp.gate_proj.weight: stored (128, 64) vs expected (96, 64)" in msg
    )


def test_hf_config_unsupported_feature(tiny):
    hf = to_hf(tiny[0])
    hf["text_config"]["attention_bias"] = True
    with pytest.raises(HFConfigError, match="text_config.attention_bias"):
        from_hf(hf)
    hf = to_hf(tiny[0])
    hf["model_type"] = "llava"
    with pytest.raises(HFConfigError, match="model_type"):
        from_hf(hf)


def test_known_unused_hf_tensors_are_dropped(tiny):
    """SigLIP's attention-pool head (vision_use_head=True) is never run: dropped and counted, not an error."""
    cfg, params = tiny
    tensors = export_tensors(cfg, params)
    tensors["model.vision_model.head.probe"] = np.zeros((1, 1, 32), np.float32)
    # Hub checkpoints serialise SigLIP one level deeper; that prefix is accepted too.
    tensors = {
        k.replace("model.vision_model.", "model.vision_model.vision_model.", 1): v
        for k, v in tensors.items()
    }
    out = import_tensors(cfg, tensors)
    assert P.flatten(out).keys() == P.flatten(params).keys()


def test_orbax_checkpoint_config_mismatch(tiny, tmp_path):
    """The same report (CheckpointMismatch) as for HF folders, in parameter paths."""
    cfg, params = tiny
    save_params(str(tmp_path), cfg, params)
    stored = json.loads(Path(tmp_path / "model_config.json").read_text())
    stored["llm"]["mlp_dim"] = 96
    stored["llm"]["layers"] = 3
    Path(tmp_path / "model_config.json").write_text(json.dumps(stored))
    with pytest.raises(CheckpointMismatch) as e:
        load_model(str(tmp_path))
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path}: tensors do not match the model config: ")
    assert "llm/blocks/gate/kernel: stored (2, 64, 128) vs expected (3, 64, 96)" in msg
    assert e.value.shapes and not e.value.missing and not e.value.unexpected


def test_orbax_checkpoint_missing_keys(tiny, tmp_path):
    cfg, _ = tiny
    tied = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, tie_embeddings=True))
    save_params(str(tmp_path), tied, P.init_params(tied, 0))
    with pytest.raises(
        CheckpointMismatch, match=r"missing 1 tensor\(s\): llm/lm_head/kernel$"
    ) as e:
        load_params(str(tmp_path), cfg)
    assert e.value.missing == ["llm/lm_head/kernel"]


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a model folder"):
        api.load(str(tmp_path))
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf(str(tmp_path))
