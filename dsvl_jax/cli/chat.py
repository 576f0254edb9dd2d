"""`python -m dsvl_jax.chat`: ask a trained checkpoint about images.

  python -m dsvl_jax.chat --checkpoint DIR [--tokenizer PATH] [--image a.png ...] "question"
      prints one answer (greedy unless --temperature > 0) and exits.
  python -m dsvl_jax.chat --checkpoint DIR [--image a.png]
      interactive: one question per line from stdin, one answer per line on stdout; the conversation
      is kept. `/image PATH` attaches an image to the next question, `/reset` starts over, an empty
      line or EOF quits.

DIR is a params checkpoint (model_config.json + params/); its tokenizer file (tokenizer.model or
tokenizer.json, which training copies into final/) is used unless --tokenizer names another. Images
are placed before the question (IMAGE_TAG + "\\n" + question). Errors (missing image or checkpoint,
mismatched tokenizer, prompt too long) print one line and exit non-zero.

Other flags (--helpfull lists them): --max_new_tokens 128, --temperature 0 (greedy) with --top_p and
--seed, --system PROMPT, --mesh data,fsdp,tensor (sharded inference), --dtype bfloat16.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from dsvl_jax.cli.common import setup_process

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined when the command runs, not at import: other CLI modules define flags with the same names."""
    flags.DEFINE_string("checkpoint", None, "Params checkpoint dir (model_config.json + params/).")
    flags.DEFINE_string("tokenizer", None, "Tokenizer (.model, tokenizer.json or its folder); default: the one "
                                           "stored in --checkpoint.")
    flags.DEFINE_multi_string("image", [], "Image file for the (first) question; repeat for several.")
    flags.DEFINE_integer("max_new_tokens", 128, "Most tokens generated per answer.")
    flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 samples with temperature + top-p.")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (with --temperature > 0).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_string("system", None, "System prompt (default: DeepSeek-VL's; '' for none).")
    flags.DEFINE_list("mesh", None, "data,fsdp,tensor sizes for sharded inference (one may be -1), "
                                    "e.g. 1,1,-1; default: one device.")
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "Compute dtype override.")


def fail(msg: str) -> None:
    sys.exit(f"chat: {msg}")


def check_images(paths: list[str]):
    """Paths -> PIL images; a missing or undecodable file ends the command with one line."""
    from dsvl_jax.data.records import BadRecord, decode_image  # light imports: fail before jax loads

    out = []
    for p in paths:
        if not os.path.isfile(p):
            fail(f"image {p} not found")
        try:
            with open(p, "rb") as f:
                out.append(decode_image(f.read(), record_id=p))
        except BadRecord as e:
            fail(f"image {p}: {e.reason}: {e.detail}")
        except OSError as e:
            fail(f"image {p}: {e}")
    return out


def load_engine():
    from dsvl_jax.infer import Engine

    if not FLAGS.checkpoint:
        raise app.UsageError("--checkpoint is required. usage: python -m dsvl_jax.chat --checkpoint DIR "
                             "[--image a.png] [question]")
    if not os.path.isdir(FLAGS.checkpoint):
        fail(f"checkpoint {FLAGS.checkpoint} not found")
    mesh = None
    if FLAGS.mesh:
        try:
            mesh = tuple(int(x) for x in FLAGS.mesh)
        except ValueError:
            fail(f"--mesh={','.join(FLAGS.mesh)}: expected three integers data,fsdp,tensor")
    options = {} if FLAGS.system is None else {"system_prompt": FLAGS.system}
    try:
        return Engine.load(FLAGS.checkpoint, FLAGS.tokenizer, mesh_shape=mesh, dtype=FLAGS.dtype, batch_size=1,
                           **options)
    except (OSError, ValueError, KeyError) as e:  # the messages name the file at fault
        fail(str(e) if FLAGS.checkpoint in str(e) else f"cannot load {FLAGS.checkpoint}: {e}")


def interactive(ask, images: list, stdin=None, stdout=None, stderr=None) -> None:
    """One question per line; the conversation (and its images) is kept until /reset.

    ask(messages, images) -> answer text. `images` attach to the first question.
    """
    from dsvl_jax.data.records import IMAGE_TAG, Message

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
                pending += check_images([line[len("/image"):].strip()])
            except SystemExit as e:  # keep the session: report and go on
                print(e.code, file=stderr, flush=True)
            continue
        question = Message("user", (IMAGE_TAG * len(pending) + "\n" if pending else "") + line)
        try:
            text = ask(history + [question], history_images + pending)
        except ValueError as e:
            print(f"chat: {e}", file=stderr, flush=True)
            continue
        print(text, file=stdout, flush=True)
        if text:  # an empty answer cannot be a turn of the template; that exchange is not kept
            history += [question, Message("assistant", text)]
            history_images += pending
            pending = []


def main(argv: list[str]) -> None:
    setup_process()
    question = " ".join(argv[1:]).strip()
    images = check_images(FLAGS.image)  # before the (slow) model load
    engine = load_engine()

    def ask(messages, imgs) -> str:
        return engine.chat([messages], [imgs], max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                           top_p=FLAGS.top_p, seed=FLAGS.seed)[0]
    if not question:
        interactive(ask, images)
        return
    try:
        print(ask(question, images), flush=True)
    except ValueError as e:
        fail(str(e))


def entry() -> None:
    define_flags()
    sys.modules["__main__"].__doc__ = __doc__  # absl shows the main module's docstring for --help and usage errors
    app.run(main)
