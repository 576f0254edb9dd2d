"""What a run logs, read back the way users read it: TensorBoard event files through tensorboard's own
reader (grouped tags, the config as hparams + text, eval answers, no step twice after a resume),
wandb (a fake module, and offline when wandb is installed), and `plot` over a folder of nested runs."""

import glob
import json
import os
import sys
import types

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import plugin_data_pb2

from dsvl_jax.checkpoints.sources import RUN_CONFIG
from dsvl_jax.errors import ConfigError
from dsvl_jax.train import logger as L
from dsvl_jax.train.plots import plot, run_dirs
from dsvl_jax.train.tracker import BatchCounts, StepTracker

CONFIG = {
    "train": {"lr": 1e-3, "steps": 6, "trainable": ["adaptor"]},
    "log": {"every_steps": 1, "wandb": "", "wandb_mode": "offline"},
    "init_from": "",
}
ANSWERS = [
    {"question": "What is the tallest bar?", "reference": "B", "answer": "B"},
    {"question": "How many bars?", "reference": "4", "answer": "5"},
]


def _train_record(step: int, loss: float) -> dict:
    return {
        "step": step,
        "loss": loss,
        "loss_step": loss + 0.5,
        "loss_text": loss - 0.1,
        "loss/chart": loss + 0.1,
        "learning_rate": 1e-3 * step,
        "grad_norm": 2.0,
        "step_s": 0.25,
        "tokens_per_s": 1000.0,
        "mfu": float("nan"),
        "data_wait_fraction": 0.1,
        "row_fill": 0.75,
        "samples_seen": 8 * step,
        "samples_dropped": 1,
    }


def _logger(workdir, start=0, config=CONFIG):
    return L.MetricsLogger(
        str(workdir), total_steps=6, start_step=start, progress=False, config=config
    )


def _events(workdir) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(
        os.path.join(str(workdir), L.TENSORBOARD_DIR), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0}
    )
    acc.Reload()
    return acc


def _scalars(acc, tag) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _text(acc, tag) -> list[str]:
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag + "/text_summary")]


def test_every_record_key_has_a_group():
    """The keys the tracker and the in-run eval write land in train/, eval/, data/ or perf/."""

    class Capture:
        def __init__(self):
            self.records = []

        def write(self, rec):
            self.records.append(rec)

        def progress(self, *a, **k):
            pass

    stats = {"s": dict(seen=1, used=1, split=0, chunked=0, chunks=0, skipped={"bad": 1}, tokens=3)}
    capture = Capture()
    tr = StepTracker(
        capture,
        log_every=1,
        max_bad_steps=3,
        flops_per_step=1.0,
        peak_flops=1.0,
        sources=[("text", "text"), ("chart", "multimodal")],
        data_stats=lambda: stats,
    )
    m = {
        "loss": np.float32(2),
        "z_loss": np.float32(0),
        "grad_norm": np.float32(1),
        "tokens": np.float32(10),
        "learning_rate": np.float32(1e-3),
        "skipped": np.int32(0),
        "source_ce": np.array([10.0, 10.0], np.float32),
        "source_tokens": np.array([5.0, 5.0], np.float32),
    }
    tr.dispatched(1, m, 0.0, BatchCounts(10, 6, 0.5, 0.5))
    tr.settle(force=True)
    evals = ["eval_loss", "eval_loss/chart", "eval_accuracy", "eval_chance"]
    evals += ["eval_accuracy_swapped_images", "eval_qa_items", *L.TEXT_KEYS]
    keys = [k for k in capture.records[0] if k != "step"] + evals
    groups = {k: L.tag(k).split("/")[0] for k in keys}
    assert {k for k, g in groups.items() if g not in ("train", "eval", "data", "perf")} == set()
    assert L.tag("loss") == "train/loss" and L.tag("learning_rate") == "train/lr"
    assert L.tag("loss/chart") == "train/loss_source/chart"
    assert L.tag("loss_multimodal") == "train/loss_modality/multimodal"
    assert L.tag("loss_tokens") == "train/loss_tokens"
    assert L.tag("eval_loss/chart") == "eval/loss_source/chart"
    assert L.tag("data_wait_fraction") == "data/wait_fraction" and L.tag("mfu") == "perf/mfu"
    assert L.tag("eval_answers") == "eval/answers" and L.tag("new_thing") == "other/new_thing"
    assert L.RUN_CONFIG == RUN_CONFIG  # the file train/loop.py writes before the logger starts


def test_tensorboard_grouped_scalars_config_and_answers(tmp_path):
    lg = _logger(tmp_path)
    for s in (1, 2, 3):
        lg.write(_train_record(s, 3.0 - s))
    lg.write({"step": 3, "eval_loss": 1.5, "eval_accuracy": 0.5, "eval_answers": ANSWERS})
    lg.close()
    acc = _events(tmp_path)
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_step", "train/lr", "train/grad_norm"} <= tags
    assert {"train/loss_modality/text", "train/loss_source/chart"} <= tags
    assert {
        "data/row_fill",
        "data/samples_seen",
        "data/samples_dropped",
        "data/wait_fraction",
    } <= tags
    assert {"perf/step_s", "perf/tokens_per_s", "perf/mfu", "eval/loss", "eval/accuracy"} <= tags
    assert not any(t.startswith("other/") for t in tags)
    assert _scalars(acc, "train/loss") == [(1, 2.0), (2, 1.0), (3, 0.0)]
    assert _scalars(acc, "data/samples_seen") == [(1, 8.0), (2, 16.0), (3, 24.0)]
    assert _scalars(acc, "eval/accuracy") == [(3, 0.5)]
    # the config, once: hparams (metrics = scalars of this run) and a text table
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["train.lr"].number_value == 1e-3
    assert start.hparams["train.trainable"].string_value == '["adaptor"]'
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in exp.metric_infos] == list(L.HPARAM_METRICS)
    assert {m.name.tag for m in exp.metric_infos} & tags >= {"train/loss", "eval/accuracy"}
    (config,) = _text(acc, "config")
    assert "| train.lr | 0.001 |" in config
    (answers,) = _text(acc, "eval/answers")
    assert "| What is the tallest bar? | B | B |" in answers and "| 4 | 5 |" in answers
    # metrics.jsonl keeps the record keys (plots and sweeps read them) and no text
    recs = L.read_metrics(os.path.join(tmp_path, L.METRICS_FILE))
    assert [r["step"] for r in recs] == [1, 2, 3, 3]
    assert recs[0]["mfu"] == "nan" and "eval_answers" not in recs[-1]


def test_resume_shows_no_step_twice(tmp_path):
    lg = _logger(tmp_path)
    for s in range(1, 6):  # killed after step 5; the last checkpoint is step 3
        lg.write(_train_record(s, 10.0 + s))
    lg.close()
    lg = _logger(tmp_path, start=3)
    for s in range(4, 7):
        lg.write(_train_record(s, 20.0 + s))
    lg.close()
    acc = _events(tmp_path)
    assert _scalars(acc, "train/loss") == [(1, 11.0), (2, 12.0), (3, 13.0)] + [
        (4, 24.0),
        (5, 25.0),
        (6, 26.0),
    ]
    assert [s for s, _ in _scalars(acc, "perf/step_s")] == [1, 2, 3, 4, 5, 6]
    assert len(_text(acc, "config")) == 1  # written once, by the fresh run
    recs = L.read_metrics(os.path.join(tmp_path, L.METRICS_FILE))
    assert [(r["step"], r["loss"]) for r in recs][2:4] == [(3, 13.0), (4, 24.0)]
    assert len(recs) == 6
    # a resume with nothing left to do adds no event file
    n = len(os.listdir(tmp_path / L.TENSORBOARD_DIR))
    _logger(tmp_path, start=6).close()
    assert len(os.listdir(tmp_path / L.TENSORBOARD_DIR)) == n


def test_config_from_the_run_folder_and_disabled_process(tmp_path):
    (tmp_path / RUN_CONFIG).write_text(json.dumps(CONFIG))
    lg = L.MetricsLogger(str(tmp_path), total_steps=2, start_step=0, progress=False)
    lg.write(_train_record(1, 1.0))
    lg.close()
    assert _text(_events(tmp_path), "config")
    other = tmp_path / "other"
    lg = L.MetricsLogger(str(other), total_steps=2, start_step=0, enabled=False)
    lg.write(_train_record(1, 1.0))
    lg.close()
    assert not other.exists()


class _FakeWandb(types.ModuleType):
    """Records what the logger asks of wandb."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logs, self.finished = [], [], 0
        fake = self

        class Run:
            def log(self, data, step=None):
                fake.logs.append((step, data))

            def finish(self):
                fake.finished += 1

        self._run = Run

        class Table:
            def __init__(self, columns, data):
                self.columns, self.data = columns, data

        self.Table = Table
        self.Html = str

    def init(self, **kw):
        self.inits.append(kw)
        return self._run()


def test_wandb_gets_the_grouped_records_and_the_config(tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = {**CONFIG, "log": {**CONFIG["log"], "wandb": "dsvl"}}
    lg = _logger(tmp_path, config=cfg)
    lg.write(_train_record(1, 2.0))
    lg.write({"step": 1, "eval_accuracy": 0.5, "eval_answers": ANSWERS})
    lg.close()
    (init,) = fake.inits
    assert init["project"] == "dsvl" and init["mode"] == "offline" and init["resume"] == "allow"
    assert init["config"]["train"]["lr"] == 1e-3 and init["config"]["log"]["wandb"] == "dsvl"
    (step1, train), (step2, ev) = fake.logs
    assert step1 == step2 == 1
    assert train["train/loss"] == 2.0 and train["data/row_fill"] == 0.75 and "loss" not in train
    table = ev["eval/answers"]
    assert table.columns == ["question", "reference", "answer"] and table.data[1][2] == "5"
    assert ev["eval/accuracy"] == 0.5 and fake.finished == 1
    # a resume continues the same wandb run
    _logger(tmp_path, start=1, config=cfg).close()
    assert fake.inits[1]["id"] == init["id"]


def test_wandb_settings_are_checked(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", _FakeWandb())
    bad = {**CONFIG, "log": {"wandb": "dsvl", "wandb_mode": "sometimes"}}
    with pytest.raises(ConfigError, match="log.wandb_mode='sometimes'"):
        _logger(tmp_path, config=bad)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[wandb\]'"):
        _logger(tmp_path, config={**CONFIG, "log": {"wandb": "dsvl"}})


def test_wandb_offline_run_holds_the_records(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")  # the optional extra: skipped where it is not installed
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = {**CONFIG, "log": {**CONFIG["log"], "wandb": "dsvl"}}
    lg = _logger(tmp_path, config=cfg)
    lg.write(_train_record(1, 2.0))
    lg.close()
    wandb.teardown()  # finish() returns before wandb's service has written the run file
    run_id = (tmp_path / L.WANDB_ID_FILE).read_text().strip()
    (path,) = glob.glob(str(tmp_path / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))
    with open(path, "rb") as f:
        data = f.read()
    assert b"train/loss" in data and b"perf/tokens_per_s" in data and b"every_steps" in data


def _run(folder, losses):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, L.METRICS_FILE), "w") as f:
        for s, v in enumerate(losses, start=1):
            f.write(json.dumps({"step": s, "loss": v, "learning_rate": 0.1}) + "\n")


def test_plot_finds_nested_runs(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    _run(root / "demo" / "stage1", [3.0, 2.0])
    _run(root / "sweep" / "lr=0.1" / "seed0", [4.0, 1.0])
    _run(root / "demo" / "stage1" / "checkpoints" / "1", [9.0])  # inside a run: not searched
    (root / "demo" / "data" / "corpus").mkdir(parents=True)
    assert set(run_dirs([str(root)])) == {"demo/stage1", "sweep/lr=0.1/seed0"}
    assert set(run_dirs([str(root / "demo" / "stage1")])) == {"stage1"}
    with pytest.raises(ConfigError, match="no metrics.jsonl"):
        run_dirs([str(root / "demo" / "data")])

    import matplotlib.figure

    labels = {}
    save = matplotlib.figure.Figure.savefig

    def spy(fig, path, *a, **k):
        labels[os.path.basename(path)] = fig.axes[0].get_legend_handles_labels()[1]
        return save(fig, path, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    written = plot([str(root)], str(tmp_path / "plots"))
    assert sorted(os.path.basename(p) for p in written) == ["learning_rate.png", "loss.png"]
    with open(tmp_path / "plots" / "loss.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert labels["loss.png"] == ["demo/stage1 loss", "sweep/lr=0.1/seed0 loss"]
