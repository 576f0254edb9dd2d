"""Ask a trained model about images.

With a question: prints one answer (greedy unless --temperature > 0) and exits. Without one:
interactive, one question per line from stdin and one answer per line on stdout; the conversation
is kept. `/image PATH` attaches an image to the next question, `/reset` starts over, an empty line
or EOF quits. --checkpoint is any model folder (a run dir: its final/ or latest step; a step
checkpoint; a params checkpoint; an HF folder); its stored tokenizer is used unless --tokenizer
names another. Images are placed before the question (IMAGE_TAG + "\\n" + question).
"""

from __future__ import annotations

import os
import sys

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
    flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 samples with temperature + top-p.")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (with --temperature > 0).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_string(
        "system", "default", "System prompt: 'default' = DeepSeek-VL's, '' = none, else the text."
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


def interactive(ask, images: list, stdin=None, stdout=None, stderr=None) -> None:
    """One question per line; the conversation (and its images) is kept until /reset.

    ask(messages, images) -> answer text. `images` attach to the first question.
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
            text = ask(history + [question], history_images + pending)
        except ValueError as e:
            print(f"chat: error: {command.one_line(str(e))}", file=stderr, flush=True)
            continue
        print(text, file=stdout, flush=True)
        if text:  # an empty answer cannot be a turn of the template; that exchange is not kept
            history += [question, Message("assistant", text)]
            history_images += pending
            pending = []


def main(argv: list[str]) -> None:
    question = " ".join(argv).strip()
    images = read_images(FLAGS.image)  # before the (slow) model load
    command.setup_device_process()
    engine = load_engine()

    def ask(messages, imgs) -> str:
        return engine.chat(
            [messages],
            [imgs],
            max_new_tokens=FLAGS.max_new_tokens,
            temperature=FLAGS.temperature,
            top_p=FLAGS.top_p,
            seed=FLAGS.seed,
        )[0]

    if not question:
        interactive(ask, images)
        return
    print(ask(question, images), flush=True)


def entry() -> None:
    command.run("chat", main, doc=__doc__, example=EXAMPLE, define_flags=define_flags)
