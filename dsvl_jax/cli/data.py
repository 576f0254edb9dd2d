"""`python -m dsvl_jax.data prepare|generate|inspect`: data you have -> ArrayRecord shards, and a look at them.

  python -m dsvl_jax.data prepare --format llava --input llava.json --images DIR --out OUT
      [--report report.json] [--max_skip_rate 0.1] [--max_pixels N] [--kind caption] [--overwrite]
  python -m dsvl_jax.data generate --kinds chart,ocr --n 1000 --seed 0 --image_size 256 --out OUT
  python -m dsvl_jax.data inspect OUT [--n 16] [--out sheet.png]

`--out` of prepare/generate is a tfds data_dir; the shards land in OUT/dsvl_imported/1.0.0/ and
OUT/dsvl_<kind>/n<N>_seed<S>_px<P>/1.0.0/ (see dsvl_jax/data/shards.py). Bad input records are
skipped and counted (report: written, skipped by reason, skipped ids with reasons); more than
--max_skip_rate of them stops the import with an error naming the input.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from dsvl_jax.cli.common import setup_logging

FLAGS = flags.FLAGS
COMMANDS = ("prepare", "generate", "inspect")
USAGE = ("usage: python -m dsvl_jax.data prepare --format {llava,captions,pdf,text} --input PATH --out DIR | "
         "generate --kinds K1,K2 --n N --out DIR | inspect DIR [--n 16] [--out sheet.png]")


def define_flags() -> None:
    """Defined when the command runs, not at import: other CLI modules define flags with the same names."""
    from dsvl_jax.data import importers, records

    flags.DEFINE_enum("format", None, list(importers.FORMATS), "prepare: input format.")
    flags.DEFINE_string("input", None,
                        "prepare: input file (llava JSON/JSONL, captions/text JSONL) or a PDF folder/file.")
    flags.DEFINE_string("images", None, "prepare: root that image paths resolve under (default: the input's folder).")
    flags.DEFINE_string("out", None, "prepare/generate: output data dir; inspect: PNG path "
                                     "(default DIR/contact_sheet.png).")
    flags.DEFINE_string("report", None, "prepare: write the skip report JSON here.")
    flags.DEFINE_float("max_skip_rate", importers.DEFAULT_MAX_SKIP_RATE,
                       "prepare: fail if more than this fraction of records is skipped (1 = never).")
    flags.DEFINE_integer("max_pixels", records.DEFAULT_MAX_PIXELS, "prepare: largest image (w*h) accepted.")
    flags.DEFINE_integer("dpi", 96, "prepare --format pdf: rendering resolution.")
    flags.DEFINE_enum("kind", None, list(records.KINDS), "prepare: corpus kind to record (default per format).")
    flags.DEFINE_bool("overwrite", False, "prepare/generate: replace an existing dataset in --out.")
    flags.DEFINE_list("kinds", list(records.KINDS), "generate: corpus kinds, comma-separated.")
    flags.DEFINE_integer("n", None, "generate: records per kind (default 1000); inspect: samples (default 16).")
    flags.DEFINE_integer("seed", 0, "generate: corpus seed.")
    flags.DEFINE_integer("image_size", 256, "generate: image side in pixels.")
    flags.DEFINE_integer("tokenizer_vocab", 0, "generate: also train a SentencePiece tokenizer of this size on the "
                                               "corpus text -> OUT/tokenizer.model (0 = no).")
    flags.DEFINE_bool("progress", True, "Show progress bars (stderr).")


def prepare() -> dict:
    from dsvl_jax.data import builders, importers

    if not (FLAGS.format and FLAGS.input and FLAGS.out):
        raise app.UsageError("prepare needs --format, --input and --out. " + USAGE)
    if not 0.0 <= FLAGS.max_skip_rate <= 1.0:
        raise app.UsageError(f"--max_skip_rate={FLAGS.max_skip_rate} must be a fraction in [0, 1]")
    counter = importers.SkipCounter(FLAGS.input)
    try:
        res = builders.prepare(FLAGS.format, FLAGS.input, FLAGS.out, images=FLAGS.images,
                               max_skip_rate=FLAGS.max_skip_rate, max_pixels=FLAGS.max_pixels, kind=FLAGS.kind,
                               dpi=FLAGS.dpi, overwrite=FLAGS.overwrite, progress=FLAGS.progress, counter=counter)
    except importers.SkipRateExceeded as e:
        if FLAGS.report:
            _write_json(FLAGS.report, {"format": FLAGS.format, **counter.report(), "error": str(e)})
        sys.exit(f"prepare failed: {e}" + (f" Report: {FLAGS.report}" if FLAGS.report else ""))
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as e:
        sys.exit(f"prepare failed: {e}")
    if FLAGS.report:
        _write_json(FLAGS.report, res.report)
    print(f"prepared {FLAGS.format} {FLAGS.input}: {counter.summary()} -> {res.dataset_dir} "
          f"({res.report['seconds']} s)" + (f"; report {FLAGS.report}" if FLAGS.report else ""))
    return res.report


def generate() -> dict:
    from dsvl_jax.data import builders

    if not FLAGS.out:
        raise app.UsageError("generate needs --out. " + USAGE)
    n = 1000 if FLAGS.n is None else FLAGS.n
    try:
        dirs = builders.generate_corpus(FLAGS.kinds, FLAGS.out, n=n, seed=FLAGS.seed, image_size=FLAGS.image_size,
                                        overwrite=FLAGS.overwrite, progress=FLAGS.progress)
    except ValueError as e:
        sys.exit(f"generate failed: {e}")
    print(f"generated {len(dirs)} corpora x {n} records (seed {FLAGS.seed}, {FLAGS.image_size} px) in {FLAGS.out}: "
          + ", ".join(os.path.relpath(d, FLAGS.out) for d in dirs.values()))
    if FLAGS.tokenizer_vocab:
        from dsvl_jax.data import shards, tokenizer
        path = os.path.join(FLAGS.out, "tokenizer.model")
        examples = (src[i] for d in dirs.values() for src in [shards.open_source(d)] for i in range(len(src)))
        tokenizer.train_on_examples(examples, FLAGS.tokenizer_vocab, out=path)
        tok = tokenizer.load_tokenizer(path)
        print(f"trained {path}: vocab {tok.vocab_size}, image token id {tok.image_token_id}")
    return dirs


def inspect(path: str) -> str:
    from dsvl_jax.data import shards

    try:
        sources = shards.open_sources(path)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"inspect failed: {e}")
    out = FLAGS.out or os.path.join(path, "contact_sheet.png")
    n = contact_sheet(sources, out, n=16 if FLAGS.n is None else FLAGS.n)
    sizes = ", ".join(f"{name}: {len(s)}" for name, s in sources.items())
    print(f"wrote {out}: {n} samples from {len(sources)} dataset(s) ({sizes})")
    return out


CELL_W, IMG_H, TEXT_H, COLS = 256, 192, 84, 4


def contact_sheet(sources: dict, out: str, n: int = 16) -> int:
    """PNG grid of `n` samples spread over the sources: (first) image or a blank, then kind, id, text start."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    picks = []  # round-robin over sources, evenly spaced within each
    per = -(-n // len(sources))
    lists = [[(name, src, int(i)) for i in np.unique(np.linspace(0, len(src) - 1, min(per, len(src))).round())]
             for name, src in sources.items() if len(src)]
    while len(picks) < n and any(lists):
        for lst in lists:
            if lst and len(picks) < n:
                picks.append(lst.pop(0))
    cols = max(1, min(COLS, len(picks)))
    rows = max(1, -(-len(picks) // cols))
    sheet = Image.new("RGB", (cols * CELL_W, rows * (IMG_H + TEXT_H)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    for k, (name, src, i) in enumerate(picks):
        x, y = (k % cols) * CELL_W, (k // cols) * (IMG_H + TEXT_H)
        ex = src[i]
        draw.rectangle([x, y, x + CELL_W - 1, y + IMG_H - 1], fill=(235, 235, 235))
        if ex.images:
            thumb = _thumbnail(ex.images[0], ex.id)
            if thumb is None:
                draw.text((x + 8, y + IMG_H // 2), "undecodable image", fill="red", font=font)
            else:
                sheet.paste(thumb, (x + (CELL_W - thumb.width) // 2, y + (IMG_H - thumb.height) // 2))
        else:
            draw.text((x + 8, y + IMG_H // 2), "(text only)", fill="gray", font=font)
        lines = [f"{ex.kind} | {ex.id}"[:44]] + _text_lines(ex, 40, 4)
        for j, line in enumerate(lines):
            draw.text((x + 4, y + IMG_H + 2 + 14 * j), line, fill="black" if j else "navy", font=font)
        draw.rectangle([x, y, x + CELL_W - 1, y + IMG_H + TEXT_H - 1], outline=(160, 160, 160))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    sheet.save(out)
    return len(picks)


def _thumbnail(data: bytes, record_id: str):
    from dsvl_jax.data.records import BadRecord, decode_image

    try:
        im = decode_image(data, record_id=record_id)
    except BadRecord:
        return None
    from PIL import ImageOps

    return ImageOps.contain(im, (CELL_W - 8, IMG_H - 8))  # small images are scaled up too


def _text_lines(ex, width: int, max_lines: int) -> list[str]:
    import textwrap

    from dsvl_jax.data.records import IMAGE_TAG

    text = " ".join((m.content if m.role == "text" else f"{m.role}: {m.content}") for m in ex.messages)
    text = " ".join(text.replace(IMAGE_TAG, "[img]").split())
    return textwrap.wrap(text, width)[:max_lines]


def _write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)


def main(argv: list[str]) -> None:
    setup_logging()
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(USAGE)
    cmd, args = argv[1], argv[2:]
    if cmd == "inspect":
        if len(args) != 1:
            raise app.UsageError("inspect takes one DIR. " + USAGE)
        inspect(args[0])
    elif args:
        raise app.UsageError(f"{cmd} takes no positional arguments, got {args}. " + USAGE)
    else:
        {"prepare": prepare, "generate": generate}[cmd]()
    sys.stdout.flush()


def entry() -> None:
    define_flags()
    sys.modules["__main__"].__doc__ = __doc__  # absl shows the main module's docstring for --help and usage errors
    app.run(main)
