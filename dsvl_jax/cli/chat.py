"""Ask a trained model about images.

With a question: prints one answer (greedy unless --temperature > 0) and exits. Without one:
interactive, one question per line from stdin and one answer per line on stdout; the conversation
is kept. `/image PATH` attaches an image to the next question, `/reset` starts over, an empty line
or EOF quits. --checkpoint is any model folder (a run dir: its final/ or latest step; a step
checkpoint; a params checkpoint; an HF folder); its stored tokenizer is used unless --tokenizer
names another. Images are placed before the question (IMAGE_TAG + "\\n" + question).

Answers are printed as they are generated (--nostream: once complete; the text is the same).
Sampling: --temperature, --top_k, --top_p; --repetition_penalty applies to greedy answers too.
--stop strings end an answer before them (`\\n` and `\\t` in a flag stand for newline and tab).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable

from absl import app, flags

from dsvl_jax.cli import command

FLAGS = flags.FLAGS
EXAMPLE = 'python -m dsvl_jax.chat --checkpoint=runs/demo/stage3 --image=chart.png "What is the value for 2017?"'


def define_flags() -> None:
    flags.DEFINE_string(
        "checkpoint",
        None,
        "Model folder: run dir, step checkpoint, params checkpoint or HF folder.",
    )
    flags.DEFINE_string(
        "tokenizer",
        None,
        "Tokenizer (.model, tokenizer.json or its folder); default: the one "
        "stored with --checkpoint.",
    )
    flags.DEFINE_multi_string(
        "image", [], "Image file for the (first) question; repeat for several."
    )
    flags.DEFINE_integer("max_new_tokens", 128, "Most tokens generated per answer.")
    flags.DEFINE_float(
        "temperature", 0.0, "0 = greedy; > 0 samples with temperature + top-k + top-p."
    )
    flags.DEFINE_integer(
        "top_k", 0, "Sample among the k most likely tokens (with --temperature > 0); 0 = all."
    )
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (with --temperature > 0).")
    flags.DEFINE_float(
        "repetition_penalty",
        1.0,
        "> 1 discourages tokens already in the conversation or the answer (divides their positive "
        "logits, multiplies negative ones; 1.1-1.3 is usual); 1 = off. Greedy or sampled.",
    )
    flags.DEFINE_multi_string(
        "stop",
        [],
        "A string that ends the answer (cut before it, not printed); repeat for several. "
        "\\n and \\t stand for newline and tab.",
    )
    flags.DEFINE_boolean(
        "stream", True, "Print the answer as it is generated (--nostream: once complete)."
    )
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_string(
        "system",
        None,
        "System prompt; default: the one the model was trained with (recorded in its checkpoint), "
        "else DeepSeek-VL's. 'default' = DeepSeek-VL's, '' = none, else the text.",
    )
    flags.DEFINE_list(
        "mesh",
        None,
        "data,fsdp,tensor sizes for sharded inference (one may be -1), e.g. 1,1,-1; "
        "default: one device.",
    )
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "Compute dtype override.")


def read_images(paths: list[str]):
    """Paths -> PIL images; a missing file is a usage error, an undecodable one a failure."""
    from dsvl_jax.data.records import decode_image

    out = []
    for p in paths:
        if not os.path.isfile(p):
            raise app.UsageError(f"image {p} not found")
        with open(p, "rb") as f:
            out.append(decode_image(f.read(), record_id=p))
    return out


def load_engine():
    command.check_usage(required=("checkpoint",), paths=("checkpoint",))
    mesh = None
    if FLAGS.mesh:
        try:
            mesh = tuple(int(x) for x in FLAGS.mesh)
        except ValueError:
            raise app.UsageError(
                f"--mesh={','.join(FLAGS.mesh)}: expected three integers data,fsdp,tensor"
            ) from None
    from dsvl_jax.infer import Engine

    return Engine.load(
        FLAGS.checkpoint,
        FLAGS.tokenizer,
        mesh_shape=mesh,
        dtype=FLAGS.dtype,
        batch_size=1,
        system_prompt=FLAGS.system,
    )


def unescape(text: str) -> str:
    """A --stop value as typed -> the string: \\n newline, \\t tab, \\\\ backslash."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t"}.get(m[1], "\\"), text)


def show(answer: str | Iterable[str], stdout) -> str:
    """Print an answer (its text, or its pieces as they come) and a newline -> the answer's text.

    A request error raised by the first piece leaves stdout untouched.
    """
    pieces = iter([answer] if isinstance(answer, str) else answer)
    text = next(pieces, "")
    print(text, end="", file=stdout, flush=True)
    try:
        for piece in pieces:
            print(piece, end="", file=stdout, flush=True)
            text += piece
    finally:
        print(file=stdout, flush=True)
    return text


def interactive(ask, images: list, stdin=None, stdout=None, stderr=None) -> None:
    """One question per line; the conversation (and its images) is kept until /reset.

    ask(messages, images) -> the answer text, or an iterable of its pieces (printed as they come).
    `images` attach to the first question.
    """
    from dsvl_jax.data.records import IMAGE_TAG, BadRecord, Message

    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    history, history_images, pending = [], [], list(images)
    tty = stdin.isatty()
    while True:
        if tty:
            print("> ", end="", file=stderr, flush=True)
        line = stdin.readline()
        if not line.strip():
            return
        line = line.strip()
        if line == "/reset":
            history, history_images, pending = [], [], []
            continue
        if line.startswith("/image"):
            try:
                pending += read_images([line[len("/image") :].strip()])
            except (app.UsageError, BadRecord) as e:  # keep the session: report and go on
                print(f"chat: error: {command.one_line(str(e))}", file=stderr, flush=True)
            continue
        question = Message("user", (IMAGE_TAG * len(pending) + "\n" if pending else "") + line)
        try:
            text = show(ask(history + [question], history_images + pending), stdout)
        except ValueError as e:
            print(f"chat: error: {command.one_line(str(e))}", file=stderr, flush=True)
            continue
        if text:  # an empty answer cannot be a turn of the template; that exchange is not kept
            history += [question, Message("assistant", text)]
            history_images += pending
            pending = []


def main(argv: list[str]) -> None:
    question = " ".join(argv).strip()
    if FLAGS.top_k < 0:
        raise app.UsageError(f"--top_k={FLAGS.top_k}: expected >= 0 (0 = off)")
    if not FLAGS.repetition_penalty > 0:
        raise app.UsageError(
            f"--repetition_penalty={FLAGS.repetition_penalty}: expected > 0 (1 = off)"
        )
    stop = [unescape(s) for s in FLAGS.stop]
    images = read_images(FLAGS.image)  # before the (slow) model load
    command.setup_device_process()
    engine = load_engine()
    options = dict(
        max_new_tokens=FLAGS.max_new_tokens,
        temperature=FLAGS.temperature,
        top_p=FLAGS.top_p,
        seed=FLAGS.seed,
        top_k=FLAGS.top_k,
        repetition_penalty=FLAGS.repetition_penalty,
        stop=stop,
    )

    def ask(messages, imgs) -> str | Iterable[str]:
        if FLAGS.stream:
            return (piece for _, piece in engine.chat_stream([messages], [imgs], **options))
        return engine.chat([messages], [imgs], **options)[0]

    if not question:
        interactive(ask, images)
        return
    show(ask(question, images), sys.stdout)


def entry() -> None:
    command.run("chat", main, doc=__doc__, example=EXAMPLE, define_flags=define_flags)
