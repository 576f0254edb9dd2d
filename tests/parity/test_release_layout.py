"""DeepSeek's original release layout (`multi_modality`, MultiModalityCausalLM) imports to exactly the
params that transformers' layout of the same model gives.

The release folder is written here from the tiny HF model's state dict by undoing transformers'
converter (fused SigLIP qkv, [1, N, W] pos_embed, timm / SAM names, a multi_modality config.json);
its towers are named "tiny_siglip" / "tiny_sam", added to hf_release.TOWERS for this module.
"""

import json
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from dsvl_jax import api
from dsvl_jax.checkpoints import from_hf, open_model
from dsvl_jax.errors import CheckpointError, CheckpointMismatch
from dsvl_jax.interop import hf_release
from dsvl_jax.interop.hf_config import from_hf as config_from_hf
from dsvl_jax.interop.hf_import import load_hf, read_safetensors
from dsvl_jax.model import params as P
from dsvl_jax.model.sizes import model_config

import hf_oracle

LOW = "vision_model.vision_tower_low.vision_tower."  # 7B SigLIP
SINGLE = "vision_model.vision_tower."  # 1.3B SigLIP
HIGH = "vision_model.vision_tower_high.vision_tower."  # 7B SAM
TINY_TOWERS = {
    "tiny_siglip": dict(
        kind="siglip", width=32, depth=2, heads=2, mlp_dim=64, patch_size=8, act="gelu"
    ),
    "tiny_sam": dict(
        kind="sam",
        width=32,
        depth=3,
        heads=2,
        mlp_dim=64,
        patch_size=8,
        window_size=3,
        global_attn_indexes=[1],
        out_chans=16,
    ),
}
NECK = {"conv1": "0", "layer_norm1": "1", "conv2": "2", "layer_norm2": "3"}
ALIGNER = {
    "linear1": "layers.0",
    "linear2": "layers.2",
    "high_res_vision_proj": "high_up_proj",
    "vision_proj": "low_up_proj",
    "proj": "layers.1",
}


@pytest.fixture(scope="module", autouse=True)
def tiny_towers():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf_release, "TOWERS", {**hf_release.TOWERS, **TINY_TOWERS})
        yield


def _siglip_key(rest: str, low: str) -> str:
    rest = rest.replace("embeddings.patch_embedding.", "patch_embed.proj.")
    rest = rest.replace("encoder.layers.", "blocks.").replace("self_attn.out_proj.", "attn.proj.")
    rest = rest.replace("layer_norm", "norm").replace("post_layernorm.", "norm.")
    return low + rest


def _sam_key(rest: str) -> str:
    m = re.fullmatch(r"neck\.(\w+)\.(weight|bias)", rest)
    if m:
        return f"{HIGH}neck.{NECK[m[1]]}.{m[2]}"
    rest = rest.replace("patch_embed.projection.", "patch_embed.proj.")
    return HIGH + rest.replace("layers.", "blocks.").replace("layer_norm", "norm")


def to_release(sd: dict[str, np.ndarray], hybrid: bool, tied: bool) -> dict[str, np.ndarray]:
    """transformers' state dict -> the original release's (the inverse of transformers' converter)."""
    low = LOW if hybrid else SINGLE
    out, qkv = {}, {}
    for k, w in sd.items():
        if k.startswith("model.vision_model."):
            rest = k[len("model.vision_model.") :]
            m = re.fullmatch(
                r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", rest
            )
            if m:
                qkv.setdefault(f"{low}blocks.{m[1]}.attn.qkv.{m[3]}", {})[m[2]] = w
            elif rest == "embeddings.position_embedding.weight":
                out[low + "pos_embed"] = w[None]
            else:
                out[_siglip_key(rest, low)] = w
        elif k.startswith("model.high_res_vision_model.vision_encoder."):
            out[_sam_key(k[len("model.high_res_vision_model.vision_encoder.") :])] = w
        elif k.startswith("model.high_res_vision_neck."):
            name, t = k[len("model.high_res_vision_neck.") :].split(".")
            out[f"{HIGH}neck_hd.{NECK[name]}.{t}"] = w
        elif k.startswith("model.high_res_vision_proj.conv"):
            out[f"{HIGH}downsamples.{int(k.split('.')[2][-1]) - 1}.weight"] = w
        elif k == "model.high_res_vision_alpha":
            out[HIGH + "hd_alpha_downsamples"] = w
        elif k.startswith("model.aligner."):
            name, t = k[len("model.aligner.") :].rsplit(".", 1)
            out[f"aligner.{ALIGNER[name]}.{t}"] = w
        elif k.startswith("model.language_model."):
            out["language_model.model." + k[len("model.language_model.") :]] = w
        elif k == "lm_head.weight":
            if not tied:
                out["language_model.lm_head.weight"] = w
        else:
            raise AssertionError(f"no release name for {k}")
    for k, parts in qkv.items():
        out[k] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    return out


def ignored_extras(hybrid: bool) -> dict[str, np.ndarray]:
    """Tensors real release folders hold that the model never reads."""
    low = LOW if hybrid else SINGLE
    z = np.zeros
    return {
        low + "attn_pool.latent": z((1, 1, 32), np.float32),
        low + "attn_pool.proj.weight": z((32, 32), np.float32),
        "vision_model.high_layer_norm.weight": z((64,), np.float32),
        "vision_model.low_layer_norm.bias": z((32,), np.float32),
        "language_model.model.layers.0.self_attn.rotary_emb.inv_freq": z((8,), np.float32),
    }


def release_config(variant: str) -> dict:
    v = hf_oracle.VARIANTS[variant]
    lang = dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=v["kv_heads"],
        max_position_embeddings=512,
        vocab_size=256,
        tie_word_embeddings=v["tie"],
        torch_dtype="float32",
    )
    siglip = dict(model_name="tiny_siglip", image_size=32, select_feature="same", select_layer=-1)
    if v["hybrid"]:
        sam = dict(model_name="tiny_sam", image_size=64, select_feature="same", select_layer=-1)
        vision = dict(
            cls="HybridVisionTower",
            params=dict(high_res_cfg=sam, low_res_cfg=siglip, concat_type="tuple"),
        )
        projector = "low_high_hybrid_split_mlp_gelu"
    else:
        vision = dict(cls="CLIPVisionTower", params=siglip)
        projector = "mlp_gelu"
    return {
        "model_type": "multi_modality",
        "architectures": ["MultiModalityCausalLM"],
        "language_config": lang,
        "vision_config": vision,
        "aligner_config": dict(
            cls="MlpProjector",
            params=dict(projector_type=projector, depth=2, input_dim=32, n_embed=64),
        ),
    }


@pytest.fixture(scope="module", params=["hybrid_gqa_untied", "siglip_mha_tied"])
def folders(request, tmp_path_factory):
    """The same tiny model as a transformers folder and as an original release folder."""
    variant = request.param
    v = hf_oracle.VARIANTS[variant]
    root = tmp_path_factory.mktemp(f"release_{variant}")
    model = hf_oracle.build(variant)
    hf_dir, release = root / "hf", root / "release"
    model.save_pretrained(str(hf_dir))
    sd = {k: t.detach().numpy() for k, t in model.state_dict().items()}
    release.mkdir()
    tensors = {**to_release(sd, v["hybrid"], v["tie"]), **ignored_extras(v["hybrid"])}
    save_file(tensors, str(release / "model.safetensors"))
    (release / "config.json").write_text(json.dumps(release_config(variant)))
    token = {"id": hf_oracle.IMAGE_TOKEN, "content": "<image_placeholder>", "special": True}
    (release / "tokenizer.json").write_text(json.dumps({"added_tokens": [token]}))
    from_hf(str(hf_dir), str(root / "ckpt_hf"))
    cfg, params = api.load(str(root / "ckpt_hf"))
    return dict(root=root, hf=hf_dir, release=release, cfg=cfg, params=params, hybrid=v["hybrid"])


def _assert_same(a, b):
    fa, fb = P.flatten(a), P.flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        x, y = np.asarray(fa[k]), np.asarray(fb[k])
        assert x.dtype == y.dtype and np.array_equal(x, y), k


def test_release_folder_converts_to_the_same_params(folders):
    out = folders["root"] / "ckpt_release"
    report = from_hf(str(folders["release"]), str(out))
    assert report["layout"] == "release"
    assert report["vision"] == ("hybrid" if folders["hybrid"] else "siglip")
    assert report["tokenizer_files"] == ["tokenizer/tokenizer.json"]
    cfg, params = api.load(str(out))
    assert cfg == folders["cfg"]
    _assert_same(params, folders["params"])


def test_open_model_reads_a_release_folder(folders):
    src = open_model(folders["release"])
    assert src.kind == "hf" and src.cfg == folders["cfg"]
    assert src.tokenizer == str(folders["release"])
    _assert_same(src.params(), folders["params"])


def test_unread_release_tensors_are_ignored_and_listed(folders):
    tensors = read_safetensors(str(folders["release"]))
    renamed, ignored = hf_release.release_to_hf(tensors)
    assert sorted(ignored) == sorted(ignored_extras(folders["hybrid"]))
    assert not any(k.startswith(("vision_model.", "aligner.", "language_model.")) for k in renamed)


def test_an_unknown_release_tensor_is_named(folders, tmp_path):
    folder = tmp_path / "release"
    shutil.copytree(folders["release"], folder)
    tensors = read_safetensors(str(folder))
    tensors["vision_model.mystery_tower.weight"] = np.zeros((2, 2), np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(
        CheckpointMismatch, match=r"unexpected 1 tensor\(s\): vision_model\.mystery"
    ):
        load_hf(str(folder))


def test_an_unknown_tower_name_is_named_with_the_known_ones(folders, tmp_path):
    folder = tmp_path / "release"
    shutil.copytree(folders["release"], folder)
    conf = json.loads((folder / "config.json").read_text())
    params = conf["vision_config"]["params"]
    (params["low_res_cfg"] if folders["hybrid"] else params)["model_name"] = "siglip_giant_patch9"
    (folder / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match="'siglip_giant_patch9'.*siglip_large_patch16_384"):
        open_model(folder)


def test_a_tower_table_that_disagrees_with_the_tensors_is_named(folders, monkeypatch):
    towers = {**hf_release.TOWERS, "tiny_siglip": {**TINY_TOWERS["tiny_siglip"], "width": 48}}
    monkeypatch.setattr(hf_release, "TOWERS", towers)
    with pytest.raises(CheckpointError, match=r"model_name=tiny_siglip: width is 48.*pos_embed"):
        load_hf(str(folders["release"]))


# The config.json files of the Hub releases (deepseek-ai/deepseek-vl-7b-chat, -1.3b-chat).
RELEASE_7B = {
    "model_type": "multi_modality",
    "architectures": ["MultiModalityCausalLM"],
    "language_config": {
        "max_position_embeddings": 16384,
        "model_type": "llama",
        "num_hidden_layers": 30,
        "torch_dtype": "float16",
        "vocab_size": 102400,
    },
    "vision_config": {
        "cls": "HybridVisionTower",
        "params": {
            "concat_type": "tuple",
            "freeze_high": False,
            "freeze_low": False,
            "high_res_cfg": {
                "image_size": 1024,
                "model_name": "sam_b_downsample",
                "output_dim": 1024,
                "select_feature": "same",
                "select_layer": -1,
            },
            "low_res_cfg": {
                "image_size": 384,
                "model_name": "siglip_large_patch16_384",
                "output_dim": 1024,
                "select_feature": "same",
                "select_layer": -1,
            },
        },
    },
    "aligner_config": {
        "cls": "MlpProjector",
        "params": {
            "depth": 2,
            "input_dim": 1024,
            "n_embed": 4096,
            "projector_type": "low_high_hybrid_split_mlp_gelu",
        },
    },
}
RELEASE_1_3B = {
    "model_type": "multi_modality",
    "language_config": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "max_position_embeddings": 16384,
        "model_type": "llama",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "num_key_value_heads": 16,
        "vocab_size": 102400,
    },
    "vision_config": {
        "cls": "CLIPVisionTower",
        "params": {
            "image_size": 384,
            "model_name": "siglip_large_patch16_384",
            "select_feature": "same",
            "select_layer": -1,
        },
    },
    "aligner_config": {
        "cls": "MlpProjector",
        "params": {"depth": 2, "input_dim": 1024, "n_embed": 2048, "projector_type": "mlp_gelu"},
    },
}


def _tower_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """The tensor shapes hf_config_from_release reads, for the towers of a model size."""
    s, low = cfg.siglip, LOW if cfg.hybrid else SINGLE
    shapes = {
        low + "pos_embed": (1, s.grid**2, s.width),
        low + "patch_embed.proj.weight": (s.width, 3, s.patch_size, s.patch_size),
        **{low + f"blocks.{i}.mlp.fc1.weight": (s.mlp_dim, s.width) for i in range(s.depth)},
    }
    if cfg.hybrid:
        m = cfg.sam
        shapes |= {
            HIGH + "pos_embed": (1, m.grid, m.grid, m.width),
            HIGH + "patch_embed.proj.weight": (m.width, 3, m.patch_size, m.patch_size),
            HIGH + "neck.0.weight": (m.out_chans, m.width, 1, 1),
            **{HIGH + f"blocks.{i}.mlp.lin1.weight": (m.mlp_dim, m.width) for i in range(m.depth)},
        }
    return shapes


@pytest.mark.parametrize(("size", "conf"), [("7b", RELEASE_7B), ("1.3b", RELEASE_1_3B)])
def test_the_hub_release_configs_give_the_published_sizes(size, conf):
    """TOWERS and the LlamaConfig defaults agree with model/sizes.py (docs/recipe.md#model-family)."""
    want = model_config(size)
    hf = hf_release.hf_config_from_release(conf, _tower_shapes(want))
    assert hf["image_token_id"] == hf_release.IMAGE_TOKEN_ID
    assert config_from_hf(hf) == want
