"""The "deepseek" chat template: an Example's messages -> (ids, loss_mask) for training, and prompts.

String form (docs/recipe.md#chat-format; DeepSeek-VL's conversation.py):

    system + "\\n\\n" + "User: " + q1 + "\\n\\n" + "Assistant: " + a1 + EOS + "User: " + q2 + ...

- System prompt: the Example's leading "system" message (stripped) when it has one, an empty one
  meaning no system block; otherwise `default_system` (DEFAULT_SYSTEM_PROMPT, which DeepSeek's
  VLChatProcessor and the HF chat template always use).
- Message texts are stripped. `IMAGE_TAG` stays where the text puts it (DeepSeek's example has no
  space after it). A generation prompt ends with "Assistant:" (no space).
- "text" messages (pretraining) are one document, joined by "\\n", followed by EOS.

Token form: BOS + the tokens of that string, each `IMAGE_TAG` replaced by `num_image_tokens`
copies of the image id (the tag itself is not kept: add_special_token=false in DeepSeek's
processor). `loss_mask[t]` says ids[t] is a training target (docs/recipe.md#loss-mask): each assistant answer
" " + a + EOS for conversations (the space after "Assistant:" belongs to the answer, as the model
generates it after the "Assistant:" prompt), every text token and EOS for "text" messages; never
BOS, the system prompt, "User: ..." turns, the "Assistant:" prefix or an image token. The packer
shifts: inputs ids[:-1], targets ids[1:], weights loss_mask[1:].

Ids are built segment by segment (one tokenizer call per run of text with one mask value, split at
image tags) so mask boundaries are exact. The boundaries sit at special tokens or just before the
space that starts an answer, where SentencePiece (split_by_whitespace) and byte-level BPE
pre-tokenizers already split, so the ids equal those of tokenizing the whole string (tested with
SentencePiece, GPT-2-style and DeepSeek-style byte-level BPE). A BOS/EOS/image string inside a
message is a TemplateError (it would fake a turn end or an image).

Differences from the HF chat template: it writes no BOS (its tokenizer adds one), it
cannot take another system prompt (a "system" message renders as "System: ..."), and it drops the
separator after the final message, so a conversation ending with an answer has no final EOS there.
We keep that EOS, as DeepSeek's conversation.py does: the model has to learn to stop.

Truncation (`max_len` bounds len(ids)): plain text is cut at max_len (the final EOS may go); an
image block is never cut nor dropped (its pixels would lose their tokens), that is a
TemplateError, as is an example left with no loss token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from dsvl_jax.data.records import IMAGE_TAG, BadRecord, Example, Message
from dsvl_jax.data.tokenizer import DEEPSEEK_EOS, Tokenizer

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)
# Wherever a system prompt is configured (data.system_prompt, Engine.system_prompt, --system), this
# value stands for DEFAULT_SYSTEM_PROMPT; "" means no system block; anything else is the text itself.
SYSTEM_DEFAULT = "default"
USER_PREFIX, ASSISTANT_PREFIX, USER_SEP, TEXT_JOIN = "User: ", "Assistant:", "\n\n", "\n"
OVERFLOW = ("truncate", "error")

_EOS = None  # marks the EOS segment; its text is the tokenizer's eos_text


def system_prompt(setting: str | None) -> str:
    """A configured system prompt -> its text (SYSTEM_DEFAULT and None -> DEFAULT_SYSTEM_PROMPT)."""
    return DEFAULT_SYSTEM_PROMPT if setting is None or setting == SYSTEM_DEFAULT else setting


class TemplateError(BadRecord):
    """A record the template cannot render (roles, empty answer, length, special strings, image count).

    A BadRecord (so a ValueError): the pipeline's skip policy drops and counts it like any bad record.
    """

    def __init__(self, record_id: str, detail: str, reason: str = "bad_conversation"):
        super().__init__(reason, detail, record_id)


@dataclasses.dataclass(frozen=True)
class Rendered:
    ids: np.ndarray  # [T] int32
    loss_mask: np.ndarray  # [T] bool: ids[t] is a training target
    num_images: int  # image blocks of num_image_tokens ids each
    truncated: bool = False
    # conversations: the index where each user turn after an answer starts (where a conversation too
    # long for a row may be cut, data/splitting.py); None for pretraining text (cut anywhere)
    breaks: np.ndarray | None = None


def _segments(
    messages: Sequence[Message], mode: str, default_system: str, rid: str
) -> list[tuple[str | None, bool]]:
    """messages -> [(text or _EOS, loss)], in order; mode is "train", "format" or "generate"."""
    if not messages:
        raise TemplateError(rid, "no messages")
    roles = [m.role for m in messages]
    if "text" in roles:
        if set(roles) != {"text"}:
            raise TemplateError(rid, f"'text' messages cannot mix with conversation roles {roles}")
        if mode == "generate":
            raise TemplateError(
                rid, "a generation prompt needs a conversation, not 'text' messages"
            )
        return [(TEXT_JOIN.join(m.content for m in messages), True), (_EOS, True)]
    msgs, system = list(messages), default_system.strip()
    if msgs[0].role == "system":
        system = msgs.pop(0).content.strip()
    for i, m in enumerate(msgs):
        if m.role != ("user", "assistant")[i % 2]:
            raise TemplateError(
                rid, f"roles must be [system] then user/assistant alternating, got {roles}"
            )
    if not msgs:
        raise TemplateError(rid, "no user message")
    last_role = msgs[-1].role
    if mode == "train" and (last_role != "assistant" or not msgs[-1].content.strip()):
        raise TemplateError(
            rid, "a training conversation must end with a non-empty assistant answer"
        )
    if mode == "generate" and last_role != "user":
        raise TemplateError(
            rid, f"a generation prompt must end with a user message, got {last_role!r}"
        )

    segs: list[tuple[str | None, bool]] = []
    prompt = system + USER_SEP if system else ""
    for i, m in enumerate(msgs):
        text, last = m.content.strip(), i == len(msgs) - 1
        if m.role == "user":
            prompt += USER_PREFIX + text + (USER_SEP if not last or mode == "generate" else "")
        elif text:
            segs += [(prompt + ASSISTANT_PREFIX, False), (" " + text, True), (_EOS, True)]
            prompt = ""
        elif last:  # a trailing empty answer renders as the generation prompt
            prompt += ASSISTANT_PREFIX
        else:
            raise TemplateError(
                rid, f"empty assistant answer in message {i + (len(roles) - len(msgs))}"
            )
    if mode == "generate":
        prompt += ASSISTANT_PREFIX
    if prompt:
        segs.append((prompt, False))
    return segs


def format_conversation(
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = False,
    eos_text: str = DEEPSEEK_EOS,
    default_system: str = DEFAULT_SYSTEM_PROMPT,
) -> str:
    """The template as a string, without BOS; `render` tokenizes exactly this (plus BOS)."""
    mode = "generate" if add_generation_prompt else "format"
    return "".join(
        eos_text if t is _EOS else t for t, _ in _segments(messages, mode, default_system, "")
    )


def _encode(
    segs, tok: Tokenizer, num_image_tokens: int, rid: str
) -> tuple[list[int], list[bool], int, list[int]]:
    """(ids, loss mask, image count, the index after every EOS) of the segments."""
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens={num_image_tokens}: must be >= 1")
    ids, mask, images, after_eos = [tok.bos_id], [False], 0, []
    special = {tok.bos_id, tok.eos_id, tok.image_token_id}
    for text, loss in segs:
        if text is _EOS:
            ids.append(tok.eos_id)
            mask.append(loss)
            after_eos.append(len(ids))
            continue
        for j, part in enumerate(text.split(IMAGE_TAG)):
            if j:
                ids += [tok.image_token_id] * num_image_tokens
                mask += [False] * num_image_tokens
                images += 1
            if part:
                t = tok.encode(part)
                if special.intersection(t):
                    raise TemplateError(
                        rid,
                        f"text {part[:60]!r} contains a special token string "
                        f"({tok.decode(sorted(special.intersection(t)))})",
                    )
                ids += t
                mask += [loss] * len(t)
    return ids, mask, images, after_eos


def render(
    example: Example | Sequence[Message],
    tokenizer: Tokenizer,
    num_image_tokens: int,
    *,
    max_len: int | None = None,
    overflow: str = "truncate",
    default_system: str = DEFAULT_SYSTEM_PROMPT,
) -> Rendered:
    """Training form of an Example (or a message list): ids [T] int32, loss_mask [T] bool, T <= max_len.

    overflow: "truncate" cuts plain text past max_len (never an image block: TemplateError),
    "error" raises on any overflow. With an Example, its image count must match the tags.
    """
    if overflow not in OVERFLOW:
        raise ValueError(f"overflow={overflow!r}: expected one of {OVERFLOW}")
    rid = example.id if isinstance(example, Example) else ""
    messages = example.messages if isinstance(example, Example) else example
    ids, mask, images, after_eos = _encode(
        _segments(messages, "train", default_system, rid), tokenizer, num_image_tokens, rid
    )
    conversation = any(m.role == "assistant" for m in messages)
    if isinstance(example, Example) and images != len(example.images):
        raise TemplateError(
            rid,
            f"{images} {IMAGE_TAG} tags but {len(example.images)} images",
            "image_count_mismatch",
        )
    ids_a, mask_a = np.asarray(ids, np.int32), np.asarray(mask, bool)
    truncated = max_len is not None and len(ids) > max_len
    if truncated:
        if overflow == "error":
            raise TemplateError(rid, f"{len(ids)} tokens > max_len {max_len}")
        cut = np.flatnonzero(ids_a[max_len:] == tokenizer.image_token_id)
        if cut.size:
            k = (
                int(np.sum(ids_a[: max_len + cut[0]] == tokenizer.image_token_id))
                // num_image_tokens
            )
            raise TemplateError(
                rid,
                f"{len(ids)} tokens > max_len {max_len} would cut image {k + 1} of "
                f"{images}; image blocks are never truncated (raise max_len or drop the record)",
            )
        ids_a, mask_a = ids_a[:max_len], mask_a[:max_len]
    if not mask_a.any():
        raise TemplateError(
            rid,
            "no loss token left" + (f" within max_len {max_len}" if truncated else ""),
            "empty_text",
        )
    breaks = None
    if conversation:
        breaks = np.asarray([b for b in after_eos if b < len(ids_a)], np.int32)
    return Rendered(ids_a, mask_a, images, bool(truncated), breaks)


def render_generation_prompt(
    messages: Sequence[Message],
    tokenizer: Tokenizer,
    num_image_tokens: int,
    *,
    default_system: str = DEFAULT_SYSTEM_PROMPT,
) -> Rendered:
    """Inference prompt: BOS + conversation ending with "User: ...\\n\\nAssistant:" (loss_mask all False)."""
    ids, _, images, _ = _encode(
        _segments(messages, "generate", default_system, ""), tokenizer, num_image_tokens, ""
    )
    return Rendered(np.asarray(ids, np.int32), np.zeros(len(ids), bool), images)
