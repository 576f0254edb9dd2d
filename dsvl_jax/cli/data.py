"""Data in: prepare | generate | inspect.

prepare --format F --input PATH --out DIR: your data -> ArrayRecord shards (a tfds data_dir). PATH is
  a file, a folder or a glob (JSON lines may be .gz / .zst). Bad records are skipped and counted
  (--report: written, images_written, skipped by reason, skipped ids); more than --max_skip_rate of
  them stops the import naming the input. --workers N imports the input files in N processes;
  --runner=beam runs the import as an Apache Beam pipeline (pip install dsvl_jax[beam]; a cluster
  with --beam_options="--runner=DataflowRunner ..."); the same records whatever the runner.
generate --out DIR [--kinds K1,K2] [--n N] [--tokenizer_vocab V]: the embedded synthetic corpus,
  one dataset per kind under DIR/dsvl_<kind>/, plus a SentencePiece tokenizer trained on it.
inspect DIR [--out sheet.png]: a PNG contact sheet of samples from the datasets under DIR.
--holdout F (prepare, generate): also write a held-out split, F of the records, next to each dataset
  (prepare: OUT/heldout/, generate: OUT/dsvl_<kind>/heldout/): a source at path P evaluates on
  P/heldout in the real-size experiment configs.
"""

from __future__ import annotations

import os

from absl import app, flags

from dsvl_jax.cli import command

FLAGS = flags.FLAGS
EXAMPLE = "python -m dsvl_jax.data generate --kinds=chart,ocr --n=100 --out=data/small --tokenizer_vocab=512"
COMMANDS = ("prepare", "generate", "inspect")
USAGE = (
    "usage: data prepare --format F --input PATH --out DIR | data generate --out DIR [--kinds K1,K2] "
    "[--n N] | data inspect DIR [--n 16] [--out sheet.png]"
)


def define_flags() -> None:
    from dsvl_jax.data import importers, records  # light: numpy only

    flags.DEFINE_enum("format", None, list(importers.FORMATS), "prepare: input format.")
    flags.DEFINE_string(
        "input",
        None,
        "prepare: input file, folder (searched recursively) or glob ('shards/*.tar').",
    )
    flags.DEFINE_integer("workers", 1, "prepare: processes importing input files in parallel.")
    flags.DEFINE_enum(
        "runner",
        "local",
        ["local", "beam"],
        "prepare: local processes, or an Apache Beam pipeline.",
    )
    flags.DEFINE_string(
        "beam_options",
        "",
        "prepare --runner=beam: Beam pipeline options as on a command line (default: DirectRunner).",
    )
    flags.DEFINE_string(
        "images",
        None,
        "prepare: root that image paths resolve under (default: the input's folder).",
    )
    flags.DEFINE_string(
        "out",
        None,
        "prepare/generate: output data dir; inspect: PNG path (default DIR/contact_sheet.png).",
    )
    flags.DEFINE_string("report", None, "prepare: write the skip report JSON here.")
    flags.DEFINE_float(
        "max_skip_rate",
        importers.DEFAULT_MAX_SKIP_RATE,
        "prepare: fail if more than this fraction of records is skipped (1 = never).",
    )
    flags.DEFINE_integer(
        "max_pixels", records.DEFAULT_MAX_PIXELS, "prepare: largest image (w*h) accepted."
    )
    flags.DEFINE_integer("dpi", 96, "prepare --format pdf: rendering resolution.")
    flags.DEFINE_enum(
        "kind", None, list(records.KINDS), "prepare: corpus kind to record (default per format)."
    )
    flags.DEFINE_bool("overwrite", False, "prepare/generate: replace an existing dataset in --out.")
    flags.DEFINE_list("kinds", list(records.KINDS), "generate: corpus kinds, comma-separated.")
    flags.DEFINE_integer(
        "n", None, "generate: records per kind (default 1000); inspect: samples (default 16)."
    )
    flags.DEFINE_integer("seed", 0, "generate: corpus seed.")
    flags.DEFINE_integer("image_size", 256, "generate: image side in pixels.")
    flags.DEFINE_integer(
        "tokenizer_vocab",
        0,
        "generate: also train a SentencePiece tokenizer of this size on "
        "the corpus text -> OUT/tokenizer.model (0 = no).",
    )
    flags.DEFINE_float(
        "holdout",
        0.0,
        "prepare/generate: also write this share of records as the dataset's held-out split "
        "(<dataset>/heldout, what the real-size configs evaluate on; prepare draws it by record id, "
        "generate draws new records).",
    )
    flags.DEFINE_bool("progress", True, "Show progress bars (stderr).")


def prepare() -> None:
    if not (FLAGS.format and FLAGS.input and FLAGS.out):
        raise app.UsageError(f"prepare needs --format, --input and --out. {USAGE}")
    if not 0.0 <= FLAGS.max_skip_rate <= 1.0:
        raise app.UsageError(f"--max_skip_rate={FLAGS.max_skip_rate} must be a fraction in [0, 1]")
    if not os.path.exists(FLAGS.input) and not any(c in FLAGS.input for c in "*?["):
        raise app.UsageError(f"--input {FLAGS.input} does not exist")
    if FLAGS.workers < 1:
        raise app.UsageError(f"--workers={FLAGS.workers} must be at least 1")
    from dsvl_jax.data import builders, importers

    counter = importers.SkipCounter(FLAGS.input)
    try:
        res = builders.prepare(
            FLAGS.format,
            FLAGS.input,
            FLAGS.out,
            images=FLAGS.images,
            max_skip_rate=FLAGS.max_skip_rate,
            max_pixels=FLAGS.max_pixels,
            kind=FLAGS.kind,
            dpi=FLAGS.dpi,
            overwrite=FLAGS.overwrite,
            progress=FLAGS.progress,
            counter=counter,
            report_path=FLAGS.report,
            holdout=FLAGS.holdout,
            workers=FLAGS.workers,
            runner=FLAGS.runner,
            beam_options=FLAGS.beam_options,
        )
    except importers.SkipRateExceeded as e:
        where = f" Report: {FLAGS.report}" if FLAGS.report else ""
        raise importers.SkipRateExceeded(f"{e}{where}") from e
    print(
        f"prepared {FLAGS.format} {FLAGS.input}: {counter.summary()} -> {res.dataset_dir} "
        + (
            f"(held out: {res.report['heldout_records']} -> {res.report['heldout_dir']}) "
            if FLAGS.holdout
            else ""
        )
        + f"({res.report['seconds']} s)"
        + (f"; report {FLAGS.report}" if FLAGS.report else "")
    )


def generate() -> None:
    if not FLAGS.out:
        raise app.UsageError(f"generate needs --out. {USAGE}")
    from dsvl_jax.data import builders

    n = 1000 if FLAGS.n is None else FLAGS.n
    dirs = builders.generate_corpus(
        FLAGS.kinds,
        FLAGS.out,
        n=n,
        seed=FLAGS.seed,
        image_size=FLAGS.image_size,
        overwrite=FLAGS.overwrite,
        progress=FLAGS.progress,
        holdout=FLAGS.holdout,
    )
    print(
        f"generated {len(dirs)} corpora x {n} records (seed {FLAGS.seed}, {FLAGS.image_size} px) in {FLAGS.out}: "
        + ", ".join(os.path.relpath(d, FLAGS.out) for d in dirs.values())
        + (
            f"; held-out splits ({max(1, round(n * FLAGS.holdout))} records each) in dsvl_<kind>/heldout"
            if FLAGS.holdout
            else ""
        )
    )
    if FLAGS.tokenizer_vocab:
        path = os.path.join(FLAGS.out, "tokenizer.model")
        tok = builders.train_tokenizer(dirs.values(), FLAGS.tokenizer_vocab, path)
        print(f"trained {path}: vocab {tok.vocab_size}, image token id {tok.image_token_id}")


def inspect(path: str) -> None:
    from dsvl_jax.data import shards
    from dsvl_jax.data.contact_sheet import contact_sheet

    sources = shards.open_sources(path)
    out = FLAGS.out or os.path.join(path, "contact_sheet.png")
    n = contact_sheet(sources, out, n=16 if FLAGS.n is None else FLAGS.n)
    sizes = ", ".join(f"{name}: {len(s)}" for name, s in sources.items())
    print(f"wrote {out}: {n} samples from {len(sources)} dataset(s) ({sizes})")


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        raise app.UsageError(f"expected one of {COMMANDS}, got {argv or 'nothing'}. {USAGE}")
    cmd, args = argv[0], argv[1:]
    command.setup_logging()
    if cmd == "inspect":
        if len(args) != 1:
            raise app.UsageError(f"inspect takes one DIR. {USAGE}")
        inspect(args[0])
    elif args:
        raise app.UsageError(f"{cmd} takes no positional arguments, got {args}. {USAGE}")
    else:
        {"prepare": prepare, "generate": generate}[cmd]()


def entry() -> None:
    command.run("data", main, doc=__doc__, example=EXAMPLE, define_flags=define_flags)
