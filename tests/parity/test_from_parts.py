"""`convert from-parts`: DeepSeek-VL composed from tiny random transformers parts saved with
save_pretrained (SiglipModel with its text tower, SamModel with prompt encoder and mask decoder,
SiglipVisionModel, LlamaForCausalLM with a byte-level BPE tokenizer).

Tolerance: 1e-5 max abs, float32, on SigLIP features, SAM neck output and text-only logits (the
same weights run through our modules and the parts' own forward). Exports are compared bit for bit.
"""

import json
import os

import jax
import numpy as np
import pytest
import torch

from dsvl_jax import api
from dsvl_jax.checkpoints import CheckpointError, CheckpointMismatch, compose, to_hf
from dsvl_jax.data.records import IMAGE_TAG
from dsvl_jax.data.tokenizer import DEEPSEEK_BOS, DEEPSEEK_EOS, load_tokenizer
from dsvl_jax.model.params import flatten, init_params
from dsvl_jax.model.vlm import DeepseekVL

import hf_oracle

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TOL = 1e-5
# the `tiny` size's towers and LLM (dsvl_jax/model/sizes.py), so a composed model trains as `:tiny`
SIGLIP = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)
SAM = dict(
    hidden_size=32,
    output_channels=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    image_size=64,
    patch_size=8,
    window_size=3,
    global_attn_indexes=[1],
    mlp_dim=64,
)
LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
)
LINES = [
    "The chart shows revenue by quarter.",
    "Read the text in the image and answer the question.",
    "A screenshot of a web page with a login form.",
    "Describe the figure in one sentence.",
] * 8


def make_tokenizer(folder, with_image: bool) -> int:
    """A byte-level BPE tokenizer.json with DeepSeek's BOS/EOS strings; -> its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [DEEPSEEK_BOS, DEEPSEEK_EOS] + ([IMAGE_TAG] if with_image else [])
    tok.train_from_iterator(
        LINES,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    conf = {
        "bos_token": {"content": DEEPSEEK_BOS, "special": True},
        "eos_token": {"content": DEEPSEEK_EOS, "special": True},
        "tokenizer_class": "LlamaTokenizerFast",
        "added_tokens_decoder": {},
    }
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(conf, f, ensure_ascii=False)
    return tok.get_vocab_size()


def _save(model, folder, seed):
    hf_oracle.randomize(model, seed)
    model.eval().save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Saved part folders and their torch models: full SiglipModel, SamModel, SiglipVisionModel, and
    two LLMs: untied without the image token in its tokenizer, tied with it."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        SamConfig,
        SamModel,
        SiglipConfig,
        SiglipModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=50,
        bos_token_id=0,
        eos_token_id=1,
    )
    out = {"root": root}
    out["siglip"] = _save(
        SiglipModel(SiglipConfig(vision_config=SIGLIP, text_config=text)), root / "siglip", 1
    )
    out["siglip_vision"] = _save(
        SiglipVisionModel(SiglipVisionConfig(**SIGLIP, hidden_act="gelu")), root / "sv", 2
    )
    out["sam"] = _save(SamModel(SamConfig(vision_config=SAM)), root / "sam", 3)
    for name, with_image, tie, seed in (("llm", False, False, 4), ("llm_tied", True, True, 5)):
        v = make_tokenizer(root / name, with_image)
        llm = LlamaForCausalLM(LlamaConfig(**LLAMA, vocab_size=v, tie_word_embeddings=tie))
        out[name] = _save(llm, root / name, seed)
        out[f"{name}_vocab"] = v
    return out


@pytest.fixture(scope="module")
def hybrid(parts):
    """SiglipModel + SamModel + an LLM whose tokenizer lacks the image token."""
    root = parts["root"]
    out = str(root / "composed")
    report = compose.from_parts(
        str(root / "siglip"), str(root / "llm"), out, str(root / "sam"), seed=7
    )
    cfg, params = api.load(out)
    return dict(report=report, out=out, cfg=cfg, params=params)


def _state(module, drop=()):
    return {k: v for k, v in module.state_dict().items() if not any(k.startswith(d) for d in drop)}


def test_report_lists_every_tensor_and_the_fresh_parts(parts, hybrid):
    r, cfg = hybrid["report"], hybrid["cfg"]
    v = parts["llm_vocab"]
    assert cfg.hybrid and cfg.image_token_id == v and cfg.llm.vocab_size == v + 1
    assert r["image_token"] == {"id": v, "added": True, "embedding_rows": [v, v + 1]}
    from dsvl_jax.interop.hf_import import read_safetensors

    for role, folder in (("siglip", "siglip"), ("sam", "sam"), ("llm", "llm")):
        keys = read_safetensors(str(parts["root"] / folder))
        p = r["parts"][role]
        n_ignored = sum(len(k) for k in p["ignored"].values())
        assert p["used"] + n_ignored == len(keys), role
    ign = r["parts"]
    assert any(k.startswith("text_model.") for k in ign["siglip"]["ignored"]["text tower"])
    assert "vision_model.head.probe" in ign["siglip"]["ignored"]["attention-pool head"]
    sam_ignored = ign["sam"]["ignored"]["prompt encoder / mask decoder"]
    assert {k.split(".")[0] for k in sam_ignored} == {
        "prompt_encoder",
        "mask_decoder",
        "shared_image_embedding",
    }
    assert {p.split("/")[0] + "/" + p.split("/")[1] for p in r["fresh"]} >= {
        "sam/neck_hd",
        "sam/downsample",
    }
    assert all(
        p.startswith(("adaptor/", "sam/neck_hd/", "sam/downsample/")) or p == "sam/hd_alpha"
        for p in r["fresh"]
    )
    assert any(p.startswith("adaptor/") for p in r["fresh"])
    with open(os.path.join(hybrid["out"], compose.REPORT)) as f:
        assert json.load(f)["fresh"] == r["fresh"]
    # fresh parameters are the model's own random init with --seed (alpha starts at 0)
    ref = flatten(init_params(cfg, 7))
    got = flatten(hybrid["params"])
    for p in r["fresh"]:
        np.testing.assert_array_equal(np.asarray(got[p]), np.asarray(ref[p]), err_msg=p)
    assert float(np.asarray(got["sam/hd_alpha"])[0]) == 0.0


def test_towers_and_llm_compute_what_the_parts_compute(parts, hybrid):
    cfg, params = hybrid["cfg"], hybrid["params"]
    rng = np.random.default_rng(0)
    low = rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    high = rng.normal(0, 1, (2, 3, 64, 64)).astype(np.float32)
    feats = api.image_features(cfg, params, low, high)
    with torch.no_grad():
        ref_low = parts["siglip"].vision_model(torch.tensor(low)).last_hidden_state.numpy()
        ref_neck = parts["sam"].vision_encoder(torch.tensor(high)).last_hidden_state.numpy()
    d = np.abs(feats["siglip"] - ref_low).max()
    print(f"SigLIP features max|diff| = {d:.2e}")
    assert d < TOL

    # SAM's neck output (before DeepSeek's downsample convs): captured from our SamEncoder
    def neck(m):
        return m.towers(
            jax.numpy.asarray(low.transpose(0, 2, 3, 1)),
            jax.numpy.asarray(high.transpose(0, 2, 3, 1)),
        )

    _, state = DeepseekVL(cfg).apply(
        {"params": params},
        method=neck,
        capture_intermediates=lambda mdl, name: mdl.name == "neck" and name == "__call__",
    )
    ours = np.asarray(state["intermediates"]["sam"]["neck"]["__call__"][0]).transpose(0, 3, 1, 2)
    d = np.abs(ours - ref_neck).max()
    print(f"SAM neck max|diff| = {d:.2e}")
    assert ours.shape == ref_neck.shape and d < TOL

    v = parts["llm_vocab"]
    ids = rng.integers(3, v, size=(2, 12))
    logits = api.forward(cfg, params, ids)
    with torch.no_grad():
        ref = parts["llm"](torch.tensor(ids)).logits.numpy()
    d = np.abs(logits[..., :v] - ref).max()
    print(f"text-only logits max|diff| = {d:.2e}")
    assert logits.shape[-1] == v + 1 and d < TOL
    # the image token's rows: the mean of the existing rows
    flat = flatten(params)
    emb = np.asarray(flat["llm/embed/embedding"])
    np.testing.assert_allclose(emb[v], emb[:v].mean(0), rtol=0, atol=1e-6)
    head = np.asarray(flat["llm/lm_head/kernel"])
    np.testing.assert_allclose(head[:, v], head[:, :v].mean(1), rtol=0, atol=1e-6)


def test_tokenizer_gets_the_image_token(parts, hybrid):
    v = parts["llm_vocab"]
    tok = load_tokenizer(os.path.join(hybrid["out"], "tokenizer"))
    from tokenizers import Tokenizer

    src = Tokenizer.from_file(str(parts["root"] / "llm" / "tokenizer.json"))
    assert src.token_to_id(IMAGE_TAG) is None
    assert tok.image_token_id == v and tok.vocab_size == v + 1
    text = "Read the text in the image and answer the question."
    assert tok.encode(text) == src.encode(text, add_special_tokens=False).ids
    assert tok.encode(f"a {IMAGE_TAG} b").count(v) == 1


def test_hf_export_holds_exactly_the_parts_tensors(parts, hybrid, tmp_path):
    from transformers import DeepseekVLHybridForConditionalGeneration

    res = to_hf(hybrid["out"], str(tmp_path / "hf"))
    assert res["tokenizer"]
    m = DeepseekVLHybridForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).model
    pairs = [
        (_state(m.vision_model), _state(parts["siglip"].vision_model, drop=("head.",))),
        (_state(m.high_res_vision_model.vision_encoder), _state(parts["sam"].vision_encoder)),
        (_state(m.language_model), _state(parts["llm"].model)),
    ]
    v = parts["llm_vocab"]
    for got, want in pairs:
        assert set(got) == set(want)
        for k in want:
            g = got[k][:v] if k == "embed_tokens.weight" else got[k]
            assert torch.equal(g, want[k]), k
    lm = DeepseekVLHybridForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).lm_head
    assert torch.equal(lm.weight[:v], parts["llm"].lm_head.weight)


def test_siglip_only_from_a_vision_model_folder(parts, tmp_path):
    """SiglipVisionModel + an LLM whose tokenizer has the image token (tied head): no row is added,
    the logits are the LLM's, the export loads as DeepseekVLForConditionalGeneration."""
    from transformers import DeepseekVLForConditionalGeneration

    root = parts["root"]
    r = compose.from_parts(str(root / "sv"), str(root / "llm_tied"), str(tmp_path / "c"))
    v = parts["llm_tied_vocab"]
    assert r["vision"] == "siglip" and r["image_token"]["added"] is False
    assert r["image_token"]["embedding_rows"] == [v, v] and r["siglip_act"] == "gelu"
    cfg, params = api.load(str(tmp_path / "c"))
    assert cfg.llm.tie_embeddings and cfg.image_token_id == 2  # the tokenizer's own id
    ids = np.random.default_rng(1).integers(3, v, size=(1, 10))
    with torch.no_grad():
        ref = parts["llm_tied"](torch.tensor(ids)).logits.numpy()
    assert np.abs(api.forward(cfg, params, ids) - ref).max() < TOL
    to_hf(str(tmp_path / "c"), str(tmp_path / "hf"))
    m = DeepseekVLForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).model
    want = _state(parts["siglip_vision"], drop=("head.",))
    got = _state(m.vision_model)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_the_command_prints_one_json_line(parts, tmp_path):
    import commands

    root = parts["root"]
    p = commands.run("convert", "from-parts", f"--siglip={root / 'sv'}", f"--out={tmp_path / 'c'}")
    assert p.returncode == 2 and "from-parts needs --siglip DIR and --llm DIR" in p.stderr
    p = commands.run(
        "convert",
        "from-parts",
        f"--siglip={root / 'siglip'}",
        f"--llm={root / 'llm'}",
        f"--sam={root / 'sam'}",
        "--seed=3",
        f"--out={tmp_path / 'c'}",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["command"] == "from-parts" and r["vision"] == "hybrid" and r["seed"] == 3
    assert r["parts"]["siglip"]["ignored"]["attention-pool head"] > 0
    assert r["image_token"]["added"] and r["fresh"] > 0
    assert os.path.isfile(tmp_path / "c" / compose.REPORT)


def test_wrong_parts_are_named(parts, tmp_path):
    root = parts["root"]
    # a SAM folder given as the LLM
    with pytest.raises(CheckpointError, match=r"--llm .*model_type 'sam'.*LlamaForCausalLM"):
        compose.from_parts(str(root / "siglip"), str(root / "sam"), str(tmp_path / "x"))
    # a config.json that disagrees with its tensors: the part's tensor name and both shapes
    import shutil

    bad = tmp_path / "sam_bad"
    shutil.copytree(root / "sam", bad)
    conf = json.loads((bad / "config.json").read_text())
    conf["vision_config"]["output_channels"] = 24
    (bad / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointMismatch) as e:
        compose.from_parts(str(root / "siglip"), str(root / "llm"), str(tmp_path / "y"), str(bad))
    msg = str(e.value)
    assert (
        "--sam vision_encoder.neck.conv1.weight: stored (16, 32, 1, 1) vs expected (24, 32, 1, 1)"
        in msg
    )
    assert not (tmp_path / "y").exists()


def test_stage1_trains_from_the_composed_checkpoint(parts, hybrid, tmp_path):
    """`--config.init_from=CKPT`: the run must agree with the checkpoint on every architecture field
    (the stock SigLIP's tanh GELU against tiny's exact GELU is refused before compiling, naming the
    flag); composed with --siglip_act=gelu, stage 1 trains the adaptor and leaves the parts alone."""
    from dsvl_jax.config import load_experiment
    from dsvl_jax.data import builders
    from dsvl_jax.errors import ConfigError
    from dsvl_jax.train.loop import train

    root, v = parts["root"], parts["llm_vocab"]
    builders.generate_corpus(("caption", "ocr"), str(tmp_path / "data"), n=8, seed=0, image_size=64)

    def cfg(ckpt):
        c = load_experiment(os.path.join(ROOT, "experiments", "stage1_aligner.py"), "tiny").unlock()
        c.data_root, c.init_from = str(tmp_path / "data"), ckpt
        c.data.tokenizer = os.path.join(ckpt, "tokenizer")
        c.model.llm.vocab_size, c.model.image_token_id = v + 1, v
        c.train.steps, c.log.every_steps, c.log.progress, c.eval.every_steps = 2, 1, False, 0
        return c

    with pytest.raises(
        ConfigError,
        match=r"model\.siglip\.act \(config 'gelu', checkpoint 'gelu_tanh'\).*--config\.model\.siglip\.act=gelu_tanh",
    ):
        train(cfg(hybrid["out"]), str(tmp_path / "refused"))
    assert not (tmp_path / "refused" / "checkpoints").exists()

    ckpt = str(tmp_path / "c")
    compose.from_parts(
        str(root / "siglip"), str(root / "llm"), ckpt, str(root / "sam"), siglip_act="gelu"
    )
    res = train(cfg(ckpt), str(tmp_path / "run"))
    assert res.final_dir
    _, start = api.load(ckpt)
    _, end = api.load(res.final_dir)
    a, b = flatten(start), flatten(end)
    moved = sorted(k for k in a if not np.array_equal(np.asarray(a[k]), np.asarray(b[k])))
    assert moved and all(
        k.startswith(("adaptor/", "sam/neck", "sam/downsample", "sam/hd_alpha")) for k in moved
    )
    assert any(k.startswith("adaptor/") for k in moved)
