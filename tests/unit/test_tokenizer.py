"""Tokenizers (our SentencePiece models, HF tokenizer.json) and the "deepseek" template with its loss mask.

Everything is built here from generated text: a SentencePiece model and a byte-level BPE
tokenizer.json (DeepSeek's kind of tokenizer) with DeepSeek's special strings.
"""

import json
import random

import numpy as np
import pytest

from dsvl_jax.data.records import IMAGE_TAG, BadRecord, Example, Message
from dsvl_jax.data.template import (
    DEFAULT_SYSTEM_PROMPT,
    TemplateError,
    format_conversation,
    render,
    render_generation_prompt,
)
from dsvl_jax.data.tokenizer import (
    DEEPSEEK_BOS,
    DEEPSEEK_EOS,
    HFTokenizer,
    SentencePieceTokenizer,
    TokenizerError,
    load_tokenizer,
    train_sentencepiece,
)

N_IMG = 16  # image tokens per image of the tiny test model (576 for real models)
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "image",
    "shows",
    "chart",
    "with",
    "red",
    "blue",
    "bars",
    "lines",
    "describe",
    "what",
    "you",
    "see",
    "answer",
    "question",
    "table",
    "row",
    "column",
    "value",
    "total",
    "price",
    "year",
    "page",
    "text",
    "title",
    "12",
    "345",
    "is",
    "are",
    "of",
    "in",
]


def _sentences(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
        out.append(s[0].upper() + s[1:] + rng.choice([".", "?", "!", ":", ""]))
    return out


CORPUS = _sentences(0, 300) + [
    DEFAULT_SYSTEM_PROMPT,
    "User: what is this?\n\nAssistant: a chart.",
    IMAGE_TAG,
]


@pytest.fixture(scope="session")
def sp_tok() -> SentencePieceTokenizer:
    return SentencePieceTokenizer(train_sentencepiece(CORPUS, 400))


def _byte_bpe(folder, pre_tokenizer) -> None:
    """Train a byte-level BPE tokenizer.json with DeepSeek's special strings into `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=[DEEPSEEK_BOS, DEEPSEEK_EOS],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok.add_special_tokens([IMAGE_TAG])
    tok.save(str(folder / "tokenizer.json"))


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """GPT-2 style byte-level BPE, with tokenizer_config/special_tokens_map shaped like DeepSeek's."""
    from tokenizers import pre_tokenizers

    d = tmp_path_factory.mktemp("hf_tok")
    _byte_bpe(d, pre_tokenizers.ByteLevel(add_prefix_space=False))
    (d / "tokenizer_config.json").write_text(
        json.dumps(
            {  # DeepSeek's form: AddedToken dicts, no pad
                "add_bos_token": True,
                "bos_token": {"__type": "AddedToken", "content": DEEPSEEK_BOS},
                "eos_token": {"__type": "AddedToken", "content": DEEPSEEK_EOS},
                "pad_token": None,
            }
        )
    )
    (d / "special_tokens_map.json").write_text(
        json.dumps({"additional_special_tokens": [IMAGE_TAG]})
    )
    return d


@pytest.fixture(scope="session")
def hf_tok(hf_dir) -> HFTokenizer:
    return HFTokenizer(hf_dir)


@pytest.fixture(scope="session")
def hf_split_tok(tmp_path_factory) -> HFTokenizer:
    """DeepSeek-style pre-tokenizer (newlines, letter runs, punctuation runs, single digits, then bytes);
    no config files, so the special strings come from the DeepSeek defaults."""
    from tokenizers import pre_tokenizers as pt

    d = tmp_path_factory.mktemp("hf_split_tok")
    splits = [
        pt.Split(p, "isolated") for p in (r"[\r\n]", r"\s?[A-Za-z]+", r"\s?[!-/:-~]+", r"\s+$")
    ]
    _byte_bpe(
        d,
        pt.Sequence(
            splits
            + [
                pt.Digits(individual_digits=True),
                pt.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
    )
    return HFTokenizer(d / "tokenizer.json")


@pytest.fixture(params=["sp", "hf", "hf_split"])
def tok(request, sp_tok, hf_tok, hf_split_tok):
    return {"sp": sp_tok, "hf": hf_tok, "hf_split": hf_split_tok}[request.param]


ROUND_TRIP = [
    "The cat sat.",
    " leading space",
    "two  spaces\n\nand newlines\n",
    "héllo wörld 你好 🙂",
    "digits 2024 and x",
    f"a{IMAGE_TAG}b {IMAGE_TAG}",
    "",
]


# --- tokenizers ----------------------------------------------------------------------------------


def test_sentencepiece_special_ids_are_fixed(sp_tok):
    assert (sp_tok.pad_id, sp_tok.bos_id, sp_tok.eos_id, sp_tok.image_token_id) == (0, 2, 3, 4)
    assert (sp_tok.bos_text, sp_tok.eos_text) == (DEEPSEEK_BOS, DEEPSEEK_EOS)
    assert 300 < sp_tok.vocab_size <= 400
    assert sp_tok._sp.id_to_piece(5) == "<0x00>" and sp_tok._sp.id_to_piece(1) == "<unk>"


def test_round_trip_and_image_tag_is_one_id(tok):
    for s in ROUND_TRIP:
        ids = tok.encode(s)
        assert tok.bos_id not in ids or DEEPSEEK_BOS in s
        assert tok.decode(ids) == s, s
    ids = tok.encode(f"see{IMAGE_TAG}the chart")
    assert ids.count(tok.image_token_id) == 1
    assert tok.decode(ids[: ids.index(tok.image_token_id)]) == "see"
    assert tok.decode(ids[ids.index(tok.image_token_id) + 1 :]) == "the chart"
    # special strings map to their ids
    assert tok.encode(f"x{DEEPSEEK_EOS}y").count(tok.eos_id) == 1
    assert (
        tok.decode(
            [tok.bos_id, *tok.encode("hi"), tok.image_token_id, tok.eos_id], skip_special=True
        )
        == "hi"
    )


def test_sentencepiece_file_and_load_tokenizer(tmp_path, sp_tok):
    path = tmp_path / "tok.model"
    train_sentencepiece(CORPUS, 400, out=path)
    for src in (path, str(path), tmp_path):
        t = load_tokenizer(src)
        assert isinstance(t, SentencePieceTokenizer)
        assert t.encode("The cat sat on the mat.") == sp_tok.encode("The cat sat on the mat.")


def test_sentencepiece_errors(tmp_path):
    import io

    import sentencepiece as spm

    with pytest.raises(FileNotFoundError, match="nope.model"):
        load_tokenizer(tmp_path / "nope.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="junk.model: not a SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model")
    buf = io.BytesIO()  # a model trained with SentencePiece defaults: no image piece, dummy prefix
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        vocab_size=120,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    with pytest.raises(TokenizerError, match="<image_placeholder>"):
        SentencePieceTokenizer(buf.getvalue())
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        vocab_size=120,
        hard_vocab_limit=False,
        minloglevel=2,
        user_defined_symbols=[IMAGE_TAG],
    )
    with pytest.raises(TokenizerError, match="dummy prefix"):
        SentencePieceTokenizer(buf.getvalue())
    with pytest.raises(ValueError, match="fixed"):
        train_sentencepiece(CORPUS, 400, eos_id=1)


def test_hf_tokenizer_special_ids_and_transformers_agree(hf_dir, hf_tok):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    assert hf_tok.bos_id == raw.token_to_id(DEEPSEEK_BOS) and hf_tok.eos_id == raw.token_to_id(
        DEEPSEEK_EOS
    )
    assert hf_tok.image_token_id == raw.token_to_id(IMAGE_TAG)
    # no pad token: falls back to EOS, as DeepSeek's processor
    assert hf_tok.pad_id == hf_tok.eos_id
    assert hf_tok.vocab_size == raw.get_vocab_size(with_added_tokens=True)
    assert isinstance(load_tokenizer(hf_dir / "tokenizer.json"), HFTokenizer)
    transformers = pytest.importorskip("transformers")
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(hf_dir / "tokenizer.json"))
    chat = format_conversation(
        [Message("user", f"{IMAGE_TAG}Describe."), Message("assistant", "A cat.")]
    )
    for s in ROUND_TRIP + [chat]:
        ids = hf_tok.encode(s)
        assert ids == ref.encode(s, add_special_tokens=False), s
        assert hf_tok.decode(ids) == ref.decode(ids, skip_special_tokens=False), s


def test_hf_tokenizer_errors(tmp_path, hf_dir):
    from tokenizers import Tokenizer

    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        HFTokenizer(tmp_path / "missing.json")
    raw = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    vocab = raw.get_vocab()
    no_image = tmp_path / "no_image"
    no_image.mkdir()
    data = json.loads(raw.to_str())  # the same tokenizer without the added image token
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != IMAGE_TAG]
    (no_image / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match=r"no_image/tokenizer.json.*<image_placeholder>"):
        load_tokenizer(no_image)
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "tokenizer.json").write_text(raw.to_str())
    (cfg / "tokenizer_config.json").write_text(
        json.dumps({"extra_special_tokens": {"image_token": "<img>"}})
    )
    with pytest.raises(TokenizerError, match="'<img>'.*image_token"):
        HFTokenizer(cfg)
    assert HFTokenizer(cfg, image=IMAGE_TAG).image_token_id == vocab[IMAGE_TAG]  # arguments win


# --- template strings against the HF chat template ----------------------------------------------

# The HF converters' CHAT_TEMPLATE (transformers models/deepseek_vl*/convert_*_weights_to_hf.py, not
# shipped in the wheel), transcribed (docs/recipe.md#chat-format). Rendered by transformers' own jinja setup.
HF_CHAT_TEMPLATE = (
    "{%- set eos = '<\uff5cend\u2581of\u2581sentence\uff5c>' -%}"
    "{{- 'You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language.\n\n' -}}"
    "{%- for m in messages -%}"
    "{%- set parts = m['content'] -%}"
    "{%- if m['role'] | lower == 'user' -%}{{- 'User: ' -}}"
    "{%- elif m['role'] | lower == 'assistant' -%}{{- 'Assistant:' -}}"
    "{%- if not (loop.last and not add_generation_prompt and parts[0]['type'] == 'text' and parts[0]['text'] == '') -%}"
    "{{- ' ' -}}{%- endif -%}"
    "{%- else -%}{{- m['role'].capitalize() + ': ' -}}{%- endif -%}"
    "{%- for p in parts -%}"
    "{%- if p['type'] == 'image' -%}{{- '<image_placeholder>' -}}"
    "{%- elif p['type'] == 'text' -%}"
    "{%- set t = p['text'] -%}"
    "{%- if loop.first -%}{%- set t = t.lstrip() -%}{%- endif -%}"
    "{%- if loop.last -%}{%- set t = t.rstrip() -%}{%- endif -%}"
    "{%- if not loop.first and parts[loop.index0 - 1]['type'] == 'text' -%}{{- ' ' -}}{%- endif -%}"
    "{{- t -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if not loop.last or add_generation_prompt -%}"
    "{{- '\n\n' if m['role'] | lower == 'user' else eos -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)


def _hf_render(messages, add_generation_prompt: bool) -> str:
    cu = pytest.importorskip("transformers.utils.chat_template_utils")
    chat = []
    for m in messages:
        parts = []
        for j, text in enumerate(m.content.split(IMAGE_TAG)):
            if j:
                parts.append({"type": "image"})
            if text or (len(parts) == 0 and j == len(m.content.split(IMAGE_TAG)) - 1):
                parts.append({"type": "text", "text": text})
        chat.append({"role": m.role, "content": parts})
    out = cu.render_jinja_template(
        [chat], chat_template=HF_CHAT_TEMPLATE, add_generation_prompt=add_generation_prompt
    )
    return out[0][0] if isinstance(out, tuple) else out[0]


U, A = (lambda t: Message("user", t)), (lambda t: Message("assistant", t))
CONVERSATIONS = {
    "single_turn": [U("What is shown?"), A("A red chart.")],
    "multi_turn": [U("What is shown?"), A("A red chart."), U("  And the total? "), A(" 345 \n")],
    "image_first": [U(f"{IMAGE_TAG}Describe each stage of this image."), A("Three bars.")],
    "two_images": [
        U(f"Compare {IMAGE_TAG} and\n{IMAGE_TAG} please"),
        A("The first is blue."),
        U(f"{IMAGE_TAG}"),
        A("A cat on a mat."),
    ],
    "user_last": [U(f"{IMAGE_TAG} What is this?")],
    "empty_final_answer": [U("What is this?"), A("")],
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("gen", [False, True], ids=["plain", "generation"])
def test_format_matches_hf_chat_template(name, gen):
    msgs = CONVERSATIONS[name]
    if gen and msgs[-1].role != "user":
        with pytest.raises(TemplateError, match="must end with a user message"):
            format_conversation(msgs, add_generation_prompt=True)
        return
    ours, hf = format_conversation(msgs, add_generation_prompt=gen), _hf_render(msgs, gen)
    if not gen and msgs[-1].role == "assistant" and msgs[-1].content:
        # HF drops the final separator; training keeps the answer's EOS
        assert ours == hf + DEEPSEEK_EOS
    else:
        assert ours == hf
    if gen:
        assert ours.endswith("\n\nAssistant:")


def test_format_spec_examples():
    assert format_conversation(
        [U(f"{IMAGE_TAG}Describe each stage of this image.")], add_generation_prompt=True
    ) == (
        DEFAULT_SYSTEM_PROMPT
        + f"\n\nUser: {IMAGE_TAG}Describe each stage of this image.\n\nAssistant:"
    )
    assert format_conversation([U("q1"), A("a1"), U("q2")], add_generation_prompt=True).endswith(
        f"User: q1\n\nAssistant: a1{DEEPSEEK_EOS}User: q2\n\nAssistant:"
    )
    custom = [Message("system", " Be brief. "), U("q"), A("a")]
    assert format_conversation(custom) == f"Be brief.\n\nUser: q\n\nAssistant: a{DEEPSEEK_EOS}"
    assert (
        format_conversation([Message("system", ""), U("q"), A("a")])
        == f"User: q\n\nAssistant: a{DEEPSEEK_EOS}"
    )
    assert (
        format_conversation([U("q"), A("a")], default_system="")
        == f"User: q\n\nAssistant: a{DEEPSEEK_EOS}"
    )


# --- ids and loss mask ---------------------------------------------------------------------------


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def _expand(ids: list[int], tok) -> list[int]:
    out = []
    for i in ids:
        out += [i] * N_IMG if i == tok.image_token_id else [i]
    return out


@pytest.mark.parametrize("name", ["single_turn", "multi_turn", "image_first", "two_images"])
def test_loss_mask_covers_exactly_the_answers(tok, name):
    msgs = CONVERSATIONS[name]
    n_images = sum(m.content.count(IMAGE_TAG) for m in msgs)
    ex = Example("r1", "chart", tuple(msgs), images=(b"png",) * n_images)
    r = render(ex, tok, num_image_tokens=N_IMG)
    assert (
        r.ids.dtype == np.int32 and r.loss_mask.dtype == bool and r.ids.shape == r.loss_mask.shape
    )
    assert r.ids[0] == tok.bos_id and not r.loss_mask[0]
    answers = [" " + m.content.strip() + tok.eos_text for m in msgs if m.role == "assistant"]
    assert [tok.decode(r.ids[a:b]) for a, b in _runs(r.loss_mask)] == answers
    img = r.ids == tok.image_token_id
    assert img.sum() == N_IMG * n_images == N_IMG * r.num_images and not (img & r.loss_mask).any()
    assert [b - a for a, b in _runs(img)] == [N_IMG] * n_images  # one contiguous block per tag
    # segment-wise ids equal tokenizing the whole rendered string (plus BOS, images expanded)
    full = [tok.bos_id] + tok.encode(format_conversation(msgs, eos_text=tok.eos_text))
    assert r.ids.tolist() == _expand(full, tok)
    assert tok.decode(r.ids[~r.loss_mask & ~img]).startswith(
        tok.bos_text + DEFAULT_SYSTEM_PROMPT + "\n\nUser: "
    )
    # where a conversation too long for a row may be cut: right after each answer's EOS but the last,
    # i.e. at the start of every later "User:" turn
    ends = [b for _, b in _runs(r.loss_mask)]
    assert r.breaks.tolist() == [b for b in ends if b < len(r.ids)]
    for b in r.breaks:
        assert r.ids[b - 1] == tok.eos_id and tok.decode(r.ids[b : b + 3]).startswith("User")


def test_segments_equal_full_string_on_random_conversations(tok):
    rng = random.Random(7)
    pieces = _sentences(1, 50) + [IMAGE_TAG, "\n", "  ", "(a)", "!", "héllo", "12:30"]
    for _ in range(60):
        msgs = []
        for i in range(2 * rng.randint(1, 3)):
            text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))
            if i % 2:  # answers: no images, not blank
                text = text.replace(IMAGE_TAG, "") if text.replace(IMAGE_TAG, "").strip() else "x"
            msgs.append(Message(("user", "assistant")[i % 2], text))
        r = render(msgs, tok, num_image_tokens=N_IMG)
        full = [tok.bos_id] + tok.encode(format_conversation(msgs, eos_text=tok.eos_text))
        assert r.ids.tolist() == _expand(full, tok), msgs
        answers = [" " + m.content.strip() + tok.eos_text for m in msgs if m.role == "assistant"]
        assert [tok.decode(r.ids[a:b]) for a, b in _runs(r.loss_mask)] == answers


def test_pretraining_text(tok):
    ex = Example(
        "t1",
        "caption",
        (Message("text", f"{IMAGE_TAG}A cat on a mat."), Message("text", "Page 2")),
        images=(b"png",),
    )
    r = render(ex, tok, num_image_tokens=N_IMG)
    assert r.ids[0] == tok.bos_id and r.ids[-1] == tok.eos_id and r.num_images == 1
    img = r.ids == tok.image_token_id
    np.testing.assert_array_equal(r.loss_mask, ~img & (np.arange(len(r.ids)) > 0))
    assert tok.decode(r.ids[r.loss_mask]) == "A cat on a mat.\nPage 2" + tok.eos_text
    assert np.flatnonzero(img).tolist() == list(range(1, 1 + N_IMG))
    assert r.breaks is None  # pretraining text may be cut anywhere outside an image block


def test_generation_prompt(tok):
    msgs = [U("q1"), A("a1"), U(f"{IMAGE_TAG}q2")]
    r = render_generation_prompt(msgs, tok, num_image_tokens=N_IMG)
    assert not r.loss_mask.any() and r.num_images == 1 and r.ids[0] == tok.bos_id
    assert tok.decode(r.ids).endswith(
        f"a1{tok.eos_text}User: " + IMAGE_TAG * N_IMG + "q2\n\nAssistant:"
    )
    full = [tok.bos_id] + tok.encode(format_conversation(msgs, add_generation_prompt=True))
    assert r.ids.tolist() == _expand(full, tok)


def test_truncation(tok):
    text = Example("t", "text", (Message("text", " ".join(_sentences(2, 20))),))
    full = render(text, tok, num_image_tokens=N_IMG)
    r = render(text, tok, num_image_tokens=N_IMG, max_len=10)
    assert r.truncated and not full.truncated and r.ids.tolist() == full.ids[:10].tolist()
    assert r.loss_mask.tolist() == full.loss_mask[:10].tolist()
    with pytest.raises(TemplateError, match=r"record t: bad_conversation: \d+ tokens > max_len 10"):
        render(text, tok, num_image_tokens=N_IMG, max_len=10, overflow="error")
    cap = Example(
        "c", "caption", (Message("text", f"Two: {IMAGE_TAG}{IMAGE_TAG} done"),), images=(b"1", b"2")
    )
    n = len(render(cap, tok, num_image_tokens=N_IMG).ids)
    assert render(
        cap, tok, num_image_tokens=N_IMG, max_len=n - 1
    ).truncated  # text after the images may go
    with pytest.raises(
        TemplateError, match="record c: bad_conversation: .* would cut image 2 of 2"
    ):
        render(cap, tok, num_image_tokens=N_IMG, max_len=n - 4 - N_IMG)
    with pytest.raises(TemplateError, match="empty_text: no loss token left within max_len 5"):
        render(
            [U("What is shown in the chart?"), A("A red chart.")],
            tok,
            num_image_tokens=N_IMG,
            max_len=5,
        )


@pytest.mark.parametrize(
    "msgs, match",
    [
        ([], "no messages"),
        ([U("q")], "must end with a non-empty assistant answer"),
        ([U("q"), A("   ")], "must end with a non-empty assistant answer"),
        ([A("a"), U("q")], "alternating"),
        ([U("q"), Message("system", "s"), A("a")], "alternating"),
        ([U("q"), A(""), U("q"), A("a")], "empty assistant answer in message 1"),
        ([Message("text", "t"), U("q")], "cannot mix"),
        ([U(f"q {DEEPSEEK_EOS}"), A("a")], "special token string"),
    ],
)
def test_template_errors(sp_tok, msgs, match):
    with pytest.raises(TemplateError, match=match) as e:
        render(msgs, sp_tok, num_image_tokens=N_IMG)
    # skipped and counted
    assert isinstance(e.value, BadRecord) and e.value.reason == "bad_conversation"


def test_image_count_must_match(sp_tok):
    ex = Example("bad", "chart", (U(f"{IMAGE_TAG}q"), A("a")), images=())
    with pytest.raises(
        TemplateError, match="record bad: image_count_mismatch: 1 <image_placeholder> tags but 0"
    ):
        render(ex, sp_tok, num_image_tokens=N_IMG)
    with pytest.raises(TemplateError, match="generation prompt needs a conversation"):
        render_generation_prompt([Message("text", "t")], sp_tok, num_image_tokens=N_IMG)


def test_deepseek_stand_in_has_the_real_layout(tmp_path):
    """The rehearsal tokenizer, built offline: DeepSeek's vocabulary size and special ids, a real BPE."""
    from dsvl_jax.data.tokenizer import deepseek_stand_in, model_mismatch

    ex = [Example(f"t{i}", "text", (Message("text", s),)) for i, s in enumerate(_sentences(3, 40))]
    tok = deepseek_stand_in(ex, tmp_path / "tok", learned=400)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.image_token_id) == (
        100016,
        100000,
        100001,
        100015,
    )
    text = "Which fruit has the largest value?"
    assert tok.decode(tok.encode(text)) == text and max(tok.encode(text)) < 400
    assert tok.encode(IMAGE_TAG) == [100015]
    assert not model_mismatch(tok, 100015, 102400) and model_mismatch(tok, 100015, 100000)
    assert load_tokenizer(tmp_path / "tok").vocab_size == 100016
