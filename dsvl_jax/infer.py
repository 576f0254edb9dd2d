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
from collections.abc import Mapping, Sequence
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
        length_bucket, system_prompt).
        """
        src = open_model(path)
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

    def generate_ids(
        self,
        prompts: Sequence[tuple[np.ndarray, list]],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> np.ndarray:
        """(prompt ids, PIL images) pairs -> new ids [N, max_new_tokens] (pad after EOS)."""
        n = len(prompts)
        if n == 0:
            return np.zeros((0, max_new_tokens), np.int32)
        longest = max(len(p) for p, _ in prompts)
        if longest + max_new_tokens > self.cfg.llm.max_position:
            raise InferenceError(
                f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds "
                f"model.llm.max_position={self.cfg.llm.max_position}"
            )
        dp = self.data_parallel
        batch = self.batch_size or _next_pow2(n)
        batch = -(-batch // dp) * dp
        spec = image_spec(self.cfg)
        tok = self.tokenizer
        outs = []
        for c, start in enumerate(range(0, n, batch)):
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
            rng = jax.random.fold_in(jax.random.key(seed), c)
            with self._context():
                new = decode.generate(
                    self.cfg,
                    self.params,
                    ids,
                    mask,
                    pixels,
                    high,
                    max_new_tokens=max_new_tokens,
                    stop_ids=[tok.eos_id],
                    pad_id=tok.pad_id,
                    temperature=temperature,
                    top_p=top_p,
                    rng=rng,
                    length_bucket=self.length_bucket,
                    batch_size=batch,
                    vocab_limit=tok.vocab_size,
                )
            outs.append(new)
        return np.concatenate(outs, axis=0)

    def decode_answer(self, new_ids: Sequence[int]) -> str:
        """New ids -> text up to the first EOS, special tokens dropped, stripped."""
        toks = [int(x) for x in new_ids if int(x) < self.tokenizer.vocab_size]
        if self.tokenizer.eos_id in toks:
            toks = toks[: toks.index(self.tokenizer.eos_id)]
        return self.tokenizer.decode(toks, skip_special=True).strip()

    def chat(
        self,
        messages_batch: Sequence[Conversation],
        images_batch: Sequence[Sequence[ImageLike]] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[str]:
        """Answer each conversation (greedy when temperature == 0). -> one answer string per conversation."""
        new = self.generate_ids(
            self.prompts(messages_batch, images_batch),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
        return [self.decode_answer(row) for row in new]


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
    "Engine",
    "InferenceError",
    "as_messages",
    "check_tokenizer",
    "load_image",
    "param_shardings",
]
