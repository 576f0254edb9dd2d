"""Inference engine: a params checkpoint + its tokenizer -> chat answers, batched, optionally sharded.

    engine = Engine.load("runs/x")                              # any model folder + its tokenizer
    engine.chat(["What is the value for 2017?"], [[png_bytes]])  # -> ["94"]

A conversation is a question string or a list of messages (`records.Message` or {"role", "content"}
dicts: optional "system", then user/assistant turns ending with a user turn). It is rendered with the
template's generation prompt (BOS ... "User: q\\n\\nAssistant:"), and the answer is the decoded
continuation up to EOS, stripped. Images (PIL images, encoded bytes or file paths) are preprocessed
exactly as in training (`data.preprocess`) and fill the conversation's `IMAGE_TAG`s in order; a
conversation with images but no tag gets them in front of its last user message (IMAGE_TAG + "\\n"
+ question, the layout of the chart QA corpus).

Sampling: greedy (temperature 0) or temperature + top-k + top-p, with an optional repetition penalty
(model/decode.py; every setting is a traced value, so none recompiles). `stop` strings end an answer
before them (found on the host in the decoded text). Streaming: `chat(..., stream=fn)` calls
fn(index, piece) and `chat_stream` yields (index, piece) as tokens are generated; decoding then runs
`chunk_tokens` tokens per device call with the next call queued before the host detokenises
(`decode.generate_chunks`), and the pieces concatenate to the non-streamed answer (`AnswerText`).

Shapes are bucketed so a session compiles a handful of programs: prompt lengths round up to a
multiple of `length_bucket`, the batch to `batch_size` rows (default: the next power of two of the
request, times the data-parallel mesh size), images per row to the most any row of the request has.
With `mesh_shape` the parameters are placed with the training sharding rules (parallel/rules.py), so
a model too large for one device decodes over a (data, fsdp, tensor) mesh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from PIL import Image

from dsvl_jax.checkpoints import open_model
from dsvl_jax.data.preprocess import image_spec, normalize_batch, preprocess
from dsvl_jax.data.records import IMAGE_TAG, Message, decode_image
from dsvl_jax.data.template import SYSTEM_DEFAULT, render_generation_prompt, system_prompt
from dsvl_jax.data.tokenizer import Tokenizer, load_tokenizer, model_mismatch
from dsvl_jax.errors import Error
from dsvl_jax.model import decode
from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.params import Params, abstract_params, logical_axes
from dsvl_jax.parallel import MESH_AXES, build_mesh, logical_to_shardings, rules_from_config

Conversation = str | Sequence[Message | Mapping[str, str]]
ImageLike = Any  # PIL.Image.Image | bytes | str | os.PathLike


class InferenceError(Error, ValueError):
    """A request the engine cannot serve (image count, prompt length, missing tokenizer...)."""


def load_image(img: ImageLike, where: str = ""):
    """PIL image, encoded bytes or a file path -> RGB PIL image (BadRecord/FileNotFoundError on failure)."""
    if isinstance(img, Image.Image):
        return img.convert("RGB") if img.mode != "RGB" else img
    if isinstance(img, (str, os.PathLike)):
        p = Path(img)
        if not p.is_file():
            raise FileNotFoundError(f"image {p} not found")
        return decode_image(p.read_bytes(), record_id=str(p))
    if isinstance(img, (bytes, bytearray, memoryview)):
        return decode_image(bytes(img), record_id=where)
    raise InferenceError(
        f"{where}: an image must be a PIL image, encoded bytes or a path, got {type(img).__name__}"
    )


def as_messages(conv: Conversation, n_images: int, where: str) -> tuple[Message, ...]:
    """A question string or message list -> Messages, with image tags added when the text has none."""
    if isinstance(conv, str):
        msgs = [Message("user", conv)]
    else:
        msgs = [
            m if isinstance(m, Message) else Message(str(m["role"]), str(m["content"]))
            for m in conv
        ]
    if not msgs or msgs[-1].role != "user":
        raise InferenceError(f"{where}: a conversation must end with a user message")
    tags = sum(m.content.count(IMAGE_TAG) for m in msgs)
    if tags == 0 and n_images:
        last = msgs[-1]
        msgs[-1] = Message("user", IMAGE_TAG * n_images + "\n" + last.content)
    elif tags != n_images:
        raise InferenceError(
            f"{where}: the messages hold {tags} {IMAGE_TAG} tag(s) but {n_images} image(s) "
            "were given"
        )
    return tuple(msgs)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclasses.dataclass
class Engine:
    """A model ready to answer: config, params (placed), tokenizer, and the shape buckets."""

    cfg: ModelConfig
    params: Params
    tokenizer: Tokenizer
    mesh: jax.sharding.Mesh | None = None
    rules: tuple = ()
    batch_size: int | None = None  # rows per compiled call; None: next power of two of the request
    length_bucket: int = decode.DEFAULT_LENGTH_BUCKET
    system_prompt: str = SYSTEM_DEFAULT  # "default": DeepSeek-VL's prompt; "" none; else the text

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        tokenizer: str | os.PathLike | Tokenizer | None = None,
        *,
        mesh_shape: Mapping[str, int] | Sequence[int] | None = None,
        rules_override: Mapping[str, Any] | None = None,
        dtype: str | None = None,
        **options,
    ) -> Engine:
        """Load any model folder (`checkpoints.open_model`: a run dir, a step checkpoint, a params
        checkpoint or an HF folder) and its tokenizer.

        tokenizer: a Tokenizer, a path (`.model`, `tokenizer.json` or its folder), or None for the
        one stored with the model. mesh_shape: {"data", "fsdp", "tensor"} sizes (one may be -1) or a
        (data, fsdp, tensor) tuple; None keeps everything on the first device. dtype overrides the
        compute dtype (e.g. "bfloat16"). Other options are Engine fields (batch_size,
        length_bucket, system_prompt); system_prompt None (or absent) = the one the model was
        trained with when its checkpoint records it, else DeepSeek-VL's.
        """
        src = open_model(path)
        if options.get("system_prompt") is None:
            recorded = src.system_prompt
            options["system_prompt"] = SYSTEM_DEFAULT if recorded is None else recorded
        if not isinstance(tokenizer, Tokenizer):
            tokenizer = tokenizer if tokenizer is not None else src.tokenizer
            if tokenizer is None:
                raise InferenceError(
                    f"{src.path}: no tokenizer (tokenizer.json, tokenizer.model or tokenizer/) "
                    "stored with the model; pass one explicitly (--tokenizer)"
                )
            tokenizer = load_tokenizer(tokenizer)
        cfg = src.cfg if dtype is None else dataclasses.replace(src.cfg, dtype=dtype)
        check_tokenizer(cfg, tokenizer)
        mesh, rules, shardings = None, (), None
        if mesh_shape is not None:
            mesh, rules, shardings = param_shardings(cfg, mesh_shape, rules_override)
        return cls(cfg, src.params(cfg, shardings), tokenizer, mesh, rules, **options)

    @property
    def data_parallel(self) -> int:
        """Rows of a batch must be a multiple of this (the act_batch mesh axes)."""
        if self.mesh is None:
            return 1
        return int(self.mesh.shape["data"] * self.mesh.shape["fsdp"])

    def _context(self):
        if self.mesh is None:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(self.rules))
        return stack

    def prompts(
        self,
        messages_batch: Sequence[Conversation],
        images_batch: Sequence[Sequence[ImageLike]] | None = None,
    ) -> list[tuple[np.ndarray, list]]:
        """-> per conversation (prompt ids [T] int32, its PIL images)."""
        if isinstance(messages_batch, str):
            raise InferenceError("messages_batch: expected a list of conversations, got one string")
        if images_batch is None:
            images_batch = [()] * len(messages_batch)
        if len(images_batch) != len(messages_batch):
            raise InferenceError(
                f"{len(messages_batch)} conversations but {len(images_batch)} image lists"
            )
        out = []
        for i, (conv, imgs) in enumerate(zip(messages_batch, images_batch)):
            imgs = [] if imgs is None else list(imgs)
            msgs = as_messages(conv, len(imgs), f"conversation {i}")
            ids = render_generation_prompt(
                msgs,
                self.tokenizer,
                self.cfg.num_image_tokens,
                default_system=system_prompt(self.system_prompt),
            ).ids
            out.append(
                (ids, [load_image(im, f"conversation {i} image {k}") for k, im in enumerate(imgs)])
            )
        return out

    def _requests(self, prompts: Sequence[tuple[np.ndarray, list]], max_new_tokens: int, **options):
        """-> per compiled call: (its first prompt's index, (ids, mask, pixels, high pixels), the
        keyword arguments of `decode.generate`). options: the sampling settings and the seed."""
        longest = max(len(p) for p, _ in prompts)
        if longest + max_new_tokens > self.cfg.llm.max_position:
            raise InferenceError(
                f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds "
                f"model.llm.max_position={self.cfg.llm.max_position}"
            )
        dp = self.data_parallel
        batch = self.batch_size or _next_pow2(len(prompts))
        batch = -(-batch // dp) * dp
        spec = image_spec(self.cfg)
        tok = self.tokenizer
        seed = options.pop("seed")
        for c, start in enumerate(range(0, len(prompts), batch)):
            chunk = prompts[start : start + batch]
            t = max(len(p) for p, _ in chunk)
            ids = np.full((len(chunk), t), tok.pad_id, np.int32)
            mask = np.zeros((len(chunk), t), np.int32)
            for r, (p, _) in enumerate(chunk):
                ids[r, t - len(p) :], mask[r, t - len(p) :] = p, 1
            slots = max(len(imgs) for _, imgs in chunk)
            pixels = high = None
            if slots:
                views = {
                    "pixels": np.zeros(
                        (len(chunk), slots, spec.low_size, spec.low_size, 3), np.uint8
                    )
                }
                if spec.hybrid:
                    views["high_pixels"] = np.zeros(
                        (len(chunk), slots, spec.high_size, spec.high_size, 3), np.uint8
                    )
                for r, (_, imgs) in enumerate(chunk):
                    for k, im in enumerate(imgs):
                        for key, v in preprocess(im, spec).items():
                            views[key][r, k] = v
                norm = normalize_batch(views, spec)
                pixels, high = norm["pixels"], norm.get("high_pixels")
            yield (
                start,
                (ids, mask, pixels, high),
                dict(
                    options,
                    max_new_tokens=max_new_tokens,
                    stop_ids=[tok.eos_id],
                    pad_id=tok.pad_id,
                    rng=jax.random.fold_in(jax.random.key(seed), c),
                    length_bucket=self.length_bucket,
                    batch_size=batch,
                    vocab_limit=tok.vocab_size,
                ),
            )

    def generate_ids(
        self,
        prompts: Sequence[tuple[np.ndarray, list]],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
    ) -> np.ndarray:
        """(prompt ids, PIL images) pairs -> new ids [N, max_new_tokens] (pad after EOS).

        Greedy when temperature == 0; top_k (0 = off) and top_p filter sampled tokens;
        repetition_penalty (1 = off) applies to both (model/decode.py).
        """
        if not prompts:
            return np.zeros((0, max_new_tokens), np.int32)
        outs = []
        for _, arrays, options in self._requests(
            prompts,
            max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            seed=seed,
        ):
            with self._context():
                outs.append(decode.generate(self.cfg, self.params, *arrays, **options))
        return np.concatenate(outs, axis=0)

    def decode_answer(self, new_ids: Sequence[int], stop: Sequence[str] = ()) -> str:
        """New ids -> text up to the first EOS, special tokens dropped, cut before the first stop
        string, stripped (`AnswerText`)."""
        return AnswerText(self.tokenizer, stop).update(new_ids, final=True)

    def chat(
        self,
        messages_batch: Sequence[Conversation],
        images_batch: Sequence[Sequence[ImageLike]] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        *,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        stop: Sequence[str] = (),
        stream: Callable[[int, str], None] | None = None,
        chunk_tokens: int = 4,
    ) -> list[str]:
        """Answer each conversation -> one answer string per conversation.

        Greedy when temperature == 0, else temperature + top_k (0 = off) + top_p sampling;
        repetition_penalty (1 = off; 1.1-1.3 is usual) discourages tokens already in the prompt or
        the answer. stop: strings that end an answer; the answer is cut before the first occurrence
        of any of them (the string itself is not part of it). stream(index, piece) is called with
        text pieces of conversation `index` as they are generated (decoded every `chunk_tokens`
        tokens); its pieces concatenate to the returned answer, which is the non-streamed one.
        Without stream and stop strings the whole answer is one device call.
        """
        answers = [""] * len(messages_batch)
        for i, piece, answer in self._answers(
            messages_batch,
            images_batch,
            max_new_tokens,
            chunk_tokens if stream is not None or stop else None,
            stop,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            seed=seed,
        ):
            if stream is not None and piece:
                stream(i, piece)
            if answer is not None:
                answers[i] = answer
        return answers

    def chat_stream(
        self,
        messages_batch: Sequence[Conversation],
        images_batch: Sequence[Sequence[ImageLike]] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        *,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        stop: Sequence[str] = (),
        chunk_tokens: int = 4,
    ) -> Iterator[tuple[int, str]]:
        """`chat` as a generator of (conversation index, text piece), yielded as tokens are generated;
        a conversation's pieces concatenate to its `chat` answer. Stopping early stops decoding."""
        for i, piece, _ in self._answers(
            messages_batch,
            images_batch,
            max_new_tokens,
            chunk_tokens,
            stop,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            seed=seed,
        ):
            if piece:
                yield i, piece

    def _answers(
        self, messages_batch, images_batch, max_new_tokens, chunk_tokens, stop, **sampling
    ) -> Iterator[tuple[int, str, str | None]]:
        """-> (conversation index, new text piece, its answer once complete, else None).

        chunk_tokens None: one device call per batch and one piece per answer (the whole of it).
        Otherwise decoding runs `chunk_tokens` tokens per call (decode.generate_chunks: the next call
        is queued before the host decodes text, so the device does not wait on it) and a batch stops
        once every answer has ended (EOS, a stop string, or max_new_tokens).
        """
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        prompts = self.prompts(messages_batch, images_batch)
        if not prompts:
            return
        for start, arrays, options in self._requests(prompts, max_new_tokens, **sampling):
            texts = [AnswerText(self.tokenizer, stop) for _ in range(len(arrays[0]))]
            chunks = decode.generate_chunks(
                self.cfg,
                self.params,
                *arrays,
                chunk_tokens=chunk_tokens or max_new_tokens,
                **options,
            )
            try:
                while any(t.answer is None for t in texts):
                    with self._context():
                        got = next(chunks)
                    for r, text in enumerate(texts):
                        final = bool(got.done[r]) or got.steps >= max_new_tokens
                        if text.answer is not None or not (final or chunk_tokens):
                            continue
                        piece = text.update(got.tokens[r, : got.steps], final)
                        if piece or text.answer is not None:
                            yield start + r, piece, text.answer
            finally:
                chunks.close()


class AnswerText:
    """One answer as its tokens arrive: `update(all new ids so far)` -> the text not given yet.

    The answer is the decode of the new ids up to the first EOS (special tokens dropped), cut before
    the first occurrence of any stop string (found in the raw decoded text; the stop string and what
    follows are dropped, as OpenAI's and vLLM's `stop` do), then stripped. A piece is the decode of
    all ids so far minus what was already given, never a decode of the newest ids alone, so
    multi-byte characters and SentencePiece's word-boundary spaces come out right. Until the answer
    is final these are held back: a trailing U+FFFD (an incomplete UTF-8 sequence), trailing
    whitespace (the answer is stripped) and a tail that may begin a stop string; so what was given
    is always a prefix of the answer, and the pieces concatenate to it.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.given = ""
        self.answer: str | None = None  # set once final (EOS, a stop string, or the last token)

    def text(self, new_ids: Sequence[int]) -> str:
        """New ids -> their raw text: up to the first EOS, special tokens dropped, not stripped."""
        toks = [int(x) for x in new_ids if int(x) < self.tokenizer.vocab_size]
        if self.tokenizer.eos_id in toks:
            toks = toks[: toks.index(self.tokenizer.eos_id)]
        return self.tokenizer.decode(toks, skip_special=True)

    def update(self, new_ids: Sequence[int], final: bool = False) -> str:
        """All new ids so far -> the next piece; final: no more ids will come."""
        text = self.text(new_ids)
        cut = min((k for k in (text.find(s) for s in self.stop) if k >= 0), default=-1)
        if final or cut >= 0:
            self.answer = (text if cut < 0 else text[:cut]).strip()
            piece, self.given = self.answer[len(self.given) :], self.answer
            return piece
        stable = text.lstrip().rstrip("\ufffd")
        while True:
            held = stable.rstrip()
            held = held[: len(held) - self._stop_start(held)]
            if held == stable:
                break
            stable = held
        if len(stable) <= len(self.given):
            return ""
        piece, self.given = stable[len(self.given) :], stable
        return piece

    def _stop_start(self, text: str) -> int:
        """The length of the longest tail of text that is a proper prefix of a stop string (0: none)."""
        return max(
            (
                k
                for s in self.stop
                for k in range(min(len(s) - 1, len(text)), 0, -1)
                if text.endswith(s[:k])
            ),
            default=0,
        )


def check_tokenizer(cfg: ModelConfig, tok: Tokenizer) -> None:
    if why := model_mismatch(tok, cfg.image_token_id, cfg.llm.vocab_size):
        raise InferenceError(why + "; is it the tokenizer the model was trained with?")


def param_shardings(
    cfg: ModelConfig,
    mesh_shape: Mapping[str, int] | Sequence[int],
    rules_override: Mapping[str, Any] | None = None,
):
    """-> (mesh, rules, per-parameter NamedShardings), with the training rules of parallel/rules.py."""
    if not isinstance(mesh_shape, Mapping):
        if len(mesh_shape) != len(MESH_AXES):
            raise InferenceError(
                f"mesh_shape {tuple(mesh_shape)}: expected {len(MESH_AXES)} sizes {MESH_AXES}"
            )
        mesh_shape = dict(zip(MESH_AXES, mesh_shape))
    mesh = build_mesh({"ici": dict(mesh_shape)})
    rules = rules_from_config(rules_override)
    return mesh, rules, logical_to_shardings(logical_axes(cfg), abstract_params(cfg), mesh, rules)


__all__ = [
    "AnswerText",
    "Engine",
    "InferenceError",
    "as_messages",
    "check_tokenizer",
    "load_image",
    "param_shardings",
]
