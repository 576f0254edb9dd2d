"""`data prepare` on many cores (`--workers N`) or on a cluster (`--runner beam`).

The unit of work is one input file (real corpora ship as many shards). Both runners do exactly what
the sequential import does per file (`importers.import_file`) and keep input order, so the prepared
source holds the same records (ids, bytes, order) whatever the runner:

  local  N worker processes (spawned: no inherited JAX / thread state); at most 2N files in flight,
         results consumed in input order; each file's skip report merged into the run's SkipCounter,
         whose cap is checked as the files come in.
  beam   TFDS's Beam support: Create(files) | FlatMap(import one file) -> (key, features), keys
         file index * 1e9 + record index (TFDS sorts by key when shuffling is off), so any runner
         (DirectRunner here; Dataflow / Flink / Spark with --beam_options) writes the same shards.
         Each file's skip report is written by its worker next to the output (`.import_reports/`,
         a shared filesystem or bucket as the output must be) and merged by the driver afterwards,
         which then applies the skip-rate cap.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import multiprocessing
from collections.abc import Iterator

from dsvl_jax.data import records
from dsvl_jax.data.import_common import ImportContext, SkipCounter, is_heldout
from dsvl_jax.data.importers import import_file
from dsvl_jax.data.inputs import Inputs

RUNNERS = ("local", "beam")
REPORTS_DIR = ".import_reports"
UNIT_STRIDE = (
    10**9
)  # Beam keys: file index * stride + record index (integers: TFDS buckets by value)


def keep(record_id: str, holdout: float, heldout: bool) -> bool:
    """The holdout filter of a split: every record when holdout is 0, else its side of the draw."""
    return not holdout or is_heldout(record_id, holdout) == heldout


def import_unit(
    fmt: str, file: str, name: str, ctx: ImportContext
) -> tuple[list[records.Example], dict]:
    """One input file -> (its good Examples, its skip report). Runs in a worker process."""
    counter = SkipCounter(name, max_skip_rate=None)
    return list(import_file(fmt, file, name, ctx, counter, final_check=False)), counter.report()


def local_examples(
    fmt: str, inputs: Inputs, ctx: ImportContext, counter: SkipCounter, workers: int
) -> Iterator[records.Example]:
    """The Examples of every input file, imported by `workers` processes, in input order."""
    files = list(inputs.files)
    mp = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp) as pool:
        pending: collections.deque = collections.deque()
        nxt = 0
        while nxt < len(files) or pending:
            while nxt < len(files) and len(pending) < 2 * workers:
                f = files[nxt]
                pending.append(pool.submit(import_unit, fmt, f, inputs.name(f), ctx))
                nxt += 1
            examples, report = pending.popleft().result()
            counter.merge(report)
            yield from examples
    counter.check()


def beam_examples(
    fmt: str,
    inputs: Inputs,
    ctx: ImportContext,
    report_dir: str,
    holdout: float = 0.0,
    heldout: bool = False,
):
    """The Beam PTransform TFDS runs: input files -> (key, features) of the kept Examples."""
    import apache_beam as beam

    units = [(i, f, inputs.name(f)) for i, f in enumerate(inputs.files)]

    def run(unit):
        from etils import epath

        i, file, name = unit
        examples, report = import_unit(fmt, file, name, ctx)
        out = epath.Path(report_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{i:08d}.json").write_text(json.dumps(report, ensure_ascii=False))
        for j, ex in enumerate(examples):
            if keep(ex.id, holdout, heldout):
                yield i * UNIT_STRIDE + j, records.to_features(records.validate(ex))

    return "ImportFiles" >> beam.Create(units) | "ImportFile" >> beam.FlatMap(run)


def merge_reports(report_dir: str, n_units: int, counter: SkipCounter) -> None:
    """The per-file reports a Beam run left, merged in input order; a missing one is an error."""
    from etils import epath

    d = epath.Path(report_dir)
    for i in range(n_units):
        f = d / f"{i:08d}.json"
        if not f.exists():
            raise RuntimeError(f"{f}: the Beam run left no report for input file {i}")
        counter.merge(json.loads(f.read_text()))
    counter.check()


def beam_download_config(beam_options: str):
    """TFDS DownloadConfig with Beam pipeline options parsed from a command-line string."""
    import shlex

    import tensorflow_datasets as tfds
    from apache_beam.options.pipeline_options import PipelineOptions

    return tfds.download.DownloadConfig(
        beam_options=PipelineOptions(flags=shlex.split(beam_options or ""))
    )
