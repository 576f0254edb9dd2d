"""Convert between HuggingFace folders and dsvl_jax checkpoints: from-hf | to-hf | from-parts.

from-hf --hf DIR --out CKPT: config.json + safetensors of DeepseekVL(Hybrid)ForConditionalGeneration
-> a params checkpoint (the folder's tokenizer files go to CKPT/tokenizer/).
to-hf --checkpoint SRC --out DIR: any model folder (a run dir, a step checkpoint, a params
checkpoint) -> an HF folder with the tokenizer, processor and chat-template files, so PyTorch users
run AutoProcessor / DeepseekVL(Hybrid)ForConditionalGeneration.from_pretrained(DIR). The tokenizer is
--tokenizer, by default the one stored with the model; --tokenizer=none exports the weights only.
from-parts --siglip DIR --llm DIR [--sam DIR] --out CKPT [--seed N]: the paper's stage-1 start, composed
from separate HF parts (SiglipModel / SiglipVisionModel, SamModel / SamVisionModel, LlamaForCausalLM
with its tokenizer): towers and LLM from the parts, adaptor / neck_hd / downsample convs / alpha
initialised from --seed, the image token added to the tokenizer when it lacks one; hybrid when --sam
is given. Writes CKPT/from_parts.json (every source tensor used or listed as ignored).
None of them needs torch. Prints one JSON line (files written, parameter count, seconds).
"""

from __future__ import annotations

import json

from absl import app, flags

from dsvl_jax.cli import command

FLAGS = flags.FLAGS
EXAMPLE = "python -m dsvl_jax.convert to-hf --checkpoint=runs/demo/stage3 --out=hf/demo"
COMMANDS = ("from-hf", "to-hf", "from-parts")
USAGE = (
    "usage: convert from-hf --hf DIR --out CKPT | convert to-hf --checkpoint SRC --out DIR | "
    "convert from-parts --siglip DIR --llm DIR [--sam DIR] --out CKPT [--seed N]"
)


def define_flags() -> None:
    flags.DEFINE_string("hf", None, "from-hf: the HF save_pretrained folder to read.")
    flags.DEFINE_string(
        "checkpoint", None, "to-hf: the model folder to export (run dir, step, params)."
    )
    flags.DEFINE_string("out", None, "Output: checkpoint dir (from-hf) or HF folder (to-hf).")
    flags.DEFINE_enum(
        "dtype", "float32", ["float32", "bfloat16", "float16"], "to-hf: tensor dtype written."
    )
    flags.DEFINE_bool(
        "scan_layers", True, "from-hf / from-parts: store SigLIP/LLM blocks stacked for nn.scan."
    )
    flags.DEFINE_string("siglip", None, "from-parts: SiglipModel or SiglipVisionModel HF folder.")
    flags.DEFINE_string("sam", None, "from-parts: SamModel or SamVisionModel HF folder (hybrid).")
    flags.DEFINE_string("llm", None, "from-parts: LlamaForCausalLM HF folder with its tokenizer.")
    flags.DEFINE_integer("seed", 0, "from-parts: seed of the freshly initialised parameters.")
    flags.DEFINE_enum(
        "siglip_act",
        "",
        ["", "gelu", "gelu_tanh"],
        "from-parts: the SigLIP activation; default: the part's config.json (stock SigLIP: "
        "gelu_tanh; DeepSeek-VL ran those weights with exact gelu).",
    )
    flags.DEFINE_string(
        "tokenizer",
        "auto",
        "to-hf: tokenizer to export (.model, tokenizer.json or its "
        "folder); 'auto' = the one stored with the model, 'none' = weights only.",
    )


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in COMMANDS:
        raise app.UsageError(f"expected one of {COMMANDS}, got {argv or 'nothing'}. {USAGE}")
    if not FLAGS.out:
        raise app.UsageError(f"--out is required. {USAGE}")
    if argv[0] == "from-hf" and not FLAGS.hf:
        raise app.UsageError(f"from-hf needs --hf DIR. {USAGE}")
    if argv[0] == "to-hf" and not FLAGS.checkpoint:
        raise app.UsageError(f"to-hf needs --checkpoint SRC. {USAGE}")
    if argv[0] == "from-parts" and not (FLAGS.siglip and FLAGS.llm):
        raise app.UsageError(f"from-parts needs --siglip DIR and --llm DIR. {USAGE}")
    command.check_usage(paths=("hf", "checkpoint", "siglip", "sam", "llm"))
    command.setup_logging()
    from dsvl_jax.checkpoints import compose, from_hf, to_hf

    if argv[0] == "from-hf":
        res = from_hf(FLAGS.hf, FLAGS.out, FLAGS.scan_layers)
    elif argv[0] == "from-parts":
        res = compose.summary(
            compose.from_parts(
                FLAGS.siglip,
                FLAGS.llm,
                FLAGS.out,
                FLAGS.sam,
                seed=FLAGS.seed,
                scan_layers=FLAGS.scan_layers,
                siglip_act=FLAGS.siglip_act,
            )
        )
    else:
        res = to_hf(FLAGS.checkpoint, FLAGS.out, FLAGS.dtype, FLAGS.tokenizer)
    print(json.dumps(res), flush=True)


def entry() -> None:
    command.run("convert", main, doc=__doc__, example=EXAMPLE, define_flags=define_flags)
