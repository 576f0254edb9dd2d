"""Where a run's numbers go: DIR/metrics.jsonl (one JSON object per logged step), TensorBoard event
files (written with tensorboard's own protos, no TensorFlow), and a tqdm progress bar on process 0.

On resume the lines of steps after the restored checkpoint are dropped first, so metrics.jsonl
reads like one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os

from tqdm.auto import tqdm

from dsvl_jax import compat

METRICS_FILE = "metrics.jsonl"


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


class MetricsLogger:
    def __init__(
        self,
        workdir: str,
        *,
        total_steps: int,
        start_step: int,
        enabled: bool = True,
        tensorboard: bool = True,
        progress: bool = True,
    ):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb = self._bar = None
        if not enabled:
            return
        truncate_after(self.path, start_step)
        self._f = open(self.path, "a")  # noqa: SIM115 - kept open for the run, closed in close()
        if tensorboard:
            self._tb = compat.TensorboardWriter(os.path.join(workdir, "tensorboard"))
        if progress:
            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                unit="step",
                dynamic_ncols=True,
                mininterval=1.0,
            )

    def write(self, record: dict) -> None:
        """One record: {"step": int, name: number, ...}; non-finite numbers are written as strings."""
        if not self.enabled:
            return
        clean = {
            k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
            for k, v in record.items()
        }
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()
        if self._tb is not None:
            self._tb.scalars(
                record["step"],
                {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))},
            )

    def progress(self, step: int, **postfix) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(
                {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                refresh=False,
            )
            self._bar.refresh()

    def close(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        self._f.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()
