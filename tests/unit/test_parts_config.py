"""`convert from-parts` at the real sizes, without real weights: the config.json files the real parts
ship (google/siglip-large-patch16-384, facebook/sam-vit-base, deepseek-llm-7b-base; the 1.3B LLM's
dims from the paper's 1.3B model) compose into exactly the shipped 1.3b / 7b model configs, DeepSeek's
tokenizer layout gets the image token at 100015 inside the padded 102400-row embedding, and the fresh
7B parameters are initialised without materialising the rest of the model."""

import json

import numpy as np
import pytest

from dsvl_jax.data.records import IMAGE_TAG
from dsvl_jax.data.tokenizer import DEEPSEEK_BOS, DEEPSEEK_EOS, with_image_token
from dsvl_jax.interop import hf_parts
from dsvl_jax.interop.hf_config import from_hf
from dsvl_jax.interop.hf_import import unrolled_shapes
from dsvl_jax.model.config import architecture_diff
from dsvl_jax.model.params import init_subset
from dsvl_jax.model.sizes import model_config

# The vision_config of google/siglip-large-patch16-384's config.json (fields it omits take defaults)
SIGLIP_L = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1024,
    "image_size": 384,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "patch_size": 16,
}
# facebook/sam-vit-base's vision_config
SAM_B = {
    "model_type": "sam_vision_model",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "global_attn_indexes": [2, 5, 8, 11],
    "image_size": 1024,
    "patch_size": 16,
    "output_channels": 256,
    "window_size": 14,
    "mlp_ratio": 4.0,
    "mlp_dim": 3072,
    "layer_norm_eps": 1e-06,
    "qkv_bias": True,
    "use_abs_pos": True,
    "use_rel_pos": True,
    "hidden_act": "gelu",
}
# deepseek-llm-7b-base's config.json
LLM_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "bos_token_id": 100000,
    "eos_token_id": 100001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "max_position_embeddings": 4096,
    "num_attention_heads": 32,
    "num_hidden_layers": 30,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "vocab_size": 102400,
}
LLM_1_3B = {
    **LLM_7B,
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "num_key_value_heads": 16,
}


def _part(role, conf):
    return hf_parts.Part(role, f"<{role}>", "", conf)


@pytest.mark.parametrize("size", ["1.3b", "7b"])
def test_real_parts_compose_into_the_shipped_sizes(size):
    llm = LLM_7B if size == "7b" else LLM_1_3B
    sam = _part("sam", SAM_B) if size == "7b" else None
    conf = hf_parts.compose_config(
        _part("siglip", SIGLIP_L),
        _part("llm", llm),
        sam,
        image_token_id=100015,
        vocab_size=102400,
        siglip_act="gelu",
    )
    assert architecture_diff(model_config(size), from_hf(conf)) == {}
    # the stock SigLIP activation is kept unless overridden, and training would refuse it
    stock = hf_parts.compose_config(
        _part("siglip", SIGLIP_L), _part("llm", llm), sam, image_token_id=100015, vocab_size=102400
    )
    assert architecture_diff(model_config(size), from_hf(stock)) == {
        "siglip.act": ("gelu", "gelu_tanh")
    }


def test_rope_scaling_is_refused():
    llm = _part("llm", {**LLM_7B, "rope_scaling": {"type": "linear", "factor": 2.0}})
    with pytest.raises(Exception, match="rope_scaling"):
        hf_parts.compose_config(
            _part("siglip", SIGLIP_L), llm, None, image_token_id=100015, vocab_size=102400
        )


def test_deepseek_tokenizer_layout_gets_the_image_token_in_a_padding_row(tmp_path):
    """DeepSeek-LLM's tokenizer: 100000 BPE entries + 15 specials; the image token becomes 100015,
    inside the 102400 padded rows: no row is added, that row becomes the mean of the real ones."""
    from tokenizers import Tokenizer

    added = [
        dict(
            id=i,
            content={100000: DEEPSEEK_BOS, 100001: DEEPSEEK_EOS}.get(i, f"<|special_{i}|>"),
            single_word=False,
            lstrip=False,
            rstrip=False,
            normalized=False,
            special=True,
        )
        for i in range(100000, 100015)
    ]
    spec = json.loads(Tokenizer(__import__("tokenizers").models.BPE()).to_str())
    spec["model"]["vocab"] = {f"<|r{i}|>": i for i in range(100000)}
    spec["added_tokens"] = added
    src = tmp_path / "llm"
    src.mkdir()
    (src / "tokenizer.json").write_text(json.dumps(spec))
    (src / "tokenizer_config.json").write_text(
        json.dumps(
            {"bos_token": DEEPSEEK_BOS, "eos_token": DEEPSEEK_EOS, "added_tokens_decoder": {}}
        )
    )
    tok, was_added = with_image_token(src, tmp_path / "out")
    assert was_added and tok.image_token_id == 100015 and tok.vocab_size == 100016
    conf = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert conf["added_tokens_decoder"]["100015"]["content"] == IMAGE_TAG
    assert conf["extra_special_tokens"]["image_token"] == IMAGE_TAG
    rng = np.random.default_rng(0)
    tensors = {
        hf_parts.EMBED: rng.normal(size=(102400, 8)).astype(np.float32),
        hf_parts.HEAD: rng.normal(size=(102400, 8)).astype(np.float32),
    }
    before = {k: v.copy() for k, v in tensors.items()}
    assert hf_parts.add_token_row(tensors, 100015) == 102400
    for k, w in tensors.items():
        assert w.shape == (102400, 8)
        np.testing.assert_allclose(w[100015], before[k][:100015].mean(0), atol=1e-6)
        rest = np.ones(102400, bool)
        rest[100015] = False
        assert np.array_equal(w[rest], before[k][rest])
    with pytest.raises(Exception, match="past the embedding"):
        hf_parts.add_token_row(tensors, 102401)


def test_fresh_7b_parameters_without_the_rest():
    """The adaptor, neck_hd, downsample convs and alpha of the real 7B: ~27.7M parameters; jit drops
    every other initializer (the 7B LLM and towers are never materialised)."""
    cfg = model_config("7b")
    shapes = unrolled_shapes(cfg)
    fresh = sorted(p for p in shapes if hf_parts.FRESH.search(p))
    out = init_subset(cfg, fresh, 0)
    assert sorted(out) == fresh
    assert all(tuple(out[p].shape) == shapes[p] for p in fresh)
    n = sum(int(np.prod(shapes[p])) for p in fresh)
    assert 20e6 < n < 40e6
    assert float(np.asarray(out["sam/hd_alpha"])[0]) == 0.0
    # every other parameter comes from a part
    assert not any(hf_parts.FRESH.search(p) for p in shapes if p.startswith(("siglip/", "llm/")))
