"""`convert to-hf` with the tokenizer: a PyTorch user's AutoProcessor + model reproduce dsvl_jax exactly.

A tiny hybrid model (sizes.tiny, vocab 512, image token 4) trained for a few steps by dsvl_jax's own
train step, with a SentencePiece tokenizer trained on the embedded corpus and stored in the checkpoint
dir, is exported by `to_hf` (tokenizer found in the checkpoint). transformers then loads the folder with
AutoProcessor and the model class only. For three image + question prompts (charts of different aspect
ratios): prompt strings and ids equal template.render_generation_prompt, pixel_values /
high_res_pixel_values equal preprocess + normalize (1e-5), greedy generate tokens are equal, and
logits agree within 1e-4 (float32).
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsvl_jax import api
from dsvl_jax.data import corpus, records
from dsvl_jax.data.preprocess import image_spec, normalize, preprocess
from dsvl_jax.data.records import IMAGE_TAG, Message
from dsvl_jax.data.template import format_conversation, render_generation_prompt
from dsvl_jax.data.tokenizer import (
    DEEPSEEK_BOS,
    DEEPSEEK_EOS,
    SP_IMAGE_ID,
    HFTokenizer,
    SentencePieceTokenizer,
    train_on_examples,
)
from dsvl_jax.interop import hf_processor

TOL = 1e-4
PIXEL_TOL = 1e-5
N_NEW = 8
TEXTS = [
    "The cat sat.",
    " leading space",
    "two  spaces\n\nand newlines\n",
    "héllo wörld 你好 🙂",
    "digits 2024 and x",
    f"a{IMAGE_TAG}b {IMAGE_TAG}",
    "",
    f"x{DEEPSEEK_EOS}User: hi",
    "\t tab",
    "\u2581odd",
]


def _random_params(cfg, seed=0):
    """Every tensor random and non-zero (the default init leaves hd_alpha, norms and biases constant)."""
    from dsvl_jax.model.params import abstract_params, flatten, unflatten

    rng = np.random.default_rng(seed)
    out = {}
    for k, a in flatten(abstract_params(cfg)).items():
        if k.endswith("hd_alpha"):
            v = np.full(a.shape, 0.7)
        elif k.endswith("scale"):
            v = 1.0 + 0.1 * rng.standard_normal(a.shape)
        elif len(a.shape) >= 2:
            v = 0.15 * rng.standard_normal(a.shape)
        else:
            v = 0.1 * rng.standard_normal(a.shape)
        out[k] = v.astype(a.dtype)
    return unflatten(out)


def _train(cfg, params, steps=3):
    """A few real steps of dsvl_jax's compiled train step (LLM + adaptors + SAM neck/downsample/alpha)."""
    import jax
    import jax.numpy as jnp

    from dsvl_jax.config import base_config
    from dsvl_jax.data.synthetic import synthetic_batch
    from dsvl_jax.model.params import flatten
    from dsvl_jax.parallel import build_mesh, rules_from_config, shard_host_batch
    from dsvl_jax.train.state import StateFactory, TrainState
    from dsvl_jax.train.step import CompiledStep

    c = base_config("tiny")
    c.train.trainable = ("llm", "adaptor", "sam_adaptor")
    c.train.batch_size, c.train.seq_len, c.train.warmup_steps, c.train.lr = 4, 32, 0, 1e-2
    c.parallel.ici = dict(data=1, fsdp=1, tensor=1)
    f = StateFactory(
        cfg, c.train, build_mesh(c.parallel, jax.devices()[:1]), rules_from_config(None)
    )
    train = {k: v for k, v in flatten(params).items() if k in f.trainable}
    state = jax.device_put(
        TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=f.tx.init(train)),
        f.shardings,
    )
    step = CompiledStep(f)
    for i in range(steps):
        state, _ = step(
            state, shard_host_batch(synthetic_batch(cfg, 4, 32, seed=i), f.mesh, f.rules)
        )
    assert int(state.step) == steps
    return jax.tree.map(np.asarray, state.params)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from dsvl_jax.checkpoints import save_params, to_hf
    from dsvl_jax.model.config import model_config_from_dict
    from dsvl_jax.model.sizes import SIZES

    root = tmp_path_factory.mktemp("export_processor")
    cfg = model_config_from_dict(
        {
            **SIZES["tiny"],
            "llm": {**SIZES["tiny"]["llm"], "vocab_size": 512},
            "image_token_id": SP_IMAGE_ID,
        }
    )
    charts = list(corpus.generate("chart", 3, seed=7, image_size=96))
    text = list(corpus.generate("caption", 20, seed=7, image_size=64)) + list(
        corpus.generate("text", 20, seed=7)
    )
    ckpt, hf_dir = root / "ckpt", root / "hf"
    before = _random_params(cfg)
    params = _train(cfg, before)
    save_params(str(ckpt), cfg, params)
    train_on_examples(charts + text, 400, out=ckpt / "tokenizer.model")
    res = to_hf(str(ckpt), str(hf_dir))  # tokenizer found in the checkpoint dir
    tok = SentencePieceTokenizer(ckpt / "tokenizer.model")
    items = []
    for ex in charts:  # first user turn = IMAGE_TAG + "\n" + question
        img = records.decode_image(ex.images[0])
        items.append(
            dict(
                messages=[Message("user", ex.messages[0].content)],
                image=img,
                question=ex.messages[0].content.split("\n", 1)[1],
            )
        )
    return dict(
        cfg=cfg,
        params=params,
        before=before,
        tok=tok,
        dir=str(hf_dir),
        res=res,
        ckpt=str(ckpt),
        items=items,
        root=root,
    )


@pytest.fixture(scope="module")
def hf(exported):
    """Only transformers from here: the processor and the model class, read from the folder."""
    from transformers import AutoProcessor, DeepseekVLHybridForConditionalGeneration

    proc = AutoProcessor.from_pretrained(exported["dir"])
    model = DeepseekVLHybridForConditionalGeneration.from_pretrained(exported["dir"]).eval()
    return proc, model


def test_export_writes_processor_files(exported, hf):
    res, cfg = exported["res"], exported["cfg"]
    assert res["tokenizer"] == os.path.join(exported["ckpt"], "tokenizer.model")
    for f in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
        "processor_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        assert f in res["files"] and os.path.isfile(os.path.join(exported["dir"], f)), f
    proc, model = hf
    assert type(proc).__name__ == "DeepseekVLHybridProcessor"
    assert type(proc.image_processor).__name__.startswith("DeepseekVLHybridImageProcessor")
    assert proc.num_image_tokens == cfg.num_image_tokens == 16
    assert (
        proc.image_token == IMAGE_TAG and proc.image_token_id == SP_IMAGE_ID == cfg.image_token_id
    )
    t = proc.tokenizer
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (2, 3, 0)
    assert (t.bos_token, t.eos_token) == (DEEPSEEK_BOS, DEEPSEEK_EOS)
    g = model.generation_config
    assert (g.bos_token_id, g.eos_token_id, g.pad_token_id) == (2, 3, 0)
    # Training moved the parameters (the export holds trained weights, not the init).
    from dsvl_jax.model.params import flatten

    moved = [
        k
        for k, v in flatten(exported["params"]).items()
        if not np.array_equal(v, flatten(exported["before"])[k])
    ]
    assert any(k.startswith("llm/") for k in moved) and "sam/hd_alpha" in moved


def test_tokenizer_json_encodes_and_decodes_like_sentencepiece(exported, hf):
    tok, t = exported["tok"], hf[0].tokenizer
    texts = TEXTS + [m.content for it in exported["items"] for m in it["messages"]]
    texts += [m.content for ex in corpus.generate("text", 10, seed=3) for m in ex.messages]
    for s in texts:
        ids = tok.encode(s)
        assert t(s, add_special_tokens=False)["input_ids"] == ids, s
        assert t(s)["input_ids"] == [tok.bos_id] + ids, s  # BOS added, no EOS
        assert t.decode(ids) == tok.decode(ids), s
        assert t.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special=True), s
    # dsvl_jax's own HF reader takes the exported folder too, with the same ids.
    again = HFTokenizer(exported["dir"])
    assert (again.bos_id, again.eos_id, again.pad_id, again.image_token_id) == (2, 3, 0, 4)
    assert all(again.encode(s) == tok.encode(s) for s in texts)


def _chat(it):
    return [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "\n" + it["question"]}],
        }
    ]


def test_processor_ids_and_pixels_match_ours(exported, hf):
    proc, cfg, tok, spec = hf[0], exported["cfg"], exported["tok"], image_spec(exported["cfg"])
    for it in exported["items"]:
        ours = render_generation_prompt(it["messages"], tok, cfg.num_image_tokens).ids
        prompt = proc.apply_chat_template(_chat(it), add_generation_prompt=True)
        assert prompt == format_conversation(it["messages"], add_generation_prompt=True)
        # A plain-string message renders the same.
        assert (
            proc.apply_chat_template(
                [{"role": "user", "content": it["messages"][0].content}], add_generation_prompt=True
            )
            == prompt
        )
        out = proc(text=prompt, images=[it["image"]], return_tensors="np")
        np.testing.assert_array_equal(out["input_ids"][0], ours)
        # The one-call form (images inside the messages, tokenize=True) gives the same ids and pixels.
        chat = _chat(it)
        chat[0]["content"][0]["image"] = it["image"]
        one = proc.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="np"
        )
        np.testing.assert_array_equal(one["input_ids"][0], ours)
        np.testing.assert_array_equal(one["pixel_values"], out["pixel_values"])
        views = preprocess(it["image"], spec)
        for key, ref, mean, std in (
            ("pixel_values", "pixels", spec.low_mean, spec.low_std),
            ("high_res_pixel_values", "high_pixels", spec.high_mean, spec.high_std),
        ):
            want = normalize(views[ref], mean, std).transpose(2, 0, 1)
            assert out[key].shape == (1, *want.shape)
            assert np.abs(out[key][0] - want).max() <= PIXEL_TOL, key
    sizes = {it["image"].size for it in exported["items"]}
    assert len(sizes) > 1  # different aspect ratios, so the pad paths differ


def _batch(exported, proc):
    prompts = [
        proc.apply_chat_template(_chat(it), add_generation_prompt=True) for it in exported["items"]
    ]
    return proc(
        text=prompts,
        images=[it["image"] for it in exported["items"]],
        padding=True,
        return_tensors="pt",
    )


def test_generate_and_logits_match_dsvl_jax(exported, hf):
    proc, model = hf
    cfg, params, tok = exported["cfg"], exported["params"], exported["tok"]
    b = _batch(exported, proc)
    mask = b["attention_mask"].numpy()
    assert (mask[:, 0] == 0).any() and (
        mask[:, -1] == 1
    ).all()  # left padding (tokenizer padding_side)
    for r, it in enumerate(exported["items"]):  # each padded row still holds exactly our prompt
        ours = render_generation_prompt(it["messages"], tok, cfg.num_image_tokens).ids
        np.testing.assert_array_equal(b["input_ids"][r].numpy()[mask[r] == 1], ours)
    np_in = {
        k: b[k].numpy()
        for k in ("input_ids", "attention_mask", "pixel_values", "high_res_pixel_values")
    }
    with torch.no_grad():
        pos = torch.tensor(np.maximum(np.cumsum(mask, -1) - 1, 0))
        ref = model(**b, position_ids=pos).logits.numpy()
        # eos/pad from generation_config.json
        gen = model.generate(**b, max_new_tokens=N_NEW, do_sample=False)
    ours = api.forward(cfg, params, **np_in)
    diff = np.abs(ours - ref)[mask.astype(bool)].max()
    print(f"logits max|diff| = {diff:.2e} (max|logit| {np.abs(ref).max():.2f})")
    assert diff < TOL
    new_hf = gen[:, np_in["input_ids"].shape[1] :].numpy()
    new = api.generate(
        cfg, params, **np_in, max_new_tokens=N_NEW, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id
    )
    print("greedy:", new.tolist())
    np.testing.assert_array_equal(new[:, : new_hf.shape[1]], new_hf)
    assert (
        new[:, new_hf.shape[1] :] == tok.pad_id
    ).all()  # HF stops once every row has emitted EOS
    assert len({tuple(r) for r in new.tolist()}) > 1  # the rows really differ


def test_hf_tokenizer_folder_is_copied(exported, tmp_path):
    """An HF tokenizer (here DeepSeek-style: byte-level BPE, LlamaTokenizerFast class, no pad, image token only
    in additional_special_tokens) is copied; the config is completed so AutoProcessor gets what it needs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer

    src = tmp_path / "src"
    src.mkdir()
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    lines = [m.content for ex in corpus.generate("text", 20, seed=1) for m in ex.messages]
    t.train_from_iterator(
        lines,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=[DEEPSEEK_BOS, DEEPSEEK_EOS],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    t.add_special_tokens([IMAGE_TAG])
    t.save(str(src / "tokenizer.json"))
    (src / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizerFast",
                "add_bos_token": True,
                "pad_token": None,
                "bos_token": {"__type": "AddedToken", "content": DEEPSEEK_BOS},
                "eos_token": {"__type": "AddedToken", "content": DEEPSEEK_EOS},
                "model_max_length": 16384,
            }
        )
    )
    (src / "special_tokens_map.json").write_text(
        json.dumps({"additional_special_tokens": [IMAGE_TAG]})
    )
    ours = HFTokenizer(src)
    out = tmp_path / "out"
    _tok, files = hf_processor.write_tokenizer(out, src)
    a, b = (
        json.loads((src / "tokenizer.json").read_text()),
        json.loads((out / "tokenizer.json").read_text()),
    )
    assert (
        "tokenizer.json" in files
        and a["model"] == b["model"]
        and a["added_tokens"] == b["added_tokens"]
    )
    # BOS added
    assert a["post_processor"] is None and b["post_processor"]["type"] == "TemplateProcessing"
    h = AutoTokenizer.from_pretrained(str(out))
    # pad falls back to EOS, as DeepSeek's
    assert h.image_token == IMAGE_TAG and h.pad_token_id == ours.eos_id
    assert h.model_max_length == 16384  # other source settings are kept
    for s in TEXTS:
        assert h(s)["input_ids"] == [ours.bos_id] + ours.encode(s), s
    # Our own export folder as a source round-trips to the same files.
    again = tmp_path / "again"
    hf_processor.write_tokenizer(again, exported["dir"])
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        want = Path(exported["dir"], name).read_text()
        assert json.loads((again / name).read_text()) == json.loads(want), name
    want = Path(exported["dir"], "chat_template.jinja").read_text()
    assert (again / "chat_template.jinja").read_text() == want


def test_tokenizer_that_does_not_fit_the_model_is_refused(exported, tmp_path):
    import dataclasses

    cfg, src = exported["cfg"], os.path.join(exported["ckpt"], "tokenizer.model")
    with pytest.raises(
        hf_processor.ExportError, match=r"image token '<image_placeholder>' has id 4.*id=7"
    ):
        hf_processor.save_processor(tmp_path / "a", dataclasses.replace(cfg, image_token_id=7), src)
    small = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, vocab_size=300))
    with pytest.raises(hf_processor.ExportError, match=r"400 ids.*vocab_size=300"):
        hf_processor.save_processor(tmp_path / "b", small, src)
    from dsvl_jax.checkpoints import to_hf
    from dsvl_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="nowhere.model"):
        to_hf(exported["ckpt"], str(tmp_path / "c"), tokenizer=str(tmp_path / "nowhere.model"))
    pb = __import__("dsvl_jax.compat", fromlist=["x"]).sentencepiece_model_pb2()

    proto = pb.ModelProto()
    proto.ParseFromString(exported["tok"].serialized())
    proto.normalizer_spec.add_dummy_prefix = True
    with pytest.raises(hf_processor.ExportError, match="add_dummy_prefix"):
        hf_processor.sentencepiece_tokenizer_json(proto.SerializeToString(), "x.model")


U, A, S = (
    (lambda t: Message("user", t)),
    (lambda t: Message("assistant", t)),
    (lambda t: Message("system", t)),
)
CONVERSATIONS = {
    "multi_turn": [U("What is shown?"), A("A red chart."), U("  And the total? "), A(" 345 \n")],
    "two_images": [
        U(f"Compare {IMAGE_TAG} and\n{IMAGE_TAG} please"),
        A("The first is blue."),
        U(IMAGE_TAG),
        A("A cat."),
    ],
    "user_last": [U(f"{IMAGE_TAG} What is this?")],
    "own_system": [S("Be brief."), U("Hi"), A("Hello.")],
    "no_system": [S(""), U(f"{IMAGE_TAG}\nRead it.")],
    "empty_final_answer": [U("What is this?"), A("")],
}


def _parts(text):
    """'a<image>b' -> HF content parts [text a, image, text b] (empty texts left out)."""
    out = []
    for j, t in enumerate(text.split(IMAGE_TAG)):
        if j:
            out.append({"type": "image"})
        if t:
            out.append({"type": "text", "text": t})
    return out


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_chat_template_renders_like_our_template(name):
    """chat_template.jinja == data/template.format_conversation, with parts or plain strings as content."""
    from transformers.utils.chat_template_utils import render_jinja_template

    msgs = CONVERSATIONS[name]
    template = hf_processor.chat_template()
    for gen in [False, True] if msgs[-1].role == "user" else [False]:
        want = format_conversation(msgs, add_generation_prompt=gen)
        for style in ("parts", "string"):
            chat = [
                {
                    "role": m.role,
                    "content": _parts(m.content)
                    if style == "parts" and m.role != "system"
                    else m.content,
                }
                for m in msgs
            ]
            out = render_jinja_template([chat], chat_template=template, add_generation_prompt=gen)
            got = out[0][0] if isinstance(out, tuple) else out[0]
            assert got == want, (name, gen, style)


def test_siglip_only_export_gets_the_plain_processor(exported, tmp_path):
    """A SigLIP-only model (1.3B layout) gets DeepseekVLProcessor + DeepseekVLImageProcessor (bicubic, 0.5/0.5)."""
    from transformers import AutoProcessor

    from dsvl_jax.interop.hf_export import save_hf
    from dsvl_jax.model.config import model_config_from_dict
    from dsvl_jax.model.params import abstract_params, flatten, unflatten
    from dsvl_jax.model.sizes import SIZES

    cfg = model_config_from_dict(
        {
            **SIZES["tiny_siglip"],
            "llm": {**SIZES["tiny_siglip"]["llm"], "vocab_size": 512},
            "image_token_id": SP_IMAGE_ID,
        }
    )
    params = unflatten(
        {k: np.zeros(a.shape, a.dtype) for k, a in flatten(abstract_params(cfg)).items()}
    )
    files = save_hf(
        str(tmp_path), cfg, params, tokenizer=os.path.join(exported["ckpt"], "tokenizer.model")
    )
    assert "preprocessor_config.json" in files
    conf = json.loads(Path(tmp_path / "config.json").read_text())["text_config"]
    assert (conf["bos_token_id"], conf["eos_token_id"], conf["pad_token_id"]) == (2, 3, 0)
    proc = AutoProcessor.from_pretrained(str(tmp_path))
    assert type(proc).__name__ == "DeepseekVLProcessor" and proc.num_image_tokens == 16
    spec = image_spec(cfg)
    for w, h in [(50, 30), (30, 50), (7, 40)]:
        img = Image.fromarray(np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8))
        out = proc(text=f"User: {IMAGE_TAG}\nHi\n\nAssistant:", images=[img], return_tensors="np")
        want = normalize(preprocess(img, spec)["pixels"], spec.low_mean, spec.low_std).transpose(
            2, 0, 1
        )
        assert (
            "high_res_pixel_values" not in out
            and np.abs(out["pixel_values"][0] - want).max() <= PIXEL_TOL
        )


def test_from_hf_keeps_the_tokenizer_for_the_next_export(exported, tmp_path):
    """HF folder -> from-hf (tokenizer files go to CKPT/tokenizer/) -> to-hf finds them: same tokenizer files."""
    from dsvl_jax.checkpoints import from_hf, to_hf

    ckpt, out = tmp_path / "ckpt", tmp_path / "hf"
    res = from_hf(exported["dir"], str(ckpt))
    assert res["tokenizer_files"] == [
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
    ]
    res = to_hf(str(ckpt), str(out))
    assert res["tokenizer"] == str(ckpt / "tokenizer")
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
        "processor_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ):
        a, b = (out / name).read_text(), Path(os.path.join(exported["dir"], name)).read_text()
        assert (json.loads(a) == json.loads(b)) if name.endswith(".json") else a == b, name
