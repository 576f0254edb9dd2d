"""Where a run's numbers go: DIR/metrics.jsonl (one JSON object per logged step, the record keys as
the tracker writes them), TensorBoard events in DIR/tensorboard (tensorboardX, no TensorFlow),
optionally Weights & Biases (`log.wandb`), and a tqdm progress bar; process 0 only.

TensorBoard and wandb get the same grouped tags: `TAGS` maps every record key to train/, eval/, data/
or perf/ (the dashboards group cards by the first part). The run config goes in once, on a fresh
TensorBoard folder: flattened as hparams (the HParams dashboard: metrics `HPARAM_METRICS` are the
last values of those scalars, so it shows the final ones) and as a text summary `config`; wandb gets
it as wandb.config. Text values (`TEXT_KEYS`) go to TensorBoard's text tab and wandb, not to
metrics.jsonl: a record holding `eval_answers` (a str, or a list of str or of
{"question", "reference", "answer"} dicts) shows as the table `eval/answers`; the in-run eval
(train/evaluate.py) logs a few of its answers that way.

Resume at step S: metrics.jsonl drops its lines after S first; the TensorBoard writer starts with
purge_step=S+1 (readers hide the earlier events of steps > S: no step shows twice); wandb resumes the
same run (id in DIR/wandb_run_id) and ignores the steps it already has. A loss-spike rollback to step S
(`rewind`) does the same in the middle of a run: the spike's own records stay in DIR/rollbacks.jsonl.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Mapping

from tqdm.auto import tqdm

from dsvl_jax import compat
from dsvl_jax.errors import ConfigError, Error

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
RUN_CONFIG = (
    "config.json"  # = checkpoints.sources.RUN_CONFIG: train/loop.py writes it before the logger
)
WANDB_ID_FILE = "wandb_run_id"
WANDB_MODES = ("online", "offline", "disabled")
TEXT_KEYS = ("eval_answers",)

# record key -> grouped tag, first match wins; a trailing "*" stands for the rest of the key
TAGS = (
    ("loss", "train/loss"),  # token-weighted mean since the previous record
    ("loss_step", "train/loss_step"),  # the last step's alone
    ("loss_tokens", "train/loss_tokens"),
    ("loss/*", "train/loss_source/*"),  # per data source
    ("loss_*", "train/loss_modality/*"),  # loss_text, loss_multimodal
    ("learning_rate", "train/lr"),
    ("grad_norm", "train/grad_norm"),
    ("z_loss", "train/z_loss"),
    ("skipped_steps", "train/skipped_steps"),
    ("rollbacks", "train/rollbacks"),  # loss-spike rollbacks so far (train/spikes.py)
    ("eval_loss/*", "eval/loss_source/*"),
    ("eval_*", "eval/*"),  # loss, accuracy, chance, accuracy_swapped_images, qa_items, answers
    ("row_fill", "data/row_fill"),
    ("image_slot_fill", "data/image_slot_fill"),
    ("data_wait_fraction", "data/wait_fraction"),
    ("samples_*", "data/samples_*"),  # seen, used, dropped, split
    ("text_chunked", "data/text_chunked"),
    ("text_chunks", "data/text_chunks"),
    ("step_s", "perf/step_s"),
    ("tokens_per_s", "perf/tokens_per_s"),
    ("text_tokens_per_s", "perf/text_tokens_per_s"),
    ("image_tokens_per_s", "perf/image_tokens_per_s"),
    ("mfu", "perf/mfu"),
)
OTHER = "other/"  # a key no row matches (add a row)
HPARAM_METRICS = (
    "train/loss",
    "eval/loss",
    "eval/accuracy",
    "eval/accuracy_swapped_images",
    "perf/tokens_per_s",
    "perf/mfu",
)


ABANDON_FLUSH_S = 5.0
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class LogWriteError(Error, OSError):
    """The run's records cannot be written (disk full, quota, I/O error): one line naming the file."""


def write_error(path: str, e: OSError) -> LogWriteError:
    cause = "the disk is full" if e.errno in DISK_FULL else f"{type(e).__name__}: {e.strerror or e}"
    return LogWriteError(
        f"{path}: cannot write the run's records: {cause}. Free space (or move the workdir) and "
        "rerun the command: it resumes from the latest saved checkpoint"
    )


def tag(key: str) -> str:
    """The grouped TensorBoard / wandb tag of a record key (see TAGS)."""
    for pattern, out in TAGS:
        if pattern.endswith("*"):
            if key.startswith(pattern[:-1]) and len(key) > len(pattern) - 1:
                return out[:-1] + key[len(pattern) - 1 :]
        elif key == pattern:
            return out
    return OTHER + key


def flatten_config(cfg: Mapping, prefix: str = "") -> dict:
    """Nested config -> {"train.lr": 0.001, ...}; values TensorBoard's hparams take (number, bool,
    str), sequences and None as their JSON text."""
    out = {}
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_config(v, name + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[name] = v
        else:
            out[name] = json.dumps(v, default=str)
    return out


def truncate_after(path: str, step: int) -> None:
    """Keep only the records with record['step'] <= step (records without a step are kept)."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill -9
                continue
            if rec.get("step", -1) <= step:
                keep.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def answer_table(value) -> tuple[list[str], list[list[str]]]:
    """Eval answers (a list of str or of {"question", "reference", "answer"} dicts) -> columns, rows."""
    rows = [a if isinstance(a, Mapping) else {"answer": a} for a in value]
    cols = [c for c in ("question", "reference", "answer") if any(c in r for r in rows)]
    return cols, [[str(r.get(c, "")) for c in cols] for r in rows]


def markdown_table(cols: list[str], rows: list[list]) -> str:
    """A markdown table (TensorBoard's text tab renders it)."""
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows])


class MetricsLogger:
    """Process 0's writer of the run's records (`enabled=False` elsewhere: every call is a no-op).

    `config`: the run config (a nested dict or ConfigDict); None reads DIR/config.json. Its `log.wandb`
    and `log.wandb_mode` switch wandb on."""

    def __init__(
        self,
        workdir: str,
        *,
        total_steps: int,
        start_step: int,
        enabled: bool = True,
        tensorboard: bool = True,
        progress: bool = True,
        config: Mapping | None = None,
    ):
        self.enabled = enabled
        self.workdir = workdir
        self.path = os.path.join(workdir, METRICS_FILE)
        self._start = start_step
        self._tb_files = 0  # event files this process opened (one more after each rewind)
        self._tb = self._bar = self._wandb = None
        self._tb_dir = os.path.join(workdir, TENSORBOARD_DIR) if tensorboard else ""
        if not enabled:
            return
        self._config = _as_dict(config) if config is not None else _read_config(workdir)
        log_cfg = self._config.get("log", {})
        if log_cfg.get("wandb"):
            self._wandb = _open_wandb(
                workdir, log_cfg["wandb"], log_cfg.get("wandb_mode", "online"), self._config
            )
        try:
            truncate_after(self.path, start_step)
            self._f = open(self.path, "a")  # noqa: SIM115 - kept open for the run, closed in close()
        except OSError as e:
            raise write_error(self.path, e) from None
        if progress:
            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                unit="step",
                dynamic_ncols=True,
                mininterval=1.0,
            )

    def write(self, record: dict) -> None:
        """One record: {"step": int, name: number, ...}; non-finite numbers are written as strings to
        metrics.jsonl; TEXT_KEYS values go to TensorBoard / wandb only."""
        if not self.enabled:
            return
        step = int(record["step"])
        clean = {
            k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
            for k, v in record.items()
            if k not in TEXT_KEYS
        }
        try:
            self._f.write(json.dumps(clean) + "\n")
            self._f.flush()
        except OSError as e:
            raise self._abandon(self.path, e) from None
        scalars = {
            tag(k): float(v)
            for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        texts = {tag(k): record[k] for k in TEXT_KEYS if record.get(k)}
        if self._tb_dir:
            try:
                tb = self._writer()
                for t, v in scalars.items():
                    tb.add_scalar(t, v, step)
                for t, v in texts.items():
                    tb.add_text(
                        t, v if isinstance(v, str) else markdown_table(*answer_table(v)), step
                    )
            except OSError as e:
                raise self._abandon(self._tb_dir, e) from None
        if self._wandb is not None:
            self._wandb.log({**scalars, **self._wandb_texts(texts)}, step=step)

    def _writer(self):
        """The TensorBoard writer, opened at the first record (a resumed run with nothing left to do
        adds no file). Event files already there: purge their steps after the start step; none: the
        config goes in first."""
        if self._tb is None:
            from tensorboardX import SummaryWriter

            fresh = not (
                os.path.isdir(self._tb_dir)
                and any("tfevents" in f for f in os.listdir(self._tb_dir))
            )
            self._tb = SummaryWriter(
                self._tb_dir,
                purge_step=None if fresh else self._start + 1,
                flush_secs=30,
                # names sort by creation second, then this: a resume's file reads after the old one
                filename_suffix=f".{self._start:010d}.{os.getpid()}.{self._tb_files}",
            )
            self._tb_files += 1
            if fresh and self._config:
                flat = flatten_config(self._config)
                compat.tensorboardx_hparams(self._tb, flat, list(HPARAM_METRICS), self._start)
                table = markdown_table(["field", "value"], list(flat.items()))
                self._tb.add_text("config", table, self._start)
        return self._tb

    def rewind(self, step: int) -> None:
        """The run went back to `step` (a loss-spike rollback): records after it are dropped from
        metrics.jsonl and, through a new event file with purge_step=step+1, hidden in TensorBoard."""
        if not self.enabled:
            return
        try:
            self._f.close()
            truncate_after(self.path, step)
            self._f = open(self.path, "a")  # noqa: SIM115 - closed in close()
            if self._tb is not None:
                self._tb.close()
        except OSError as e:
            raise self._abandon(self.path, e) from None
        self._tb, self._start = None, step
        if self._bar is not None:
            self._bar.n = step

    def _wandb_texts(self, texts: dict) -> dict:
        import wandb

        out = {}
        for t, v in texts.items():
            if isinstance(v, str):
                out[t] = wandb.Html(f"<pre>{v}</pre>")
                continue
            cols, rows = answer_table(v)
            out[t] = wandb.Table(columns=cols, data=rows)
        return out

    def progress(self, step: int, **postfix) -> None:
        if self._bar is not None:
            try:
                self._bar.n = step
                self._bar.set_postfix(
                    {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                    refresh=False,
                )
                self._bar.refresh()
            except OSError:  # stderr is a full disk or a closed pipe: the run goes on without a bar
                self._bar.disable = True
                self._bar = None

    def _abandon(self, path: str, e: OSError) -> LogWriteError:
        """After a failed write: stop logging (later calls are no-ops, close() has nothing left to
        flush) and return the error to raise. The TensorBoard writer is dropped, not closed: its
        close() would flush to the same full disk, and waits on a writer thread that may have died of
        it (a flush is tried for at most ABANDON_FLUSH_S). The loop's own error handling (checkpoint
        saves) runs on unhindered."""
        self.enabled = False
        with contextlib.suppress(OSError):
            self._f.close()
        if self._tb is not None:  # what it still queues, if the disk takes it (a bounded wait)
            flush = threading.Thread(target=self._tb.flush, name="tensorboard-flush", daemon=True)
            flush.start()
            flush.join(timeout=ABANDON_FLUSH_S)
        self._tb = None
        if self._bar is not None:
            self._bar.disable = True
            self._bar = None
        return write_error(path, e)

    def close(self) -> None:
        """Flush and close everything; never raises (it runs in the loop's `finally`, where an error
        would hide the one that ended the run): a failure to flush is logged as a warning."""
        if not self.enabled:
            return
        self.enabled = False
        for what, closer in (
            (self.path, self._f.close),
            (self._tb_dir, self._tb.close if self._tb is not None else None),
            ("wandb", self._wandb.finish if self._wandb is not None else None),
            ("progress bar", self._bar.close if self._bar is not None else None),
        ):
            if closer is None:
                continue
            try:
                closer()
            except OSError as e:
                log.warning("%s", write_error(what, e))


def _as_dict(config: Mapping) -> dict:
    to_dict = getattr(config, "to_dict", None)  # ml_collections.ConfigDict
    return to_dict() if callable(to_dict) else dict(config)


def _read_config(workdir: str) -> dict:
    path = os.path.join(workdir, RUN_CONFIG)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _open_wandb(workdir: str, project: str, mode: str, config: dict):
    """A wandb run for this workdir: the same run id across resumes (DIR/wandb_run_id)."""
    if mode not in WANDB_MODES:
        raise ConfigError(f"log.wandb_mode={mode!r}: one of {', '.join(WANDB_MODES)}")
    try:
        import wandb
    except ImportError as e:
        raise ConfigError(
            f"log.wandb={project!r} needs the wandb package: pip install -e '.[wandb]' "
            "(or --config.log.wandb= to log without it)"
        ) from e
    id_path = os.path.join(workdir, WANDB_ID_FILE)
    if os.path.isfile(id_path):
        with open(id_path) as f:
            run_id = f.read().strip()
    else:
        run_id = uuid.uuid4().hex[:12]
        os.makedirs(workdir, exist_ok=True)
        with open(id_path, "w") as f:
            f.write(run_id + "\n")
    parts = os.path.normpath(os.path.abspath(workdir)).split(os.sep)
    return wandb.init(
        project=project,
        mode=mode,
        dir=workdir,
        id=run_id,
        resume="allow",
        name="/".join(parts[-2:]),
        config=config,
    )
