"""tfds builders that write `records.Example`s as ArrayRecord shards (no TensorFlow needed).

  DsvlScreenshot ... DsvlText   one builder per corpus kind ("dsvl_<kind>"): the embedded synthetic
                                corpus, config `CorpusConfig(n, seed, image_size)`
  DsvlImported                  ("dsvl_imported"): the Examples of an importer (importers.py)

Layout under a data_dir (`--out`): `<name>[/<config>]/1.0.0/<name>-train.array_record-NNNNN-of-MMMMM`
plus dataset_info.json / features.json / metadata.json (the import report lives in metadata.json).
Read back with `shards.open_source`. Shuffling at write time is off: records keep input order,
and grain shuffles at read time anyway. Classes register once, at import, under distinct names;
each instance writes only under its own `data_dir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence

import tensorflow_datasets as tfds
from tqdm import tqdm

from dsvl_jax import compat
from dsvl_jax.data import prepare_parallel, records, shards, tokenizer
from dsvl_jax.data.corpus import generate
from dsvl_jax.data.import_common import is_heldout  # noqa: F401 - builders.is_heldout is public
from dsvl_jax.data.importers import (
    DEFAULT_MAX_SKIP_RATE,
    SkipCounter,
    SkipRateExceeded,
    import_file,
    plan,
)
from dsvl_jax.errors import ConfigError

log = logging.getLogger(__name__)
SPLIT = "train"
MAX_REPORT_IDS_IN_METADATA = 1000


class ShardBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base: the shared features, ArrayRecord output, one "train" split, our own progress bar."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}  # noqa: RUF012 - tfds reads these class attributes

    def __init__(self, *, progress: bool = False, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        self._progress = progress
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self._description(),
            features=records.features(),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        return {SPLIT: self._generate_examples()}

    def _description(self) -> str:
        return ""

    def _examples(self) -> Iterable[records.Example]:
        raise NotImplementedError

    def _total(self) -> int | None:
        return None

    def _postfix(self) -> str:
        return ""

    def _generate_examples(self) -> Iterator[tuple[int, dict]]:
        bar = tqdm(
            self._examples(),
            total=self._total(),
            desc=self.name,
            unit=" rec",
            disable=not self._progress,
            mininterval=0.5,
            dynamic_ncols=True,
        )
        for i, ex in enumerate(bar):
            if self._progress and (post := self._postfix()) != bar.postfix:
                bar.set_postfix_str(post, refresh=False)
            yield i, records.to_features(records.validate(ex))

    # tfds prints these on stdout; our CLIs keep stdout for their one-line summaries.
    def _log_download_bytes(self) -> None:
        log.info("preparing %s in %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        log.info("%s prepared in %s", self.name, self.data_dir)

    def build(self, overwrite: bool = False, download_config=None) -> str:
        """Write the shards (or reuse a complete earlier run unless `overwrite`); returns the dataset dir.
        `download_config`: TFDS's, e.g. Beam pipeline options (prepare_parallel.beam_download_config)."""
        if os.path.isdir(self.data_dir):
            if not overwrite:
                log.info(
                    "reusing %s (same builder and config); overwrite=True rebuilds it",
                    self.data_dir,
                )
                return self.data_dir
            shutil.rmtree(self.data_dir)
        with _quiet_tfds(), tempfile.TemporaryDirectory(prefix="dsvl_dl_") as dl:
            self.download_and_prepare(download_dir=dl, download_config=download_config)
        return self.data_dir


@contextlib.contextmanager
def _quiet_tfds():
    """Our tqdm replaces tfds's bars; 'custom data configuration' warnings are expected here."""
    was, absl_log = compat.tfds_progress_bar_state(), logging.getLogger("absl")
    level = absl_log.level
    tfds.display_progress_bar(False)
    absl_log.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        tfds.display_progress_bar(was)
        absl_log.setLevel(level)


# --- the embedded default corpus ---------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class CorpusConfig(tfds.core.BuilderConfig):
    n: int = 1000
    seed: int = 0
    image_size: int = 256


def corpus_config(n: int, seed: int = 0, image_size: int = 256) -> CorpusConfig:
    """The config dir name spells its parameters, so different corpora never share a directory."""
    return CorpusConfig(
        name=f"n{n}_seed{seed}_px{image_size}", n=n, seed=seed, image_size=image_size
    )


class CorpusBuilder(ShardBuilder, skip_registration=True):
    KIND = ""
    BUILDER_CONFIGS = [corpus_config(1000)]  # noqa: RUF012 - tfds reads these class attributes

    def _description(self) -> str:
        return f"Embedded synthetic '{self.KIND}' corpus (dsvl_jax.data.corpus), {self.builder_config.name}."

    def _total(self) -> int:
        return self.builder_config.n

    def _examples(self) -> Iterable[records.Example]:
        c = self.builder_config
        return generate(self.KIND, c.n, c.seed, image_size=c.image_size)


class DsvlScreenshot(CorpusBuilder):
    KIND = "screenshot"


class DsvlPdf(CorpusBuilder):
    KIND = "pdf"


class DsvlOcr(CorpusBuilder):
    KIND = "ocr"


class DsvlChart(CorpusBuilder):
    KIND = "chart"


class DsvlInterleaved(CorpusBuilder):
    KIND = "interleaved"


class DsvlCaption(CorpusBuilder):
    KIND = "caption"


class DsvlText(CorpusBuilder):
    KIND = "text"


CORPUS_BUILDERS: dict[str, type[CorpusBuilder]] = {
    c.KIND: c
    for c in (DsvlScreenshot, DsvlPdf, DsvlOcr, DsvlChart, DsvlInterleaved, DsvlCaption, DsvlText)
}
assert tuple(CORPUS_BUILDERS) == records.KINDS, "one corpus builder per records.KINDS entry"


def generate_corpus(
    kinds: Sequence[str],
    data_dir: str,
    *,
    n: int,
    seed: int = 0,
    image_size: int = 256,
    overwrite: bool = False,
    progress: bool = False,
    holdout: float = 0.0,
) -> dict[str, str]:
    """Write the embedded corpus, one dataset per kind; returns {kind: dataset dir}. `holdout` > 0 also
    writes round(n * holdout) (at least 1) other records of each kind (seed + 1), the kind's held-out
    split, under data_dir/dsvl_<kind>/heldout."""
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(f"holdout={holdout}: a share in [0, 1)")
    for kind in kinds if holdout else ():
        generate_corpus(
            (kind,),
            os.path.join(data_dir, f"dsvl_{kind}", shards.HELDOUT),
            n=max(1, round(n * holdout)),
            seed=seed + 1,
            image_size=image_size,
            overwrite=overwrite,
            progress=progress,
        )
    bad = [k for k in kinds if k not in CORPUS_BUILDERS]
    if bad:
        raise ConfigError(f"unknown corpus kinds {bad}; one of {records.KINDS}")
    if n < 1:
        raise ConfigError(f"corpus n={n} must be >= 1 records per kind")
    out = {}
    for kind in kinds:
        with _quiet_tfds():
            b = CORPUS_BUILDERS[kind](
                data_dir=data_dir, config=corpus_config(n, seed, image_size), progress=progress
            )
        out[kind] = b.build(overwrite=overwrite)
    return out


def train_tokenizer(dataset_dirs: Iterable[str], vocab_size: int, out: str) -> tokenizer.Tokenizer:
    """A SentencePiece tokenizer of `vocab_size` trained on the text of prepared datasets -> `out`."""
    tokenizer.train_on_examples(shards.iter_examples(dataset_dirs), vocab_size, out=out)
    return tokenizer.load_tokenizer(out)


# --- imported data -----------------------------------------------------------------------------


class DsvlImported(ShardBuilder):
    """The Examples of one importer run; `self.counter` holds the skip report afterwards.

    runner "local" with workers > 1 imports input files in worker processes, runner "beam" through
    TFDS's Beam support (data/prepare_parallel.py); the records are the same either way.
    """

    def _description(self) -> str:
        return "Examples imported by `python -m dsvl_jax.data prepare` (metadata.json holds the skip report)."

    def __init__(
        self,
        *,
        fmt: str | None = None,
        input_path: str | None = None,
        counter: SkipCounter | None = None,
        import_kwargs: dict | None = None,
        holdout: float = 0.0,
        heldout: bool = False,
        workers: int = 1,
        runner: str = "local",
        **kwargs,
    ):
        self.fmt, self.input_path, self.import_kwargs = fmt, input_path, dict(import_kwargs or {})
        # holdout > 0: keep only the records `is_heldout` puts on this side (heldout or not)
        self.holdout, self.heldout = holdout, heldout
        self.workers, self.runner = workers, runner
        self.counter = counter or SkipCounter(str(input_path))
        super().__init__(**kwargs)

    def _postfix(self) -> str:
        return f"skipped={self.counter.num_skipped}" if self.counter.num_skipped else ""

    def _plan(self):
        if self.fmt is None or self.input_path is None:
            raise ValueError(
                "DsvlImported needs fmt= and input_path= to prepare (reading needs neither)"
            )
        return plan(self.fmt, self.input_path, **self.import_kwargs)

    def _examples(self) -> Iterator[records.Example]:
        inputs, ctx = self._plan()
        if self.workers > 1:
            every = prepare_parallel.local_examples(
                self.fmt, inputs, ctx, self.counter, self.workers
            )
        else:
            every = self._sequential(inputs, ctx)
        for ex in every:
            if prepare_parallel.keep(ex.id, self.holdout, self.heldout):
                yield ex
        self._record_report()

    def _sequential(self, inputs, ctx) -> Iterator[records.Example]:
        for f in inputs.files:
            yield from import_file(self.fmt, f, inputs.name(f), ctx, self.counter, False)
        self.counter.check()

    def _record_report(self) -> None:
        rep = self.counter.report()
        rep["skipped_ids"] = rep["skipped_ids"][:MAX_REPORT_IDS_IN_METADATA]
        self.info.metadata.update({"format": self.fmt, "import_report": rep})

    # --- Beam ---
    def _reports_dir(self) -> str:
        return os.path.join(os.path.dirname(self.data_dir), prepare_parallel.REPORTS_DIR, self.name)

    def _generate_examples(self):
        if self.runner != "beam":
            return super()._generate_examples()
        inputs, ctx = self._plan()
        self._units = len(inputs.files)
        return prepare_parallel.beam_examples(
            self.fmt, inputs, ctx, self._reports_dir(), self.holdout, self.heldout
        )

    def _download_and_prepare(self, *args, **kwargs):
        if self.runner != "beam":
            return super()._download_and_prepare(*args, **kwargs)
        shutil.rmtree(self._reports_dir(), ignore_errors=True)
        out = super()._download_and_prepare(*args, **kwargs)  # runs the pipeline
        try:
            prepare_parallel.merge_reports(self._reports_dir(), self._units, self.counter)
        finally:
            shutil.rmtree(os.path.dirname(self._reports_dir()), ignore_errors=True)
        self._record_report()
        return out


class DatasetExists(FileExistsError, ConfigError):
    """`prepare` would overwrite a prepared dataset (an import's input is not part of its name)."""


@dataclasses.dataclass(frozen=True)
class PrepareResult:
    dataset_dir: str
    report: dict  # SkipCounter.report() plus "format", "dataset_dir", "seconds"


def prepare(
    fmt: str,
    input_path: str,
    data_dir: str,
    *,
    images: str | None = None,
    max_skip_rate: float | None = DEFAULT_MAX_SKIP_RATE,
    max_pixels: int = records.DEFAULT_MAX_PIXELS,
    kind: str | None = None,
    dpi: int = 96,
    min_seen: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    counter: SkipCounter | None = None,
    report_path: str | None = None,
    holdout: float = 0.0,
    workers: int = 1,
    runner: str = "local",
    beam_options: str = "",
) -> PrepareResult:
    """Import `input_path` (format `fmt`) into ArrayRecord shards under `data_dir`.

    `workers` > 1 imports the input files in that many processes; `runner="beam"` runs the import as
    an Apache Beam pipeline (`beam_options`: its command-line options, e.g. "--runner=DataflowRunner
    --project=P ..."; none = the in-process DirectRunner). Same records whatever the runner.
    `holdout` > 0 sends that share of the records (drawn by id, `is_heldout`) to
    `data_dir/heldout/` instead, the split real-size configs evaluate on (the input is read twice).

    Refuses to reuse an existing dataset unless `overwrite` (an import's input is not part of its
    name). Raises `importers.SkipRateExceeded` when too many records are bad; then nothing is kept
    and `counter` (if given) holds the tally. `report_path` receives the report JSON (written, skipped by
    reason, skipped ids) either way.
    """
    counter = counter or SkipCounter(input_path, max_skip_rate)
    counter.max_skip_rate = max_skip_rate
    if min_seen is not None:
        counter.min_seen = min_seen
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(f"holdout={holdout}: a share in [0, 1)")
    if runner not in prepare_parallel.RUNNERS:
        raise ConfigError(f"runner={runner!r}: one of {prepare_parallel.RUNNERS}")
    if workers < 1:
        raise ConfigError(f"workers={workers}: at least 1")
    dl_config = prepare_parallel.beam_download_config(beam_options) if runner == "beam" else None
    par = dict(workers=workers, runner=runner)
    t0 = time.time()
    kw = dict(images=images, max_pixels=max_pixels, kind=kind, dpi=dpi)
    b = DsvlImported(
        data_dir=data_dir,
        fmt=fmt,
        input_path=input_path,
        counter=counter,
        progress=progress,
        import_kwargs=kw,
        holdout=holdout,
        **par,
    )
    if os.path.exists(b.data_dir) and not overwrite:
        raise DatasetExists(
            f"{b.data_dir} already holds a prepared dataset; pass --overwrite to replace it "
            "or choose another --out"
        )
    try:
        d = b.build(overwrite=overwrite, download_config=dl_config)
    except SkipRateExceeded as e:
        if report_path:
            _write_json(report_path, {"format": fmt, **counter.report(), "error": str(e)})
        raise
    report = {"format": fmt, "dataset_dir": d, **counter.report()}
    if holdout:
        held = DsvlImported(
            data_dir=os.path.join(data_dir, shards.HELDOUT),
            fmt=fmt,
            input_path=input_path,
            counter=SkipCounter(input_path, 1.0),  # the skips were counted by the first pass
            progress=progress,
            import_kwargs=kw,
            holdout=holdout,
            heldout=True,
            **par,
        )
        report["heldout_dir"] = held.build(overwrite=overwrite, download_config=dl_config)
        report["heldout_records"] = len(shards.open_source(report["heldout_dir"]))
    report["seconds"] = round(time.time() - t0, 2)
    if report_path:
        _write_json(report_path, report)
    return PrepareResult(d, report)


def _write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
