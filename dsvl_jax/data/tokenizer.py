"""Tokenizers: one small interface over SentencePiece models (ours) and HF `tokenizer.json` (DeepSeek's).

`encode(text)` returns ids without BOS (the template adds BOS/EOS itself) and, like HF tokenizers,
maps the BOS/EOS/image strings found in the text to their single ids. `decode` is its inverse.

Special ids of the SentencePiece models that `train_sentencepiece` makes (fixed, so configs can
name them): pad 0 `<pad>`, unk 1 `<unk>`, BOS 2 and EOS 3 (DeepSeek's strings
`<｜begin▁of▁sentence｜>` / `<｜end▁of▁sentence｜>`, so the chat template text is the same for both
tokenizers), image 4 `<image_placeholder>`, then 256 byte pieces `<0x00>`..`<0xFF>` (ids 5..260),
then the learned pieces.

DeepSeek's own tokenizer (`HFTokenizer`): BOS 100000, EOS 100001, image 100015, no pad token (pad
falls back to EOS, as in DeepSeek's `VLChatProcessor`); 100016 entries for a 102400-row embedding.
`vocab_size` is always the tokenizer's size, never the embedding's.
"""

from __future__ import annotations

import abc
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from dsvl_jax.data.records import IMAGE_TAG

DEEPSEEK_BOS = "<｜begin▁of▁sentence｜>"  # full-width bars U+FF5C, U+2581 between words
DEEPSEEK_EOS = "<｜end▁of▁sentence｜>"
PAD_PIECE, UNK_PIECE = "<pad>", "<unk>"
SP_PAD_ID, SP_UNK_ID, SP_BOS_ID, SP_EOS_ID, SP_IMAGE_ID = 0, 1, 2, 3, 4


class TokenizerError(ValueError):
    """A tokenizer file that cannot serve the trainer (missing special token, unsupported options)."""


class Tokenizer(abc.ABC):
    """What the template and the trainer need from a tokenizer.

    Attributes: bos_id, eos_id, pad_id, image_token_id (ints), bos_text, eos_text (the strings the
    template writes for BOS/EOS), image_text (the tokenizer's string for the image token), source
    (file it came from, for error messages).
    """

    bos_id: int
    eos_id: int
    pad_id: int
    image_token_id: int
    bos_text: str
    eos_text: str
    image_text: str
    source: str

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (the embedding may have more rows)."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """text -> ids, no BOS/EOS added; BOS/EOS/image strings in the text become their ids."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """ids -> text; special ids are written as their strings unless skip_special."""

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset((self.bos_id, self.eos_id, self.pad_id, self.image_token_id))

    def _check(self) -> None:
        """Each special string must encode to exactly its one id (the template relies on it)."""
        for role, text, tid in (
            ("BOS", self.bos_text, self.bos_id),
            ("EOS", self.eos_text, self.eos_id),
            ("image", self.image_text, self.image_token_id),
        ):
            got = self.encode(text)
            if got != [tid]:
                raise TokenizerError(
                    f"{self.source}: the {role} token {text!r} encodes to {got}, "
                    f"expected the single id [{tid}]"
                )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.source!r}, vocab_size={self.vocab_size}, bos={self.bos_id}, "
            f"eos={self.eos_id}, pad={self.pad_id}, image={self.image_token_id})"
        )


# --- SentencePiece -------------------------------------------------------------------------------


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece `.model` (a path or the serialized bytes).

    Needs BOS and EOS control pieces and an `<image_placeholder>` user-defined piece, and no dummy
    prefix (`add_dummy_prefix=False`): the template encodes a conversation segment by segment, and
    a dummy prefix would insert a space at the start of every segment. A pad piece is optional (pad
    falls back to EOS). Caveat of SentencePiece: a literal U+2581 in text decodes as a space.
    """

    def __init__(self, model: str | os.PathLike | bytes):
        import sentencepiece as spm

        serialized = isinstance(model, (bytes, bytearray))
        self.source = "<serialized SentencePiece model>" if serialized else str(model)
        if not serialized and not Path(model).is_file():
            raise FileNotFoundError(f"SentencePiece model {model} not found")
        try:
            self._sp = (
                spm.SentencePieceProcessor(model_proto=bytes(model))
                if serialized
                else spm.SentencePieceProcessor(model_file=str(model))
            )
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{self.source}: not a SentencePiece model ({e})") from None
        sp = self._sp
        for role, tid in (("BOS", sp.bos_id()), ("EOS", sp.eos_id())):
            if tid < 0:
                raise TokenizerError(
                    f"{self.source}: SentencePiece model has no {role} piece (train with "
                    f"{role.lower()}_id >= 0)"
                )
        self.bos_id, self.eos_id = sp.bos_id(), sp.eos_id()
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else self.eos_id
        self.image_text = IMAGE_TAG
        self.image_token_id = sp.piece_to_id(IMAGE_TAG)
        if self.image_token_id == sp.unk_id() or sp.is_control(self.image_token_id):
            raise TokenizerError(
                f"{self.source}: SentencePiece model has no {IMAGE_TAG!r} piece "
                "(train it as a user_defined_symbol)"
            )
        self.bos_text, self.eos_text = sp.id_to_piece(self.bos_id), sp.id_to_piece(self.eos_id)
        # Control pieces are never matched in text by SentencePiece itself: split them out here.
        self._special_re = re.compile(
            "|".join(map(re.escape, sorted({self.bos_text, self.eos_text}, key=len, reverse=True)))
        )
        self._special_text = {self.bos_id: self.bos_text, self.eos_id: self.eos_text}
        if sp.pad_id() >= 0:
            self._special_text[sp.pad_id()] = sp.id_to_piece(sp.pad_id())
        if "".join(sp.encode("a", out_type=str)).startswith("\u2581"):
            raise TokenizerError(
                f"{self.source}: SentencePiece model adds a dummy prefix ('a' -> "
                f"{sp.encode('a', out_type=str)}); retrain with add_dummy_prefix=False"
            )
        self._check()

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                ids += self._sp.encode(text[pos : m.start()])
            ids.append(self.bos_id if m.group() == self.bos_text else self.eos_id)
            pos = m.end()
        if pos < len(text):
            ids += self._sp.encode(text[pos:])
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        out, run = [], []
        for i in map(int, ids):
            if i in self._special_text or (skip_special and i == self.image_token_id):
                if run:
                    out.append(self._sp.decode(run))
                    run = []
                if not skip_special:
                    out.append(self._special_text[i])
            else:
                run.append(i)
        if run:
            out.append(self._sp.decode(run))
        return "".join(out)

    def serialized(self) -> bytes:
        return self._sp.serialized_model_proto()


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    *,
    out: str | os.PathLike | None = None,
    **trainer_options,
) -> bytes:
    """Train a SentencePiece BPE model in memory; returns the serialized model (also written to `out`).

    Special ids are fixed (module docstring): pad 0, unk 1, BOS 2, EOS 3, image 4, bytes 5..260.
    Options: byte fallback (no unknown characters), identity normalization with whitespace and
    newlines kept (decode(encode(x)) == x), no dummy prefix, digits split. `hard_vocab_limit=False`
    by default so small corpora train (the vocab may then come out smaller than asked): pass
    `hard_vocab_limit=True` for production tokenizers. Extra `user_defined_symbols` get ids from 5
    on (the byte pieces shift up). Other keyword arguments go to `SentencePieceTrainer.train`
    (e.g. `model_type="unigram"`, `input_sentence_size`). Lines longer
    than `max_sentence_length` (default 4192 bytes) are skipped by the trainer.
    """
    import sentencepiece as spm

    if vocab_size < 256 + 5 + 1:
        raise ValueError(
            f"vocab_size={vocab_size}: byte fallback needs more than 261 (5 specials + 256 bytes)"
        )
    options = dict(
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        minloglevel=2,
        pad_id=SP_PAD_ID,
        unk_id=SP_UNK_ID,
        bos_id=SP_BOS_ID,
        eos_id=SP_EOS_ID,
        pad_piece=PAD_PIECE,
        unk_piece=UNK_PIECE,
        bos_piece=DEEPSEEK_BOS,
        eos_piece=DEEPSEEK_EOS,
        user_defined_symbols=[IMAGE_TAG],
    )
    fixed = {"pad_id", "unk_id", "bos_id", "eos_id"}
    if fixed & trainer_options.keys():
        raise ValueError(
            f"train_sentencepiece: {sorted(fixed & trainer_options.keys())} are fixed "
            "(special ids are part of the model contract)"
        )
    # more atomic pieces, after the image
    extra = list(trainer_options.pop("user_defined_symbols", ()))
    options.update(
        trainer_options, user_defined_symbols=[IMAGE_TAG] + [s for s in extra if s != IMAGE_TAG]
    )
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buf, **options)
    model = buf.getvalue()
    if (got := SentencePieceTokenizer(model).image_token_id) != SP_IMAGE_ID:  # the contract above
        raise ValueError(f"train_sentencepiece: image token got id {got}, expected {SP_IMAGE_ID}")
    if out is not None:
        Path(out).write_bytes(model)
    return model


def train_on_examples(
    examples: Iterable, vocab_size: int, *, out: str | os.PathLike | None = None
) -> bytes:
    """A SentencePiece model for a corpus of records.Example: trained on their message texts (image tags out)."""

    return train_sentencepiece(_example_lines(examples), vocab_size, out=out)


def _example_lines(examples: Iterable) -> Iterable[str]:
    for ex in examples:
        for m in ex.messages:
            for line in m.content.replace(IMAGE_TAG, " ").split("\n"):
                if line.strip():
                    yield line


# DeepSeek's tokenizer layout: 100000 base entries, then specials; the ones the model relies on
DEEPSEEK_BASE, DEEPSEEK_SPECIALS = (
    100000,
    {100000: DEEPSEEK_BOS, 100001: DEEPSEEK_EOS, 100015: IMAGE_TAG},
)


def deepseek_stand_in(
    examples: Iterable, out_dir: str | os.PathLike, learned: int = 2000
) -> HFTokenizer:
    """A byte-level BPE `tokenizer.json` with DeepSeek's layout, built offline for rehearsals: `learned`
    pieces trained on the examples' text, reserved (never produced) entries up to 100000, then 16
    specials with BOS 100000, EOS 100001 and the image token 100015 at DeepSeek's ids, so vocabulary
    size, special ids and the embedding/head shapes (102400 rows) are the real model's."""
    from tokenizers import Tokenizer as _HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = _HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        _example_lines(examples),
        trainers.BpeTrainer(
            vocab_size=learned,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    vocab.update({f"<|reserved_{i}|>": i for i in range(len(vocab), DEEPSEEK_BASE)})
    spec["added_tokens"] = [
        dict(
            id=i,
            content=DEEPSEEK_SPECIALS.get(i, f"<|special_{i}|>"),
            single_word=False,
            lstrip=False,
            rstrip=False,
            normalized=False,
            special=True,
        )
        for i in range(DEEPSEEK_BASE, DEEPSEEK_BASE + 16)
    ]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _HFTok.from_str(json.dumps(spec)).save(str(out / "tokenizer.json"))
    conf = {"bos_token": DEEPSEEK_BOS, "eos_token": DEEPSEEK_EOS, "image_token": IMAGE_TAG}
    (out / "tokenizer_config.json").write_text(json.dumps(conf, ensure_ascii=False, indent=1))
    return HFTokenizer(out)


# --- HuggingFace tokenizer.json --------------------------------------------------------------------


def _token_str(value) -> str | None:
    """tokenizer_config values are either strings or AddedToken dicts {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class HFTokenizer(Tokenizer):
    """A HuggingFace `tokenizer.json` (file or its folder), read with the `tokenizers` library.

    Special strings come from tokenizer_config.json / special_tokens_map.json next to it when
    present (`bos_token`, `eos_token`, `pad_token`, `image_token`, also under
    `extra_special_tokens`), else DeepSeek's defaults; keyword arguments override both. Pad falls
    back to EOS when the files name no pad token (DeepSeek's case).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        bos: str | None = None,
        eos: str | None = None,
        image: str | None = None,
        pad: str | None = None,
    ):
        from tokenizers import Tokenizer as _HFTok

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        self.source = str(file)
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer file {file} not found")
        try:
            self._tok = _HFTok.from_file(str(file))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on a malformed file
            raise TokenizerError(f"{file}: not a HuggingFace tokenizer.json ({e})") from None
        conf: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the later file wins
            f = file.parent / name
            if f.is_file():
                try:
                    d = json.loads(f.read_text(encoding="utf-8"))
                except json.JSONDecodeError as e:
                    raise TokenizerError(f"{f}: invalid JSON ({e})") from None
                # transformers 5 puts image_token here
                if isinstance(d.get("extra_special_tokens"), dict):
                    conf.update(d["extra_special_tokens"])
                conf.update(d)

        def pick(arg, key, default):
            return arg or _token_str(conf.get(key)) or default

        self.bos_text = pick(bos, "bos_token", DEEPSEEK_BOS)
        self.eos_text = pick(eos, "eos_token", DEEPSEEK_EOS)
        self.image_text = pick(image, "image_token", IMAGE_TAG)
        self.bos_id = self._require(self.bos_text, "BOS", "bos_token")
        self.eos_id = self._require(self.eos_text, "EOS", "eos_token")
        self.image_token_id = self._require(self.image_text, "image", "image_token")
        pad_text = pick(pad, "pad_token", None)
        self.pad_id = self._require(pad_text, "pad", "pad_token") if pad_text else self.eos_id
        self._check()

    def _require(self, text: str, role: str, key: str) -> int:
        tid = self._tok.token_to_id(text)
        if tid is None:
            raise TokenizerError(
                f"{self.source}: the {role} token {text!r} is not in the vocabulary "
                f"(set {key} in tokenizer_config.json or pass it explicitly)"
            )
        return tid

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special:  # the image token need not be flagged special in the file
            ids = [i for i in ids if i not in self.special_ids]
        return self._tok.decode(ids, skip_special_tokens=skip_special)


# tokenizer files that travel with tokenizer.json
HF_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def with_image_token(
    source: str | os.PathLike, out_dir: str | os.PathLike
) -> tuple[HFTokenizer, bool]:
    """An LLM's HF tokenizer (tokenizer.json or its folder) copied to `out_dir`, with the image token
    (`<image_placeholder>`) added as a special token when it has none: it takes the next free id,
    the tokenizer's length. -> (the tokenizer at out_dir, whether the token was added)."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as _HFTok

    src = Path(source)
    file = src / "tokenizer.json" if src.is_dir() else src
    if not file.is_file():
        raise FileNotFoundError(f"{src}: no tokenizer.json (the LLM's HF tokenizer is needed)")
    tok = _HFTok.from_file(str(file))
    added = tok.token_to_id(IMAGE_TAG) is None
    if added:
        tok.add_special_tokens([AddedToken(IMAGE_TAG, special=True, normalized=False)])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    new_id = tok.token_to_id(IMAGE_TAG)
    for name in HF_SIDE_FILES:
        f = file.parent / name
        if not f.is_file():
            continue
        conf = json.loads(f.read_text(encoding="utf-8"))
        if added and name == "tokenizer_config.json":
            extra = conf.get("extra_special_tokens")
            conf["extra_special_tokens"] = {
                **(extra if isinstance(extra, dict) else {}),
                "image_token": IMAGE_TAG,
            }
            if isinstance(conf.get("added_tokens_decoder"), dict):
                conf["added_tokens_decoder"][str(new_id)] = dict(
                    content=IMAGE_TAG,
                    lstrip=False,
                    normalized=False,
                    rstrip=False,
                    single_word=False,
                    special=True,
                )
        if added and name == "special_tokens_map.json":
            more = conf.get("additional_special_tokens") or []
            conf["additional_special_tokens"] = [*more, IMAGE_TAG]
        (out / name).write_text(json.dumps(conf, indent=2, ensure_ascii=False), encoding="utf-8")
    return HFTokenizer(out), added


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """`*.model` -> SentencePieceTokenizer; `*.json` or a folder holding tokenizer.json -> HFTokenizer.

    A folder with no tokenizer.json but exactly one `*.model` file loads that model.
    """
    p = Path(path)
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return HFTokenizer(p)
        models = sorted(p.glob("*.model"))
        if len(models) == 1:
            return SentencePieceTokenizer(models[0])
        raise FileNotFoundError(
            f"tokenizer folder {p} has no tokenizer.json and "
            f"{'several' if models else 'no'} *.model files"
        )
    if p.suffix == ".model":
        return SentencePieceTokenizer(p)
    if p.suffix == ".json":
        return HFTokenizer(p)
    if not p.exists():
        raise FileNotFoundError(
            f"tokenizer {p} not found (expected a .model file, a tokenizer.json or its folder)"
        )
    raise TokenizerError(
        f"tokenizer {p}: unknown kind (expected a .model file, a tokenizer.json or its folder)"
    )


# looked up in a checkpoint dir, in this order
TOKENIZER_CANDIDATES = ("tokenizer.json", "tokenizer.model", "tokenizer")


def find_tokenizer(checkpoint: str | os.PathLike) -> str | None:
    """The tokenizer stored with a checkpoint: tokenizer.json, tokenizer.model, a tokenizer/ folder,
    or the only *.model file; None when there is none."""
    d = Path(checkpoint)
    for name in TOKENIZER_CANDIDATES:
        p = d / name
        if p.is_file() or (
            p.is_dir() and ((p / "tokenizer.json").is_file() or list(p.glob("*.model")))
        ):
            return str(p)
    models = sorted(d.glob("*.model"))
    return str(models[0]) if len(models) == 1 else None


def model_mismatch(tok: Tokenizer, image_token_id: int, vocab_rows: int) -> str:
    """Why `tok` cannot feed a model with this image token id and embedding size ("" if it can)."""
    if tok.image_token_id != image_token_id:
        return (
            f"tokenizer {tok.source}: image token id {tok.image_token_id} != model.image_token_id "
            f"{image_token_id}"
        )
    if tok.vocab_size > vocab_rows:
        return f"tokenizer {tok.source}: vocab size {tok.vocab_size} > model.llm.vocab_size {vocab_rows}"
    return ""
