"""Tokenizer + processor files of an HF export, so `AutoProcessor.from_pretrained(DIR)` works without dsvl_jax.

Files written next to config.json / safetensors (transformers 5.x names; 4.5x reads them too):
  tokenizer.json           fast tokenizer: converted from our SentencePiece `.model`, or copied from an HF folder
  tokenizer_config.json    class PreTrainedTokenizerFast (tokenizer.json used as is), BOS added, special
                           strings, image token under extra_special_tokens (HF's DeepseekVLProcessor reads
                           `tokenizer.image_token`), left padding (batched generation)
  special_tokens_map.json  bos/eos/pad/unk + the image token as additional special token
  preprocessor_config.json DeepseekVL(Hybrid)ImageProcessor with the sizes, means/stds, resample filters
                           and background of `data.preprocess.image_spec(cfg)` (normalisation in the processor)
  processor_config.json    DeepseekVL(Hybrid)Processor with num_image_tokens = cfg.num_image_tokens
  chat_template.jinja      our "deepseek" template (data/template.py); read by processor and tokenizer
  generation_config.json   bos/eos/pad ids, so HF `generate` stops at our EOS

SentencePiece -> tokenizer.json (`sentencepiece_tokenizer_json`): the BPE model's pieces become the
vocabulary with their ids, merges are every (left, right) split of a piece into two pieces, ranked by the
merged piece's score (SentencePiece BPE merges the best-scoring pair first), Metaspace pre-tokenizer
(' ' -> U+2581, split before each U+2581, no prefix: our models have add_dummy_prefix=False), byte
fallback, control pieces and user-defined pieces (the image tag) as added special tokens. Only the
options our trainer (`data.tokenizer.train_sentencepiece`) can produce are accepted; anything else
is refused with the option named. Known differences, both outside what the template produces:
the strings "<pad>" and "<unk>" typed in text become their single ids in HF (added tokens, as in every
HF conversion of a SentencePiece model), while SentencePiece spells them out; and when two different
pairs merge into the same piece at two places of one word, SentencePiece takes the leftmost while HF
follows the merge order. tests/parity/test_export_processor.py checks real prompts end to end.

Images: transformers picks the torchvision backend of the image processor when torchvision is
installed; its resize differs from PIL's by small amounts. dsvl_jax's preprocessing equals the PIL
backend exactly: `AutoProcessor.from_pretrained(DIR, backend="pil")` reproduces it bit for bit.

An HF source (tokenizer.json or its folder) is copied; its tokenizer_config.json is kept except for
the fields above, and `tokenizer_class` becomes PreTrainedTokenizerFast: a class such as
LlamaTokenizerFast makes transformers 5 rebuild the pre-tokenizer from its own defaults, while
dsvl_jax (`HFTokenizer`) reads tokenizer.json as is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dsvl_jax import compat, jsonfile
from dsvl_jax.data.preprocess import image_spec
from dsvl_jax.data.template import DEFAULT_SYSTEM_PROMPT
from dsvl_jax.data.tokenizer import (
    UNK_PIECE,
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
)
from dsvl_jax.model.config import ModelConfig

# PIL.Image.Resampling values
_PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}
# SentencePiece ModelProto.SentencePiece.Type
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
_WS = "\u2581"


class ExportError(ValueError):
    """The tokenizer cannot serve the exported model (ids out of range, wrong image token, options)."""


# --- SentencePiece BPE -> tokenizer.json -----------------------------------------------------------


def _proto(model: bytes):
    pb = compat.sentencepiece_model_pb2()
    p = pb.ModelProto()
    p.ParseFromString(model)
    return p


def _need(cond: bool, source: str, what: str) -> None:
    if not cond:
        raise ExportError(
            f"{source}: {what} (tokenizer.json conversion supports the SentencePiece models that "
            "dsvl_jax.data.tokenizer.train_sentencepiece makes)"
        )


def sentencepiece_tokenizer_json(model: bytes, source: str = "<SentencePiece model>") -> str:
    """Serialized SentencePiece BPE model -> tokenizer.json text that encodes/decodes identically."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTok

    p = _proto(model)
    t, n = p.trainer_spec, p.normalizer_spec
    _need(t.model_type == t.BPE, source, f"model_type {t.ModelType.Name(t.model_type)} is not BPE")
    _need(
        n.name == "identity" and not n.precompiled_charsmap,
        source,
        f"normalization {n.name!r} (only 'identity' has an exact tokenizers equivalent)",
    )
    _need(not n.add_dummy_prefix, source, "add_dummy_prefix=True")
    _need(not n.remove_extra_whitespaces, source, "remove_extra_whitespaces=True")
    _need(n.escape_whitespaces, source, "escape_whitespaces=False")
    _need(
        t.split_by_whitespace and not t.treat_whitespace_as_suffix,
        source,
        "whitespace must start pieces (split_by_whitespace=True, treat_whitespace_as_suffix=False)",
    )
    _need(t.byte_fallback, source, "byte_fallback=False")
    pieces = list(p.pieces)
    vocab = {x.piece: i for i, x in enumerate(pieces)}
    _need(len(vocab) == len(pieces), source, "duplicate pieces")
    # Merge rank = order of the merged piece by score (ties: id order), as SentencePiece picks the pair
    # whose merged piece scores best.
    mergeable = {x.piece for x in pieces if x.type == _NORMAL}
    order = sorted(
        (i for i, x in enumerate(pieces) if x.type == _NORMAL), key=lambda i: (-pieces[i].score, i)
    )
    merges = []
    for i in order:
        s = pieces[i].piece
        splits = [
            (s[:k], s[k:]) for k in range(1, len(s)) if s[:k] in mergeable and s[k:] in mergeable
        ]
        merges += sorted(splits, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
    unk = pieces[t.unk_id].piece if 0 <= t.unk_id < len(pieces) else UNK_PIECE
    tok = HFTok(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=_WS, prepend_scheme="never", split=True
    )
    # Pieces hold U+2581 only at their start (split_by_whitespace); anchoring the replacement there keeps
    # added tokens such as '<｜end▁of▁sentence｜>' verbatim, as SentencePiece decodes them.
    tok.decoder = decoders.Sequence(
        [decoders.Replace(Regex("^" + _WS), " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens(
        [
            AddedToken(x.piece, special=True, normalized=False)
            for x in pieces
            if x.type in (_CONTROL, _UNKNOWN, _USER_DEFINED)
        ]
    )
    _need(t.bos_id >= 0, source, "no BOS piece")
    tok.post_processor = _bos_post_processor(pieces[t.bos_id].piece, t.bos_id)
    return tok.to_str(pretty=True)


def _bos_post_processor(bos: str, bos_id: int):
    """BOS + text, no EOS: what the template's ids start with. transformers 5 takes this from tokenizer.json
    and ignores tokenizer_config's add_bos_token when a tokenizer.json exists."""
    from tokenizers import processors

    return processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )


# --- files ---------------------------------------------------------------------------------------


def chat_template(
    default_system: str = DEFAULT_SYSTEM_PROMPT,
    eos: str = "<｜end▁of▁sentence｜>",
    image: str = "<image_placeholder>",
) -> str:
    """Jinja form of data/template.py's generation/format strings (no BOS: the tokenizer adds it).

    Same rendering as HF's DeepSeek-VL template (docs/recipe.md#chat-format) for user/assistant lists of parts
    ({"type": "image"} -> the image tag, {"type": "text"} parts stripped at the message ends and
    joined with a space); besides, message content may be a plain string, and a leading "system"
    message replaces the default system prompt (empty: no system block), as in dsvl_jax.
    """
    q = json.dumps
    return (
        "{%- set ns = namespace(system=" + q(default_system) + ", start=0) -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set c = messages[0]['content'] -%}"
        "{%- if c is string -%}{%- set ns.system = c -%}{%- else -%}{%- set ns.system = c | selectattr('type', "
        "'equalto', 'text') | map(attribute='text') | join(' ') -%}{%- endif -%}"
        "{%- set ns.start = 1 -%}{%- endif -%}"
        "{%- if ns.system | trim -%}{{- ns.system | trim + '\\n\\n' -}}{%- endif -%}"
        "{%- for m in messages[ns.start:] -%}"
        "{%- set c = m['content'] -%}"
        "{%- if c is string -%}{%- set text = c | trim -%}{%- else -%}"
        "{%- set ns.text = '' -%}"
        "{%- for p in c -%}"
        "{%- if p['type'] == 'image' -%}{%- set ns.text = ns.text + " + q(image) + " -%}"
        "{%- elif p['type'] == 'text' -%}"
        "{%- if not loop.first and c[loop.index0 - 1]['type'] == 'text' -%}{%- set ns.text = ns.text + ' ' -%}"
        "{%- endif -%}{%- set ns.text = ns.text + p['text'] -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- set text = ns.text | trim -%}{%- endif -%}"
        "{%- if m['role'] == 'user' -%}"
        "{{- 'User: ' + text -}}{%- if not loop.last or add_generation_prompt -%}{{- '\\n\\n' -}}{%- endif -%}"
        "{%- elif m['role'] == 'assistant' -%}"
        "{%- if text -%}{{- 'Assistant: ' + text + "
        + q(eos)
        + " -}}{%- elif loop.last -%}{{- 'Assistant:' -}}"
        "{%- endif -%}"
        "{%- else -%}{{- raise_exception('roles must be [system] then user/assistant, got ' + m['role']) -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
    )


def image_processor_config(cfg: ModelConfig) -> dict[str, Any]:
    """preprocessor_config.json: HF's image processor set up as `data.preprocess.image_spec(cfg)`."""
    s = image_spec(cfg)
    low = {"height": s.low_size, "width": s.low_size}
    out: dict[str, Any] = {
        "image_processor_type": "DeepseekVLHybridImageProcessor"
        if s.hybrid
        else "DeepseekVLImageProcessor",
        "processor_class": "DeepseekVLHybridProcessor" if s.hybrid else "DeepseekVLProcessor",
        "do_resize": True,
        "do_pad": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "min_size": s.min_size,
        "size": low,
        "resample": _PIL_RESAMPLE[s.low_resample],
        "image_mean": list(s.low_mean),
        "image_std": list(s.low_std),
    }
    if s.hybrid:
        out.update(
            high_res_size={"height": s.high_size, "width": s.high_size},
            high_res_resample=_PIL_RESAMPLE[s.high_resample],
            high_res_image_mean=list(s.high_mean),
            high_res_image_std=list(s.high_std),
        )
    return out


def processor_config(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "processor_class": "DeepseekVLHybridProcessor" if cfg.hybrid else "DeepseekVLProcessor",
        "num_image_tokens": cfg.num_image_tokens,
    }


def generation_config(tok: Tokenizer) -> dict[str, Any]:
    return {
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "pad_token_id": tok.pad_id,
        "do_sample": False,
    }


def token_ids(tok: Tokenizer) -> dict[str, int]:
    """The ids config.json's text_config records."""
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}


def _check(cfg: ModelConfig, tok: Tokenizer) -> None:
    if tok.vocab_size > cfg.llm.vocab_size:
        raise ExportError(
            f"tokenizer {tok.source} has {tok.vocab_size} ids but the model's embedding has "
            f"model.llm.vocab_size={cfg.llm.vocab_size} rows"
        )
    if tok.image_token_id != cfg.image_token_id:
        raise ExportError(
            f"tokenizer {tok.source}: image token {tok.image_text!r} has id {tok.image_token_id}, "
            f"but the model expects model.image_token_id={cfg.image_token_id}"
        )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    return jsonfile.read(path, TokenizerError, dict)


def _tokenizer_files(tok: Tokenizer) -> tuple[str, dict, dict[str, str]]:
    """-> (tokenizer.json text, tokenizer_config of the source, its special strings bos/eos/pad/unk)."""
    from tokenizers import Tokenizer as HFTok

    if isinstance(tok, SentencePieceTokenizer):
        text = sentencepiece_tokenizer_json(tok.serialized(), tok.source)
        base: dict = {}
    else:
        assert isinstance(tok, HFTokenizer)
        file = Path(tok.source)
        base = {
            **_read_json(file.parent / "special_tokens_map.json"),
            **_read_json(file.parent / "tokenizer_config.json"),
        }
        raw = HFTok.from_file(str(file))
        # the processor must add BOS, as we do
        raw.post_processor = _bos_post_processor(tok.bos_text, tok.bos_id)
        text = raw.to_str(pretty=True)
    raw = HFTok.from_str(text)
    special = {
        "bos_token": tok.bos_text,
        "eos_token": tok.eos_text,
        "pad_token": raw.id_to_token(tok.pad_id),
    }
    unk = raw.model.unk_token if hasattr(raw.model, "unk_token") else None
    if unk and raw.token_to_id(unk) is not None:
        special["unk_token"] = unk
    return text, base, special


def write_tokenizer(
    folder: str | os.PathLike,
    source: str | os.PathLike,
    cfg: ModelConfig | None = None,
    *,
    model_max_length: int | None = None,
    system: str = DEFAULT_SYSTEM_PROMPT,
) -> tuple[Tokenizer, list[str]]:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json + chat_template.jinja into `folder`.

    `source`: a SentencePiece `.model`, a tokenizer.json or its folder (anything `load_tokenizer` reads).
    With `cfg`, the tokenizer must fit the model (vocab size, image token id). Returns (tokenizer, files).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(source)
    if cfg is not None:
        _check(cfg, tok)
    text, base, special = _tokenizer_files(tok)
    (folder / "tokenizer.json").write_text(text, encoding="utf-8")
    drop = {
        "tokenizer_class",
        "chat_template",
        "added_tokens_decoder",
        "auto_map",
        "tokenizer_file",
        "additional_special_tokens",
        "extra_special_tokens",
        "name_or_path",
        "processor_class",
    }
    extra = (
        base.get("extra_special_tokens")
        if isinstance(base.get("extra_special_tokens"), dict)
        else {}
    )
    config = {k: v for k, v in base.items() if k not in drop}
    config.update(
        special,
        tokenizer_class="PreTrainedTokenizerFast",
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        padding_side="left",
        extra_special_tokens={**extra, "image_token": tok.image_text},
    )
    if model_max_length:
        config["model_max_length"] = model_max_length
    (folder / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    stm = {**special, "additional_special_tokens": [tok.image_text]}
    (folder / "special_tokens_map.json").write_text(
        json.dumps(stm, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    (folder / "chat_template.jinja").write_text(
        chat_template(system, eos=tok.eos_text, image=tok.image_text), encoding="utf-8"
    )
    return tok, [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
    ]


def save_processor(
    folder: str | os.PathLike,
    cfg: ModelConfig,
    tokenizer: str | os.PathLike,
    system: str = DEFAULT_SYSTEM_PROMPT,
) -> tuple[Tokenizer, list[str]]:
    """All tokenizer + processor + generation files of an export. Returns (tokenizer, file names).
    `system`: the chat template's default system prompt (the one the model was trained with)."""
    folder = Path(folder)
    tok, files = write_tokenizer(
        folder, tokenizer, cfg, model_max_length=cfg.llm.max_position, system=system
    )
    for name, data in (
        ("preprocessor_config.json", image_processor_config(cfg)),
        ("processor_config.json", processor_config(cfg)),
        ("generation_config.json", generation_config(tok)),
    ):
        (folder / name).write_text(json.dumps(data, indent=2), encoding="utf-8")
        files.append(name)
    return tok, files


__all__ = [
    "ExportError",
    "chat_template",
    "generation_config",
    "image_processor_config",
    "processor_config",
    "save_processor",
    "sentencepiece_tokenizer_json",
    "token_ids",
    "write_tokenizer",
]
