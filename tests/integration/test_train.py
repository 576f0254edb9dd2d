"""The training program: exact resume after kill -9, resume on another mesh, NaN steps, stage freezing,
config errors before compile. One tiny corpus for the module; tiny steps. Every run goes through the
public entry (`train(cfg, workdir)`, what the command calls); faults (NaN batches, SIGTERM) are injected
by wrapping the input pipeline it draws from."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dsvl_jax.checkpoints import CheckpointError, RunCheckpoints, load_model, open_model
from dsvl_jax.config import load_experiment
from dsvl_jax.data import pipeline, records
from dsvl_jax.errors import ConfigError, Preempted
from dsvl_jax.model.params import flatten
from dsvl_jax.train.logger import read_metrics
from dsvl_jax.train.loop import RunError, train

import commands

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = {1: "stage1_aligner", 2: "stage2_pretrain", 3: "stage3_sft"}
# the same run as _cfg(stage=2), typed on the command line
CLI_OVERRIDES = [
    "--config.train.batch_size=8",
    "--config.train.seq_len=96",
    "--config.train.images_per_sample=1",
    "--config.data.modality_warmup_steps=4",
    "--config.checkpoint.every_steps=3",
    "--config.log.every_steps=1",
    "--config.log.progress=False",
    "--config.eval.every_steps=0",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return commands.tiny_corpus(tmp_path_factory.mktemp("data"), heldout_chart=True)


def _cfg(data_root, stage=2, steps=8, **train):
    """experiments/<stage>.py:tiny with CLI_OVERRIDES applied."""
    c = load_experiment(os.path.join(ROOT, "experiments", f"{STAGES[stage]}.py"), "tiny").unlock()
    c.data_root = data_root
    c.train.update(dict(steps=steps, batch_size=8, seq_len=96, images_per_sample=1), **train)
    c.data.modality_warmup_steps = 4
    c.checkpoint.every_steps, c.log.every_steps, c.log.progress, c.eval.every_steps = 3, 1, False, 0
    return c


class _FaultyIterator:
    """The loop's batch iterator with faults: NaN loss masks at the given draws (0-based), SIGTERM to this
    process while drawing the batch of step `sigterm_at` (the loop then checkpoints that step)."""

    def __init__(self, it, nan_at=(), sigterm_at=None):
        self.it, self.nan_at, self.sigterm_at, self.drawn = it, set(nan_at), sigterm_at, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch, k = next(self.it), self.drawn
        self.drawn += 1
        if k in self.nan_at:
            batch = dict(batch, loss_mask=batch["loss_mask"] * np.float32("nan"))
        if self.sigterm_at == k + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    def __getattr__(self, name):  # get_state / set_state / stats: the real iterator's
        return getattr(self.it, name)


@pytest.fixture
def faults(monkeypatch):
    """faults(nan_at=..., sigterm_at=...): the next train() in this test draws from a _FaultyIterator."""
    real = pipeline.build

    def inject(**kw):
        class Faulty:
            def __init__(self, ds):
                self.ds = ds

            def __iter__(self):
                return _FaultyIterator(iter(self.ds), **kw)

        monkeypatch.setattr(pipeline, "build", lambda *a, **k: Faulty(real(*a, **k)))

    return inject


@pytest.fixture(scope="module")
def ref_run(data_root, tmp_path_factory):
    """10 uninterrupted steps of experiments/stage2_pretrain.py:tiny (default mesh: fsdp over 8 devices)."""
    work = tmp_path_factory.mktemp("ref")
    res = train(_cfg(data_root, steps=10), str(work))
    assert res.compiles == 1 and res.final_dir
    return {"losses": _losses(work), "final_dir": res.final_dir}


def _losses(workdir):
    return {
        r["step"]: r["loss"]
        for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
        if "loss" in r
    }


def _run_until(cmd, env, work, step, sig):
    """Start the CLI, send `sig` once metrics.jsonl reaches `step`; -> (returncode, output)."""
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (work / "metrics.jsonl").exists() and max(_losses(work), default=0) >= step:
            break
        if p.poll() is not None:
            break
        time.sleep(0.05)
    p.send_signal(sig)
    out = p.communicate(timeout=120)[0].decode()
    return p.returncode, out


def test_kill_9_then_restart_continues_bit_for_bit_and_sigterm_checkpoints(
    data_root, ref_run, tmp_path
):
    """kill -9 after the step-3 checkpoint, restart: every loss after the restart equals the uninterrupted
    run's bit for bit (same data order, same state). That restart is then preempted (SIGTERM): it saves a
    checkpoint at the step it reached and exits 143. Both runs share a compilation cache
    (parallel.compilation_cache_dir): the restart loads the step the first run compiled."""
    want = ref_run["losses"]
    assert sorted(want) == list(range(1, 11))
    work = tmp_path / "interrupted"
    cmd = [
        sys.executable,
        "-m",
        "dsvl_jax.train",
        "--config=experiments/stage2_pretrain.py:tiny",
        f"--workdir={work}",
        f"--config.data_root={data_root}",
        "--config.train.steps=10",
        f"--config.parallel.compilation_cache_dir={tmp_path / 'xla_cache'}",
        *CLI_OVERRIDES,
    ]
    env = dict(os.environ, PYTHONPATH=ROOT)
    rc, out = _run_until(cmd, env, work, 4, signal.SIGKILL)
    assert rc == -signal.SIGKILL, out[-3000:]
    cached = sorted(f.name for f in (tmp_path / "xla_cache").glob("jit_step-*"))
    assert len(cached) == 1, cached
    killed_at = max(_losses(work))
    assert killed_at < 10, "the run finished before it was killed"
    rc, out = _run_until(cmd, env, work, 8, signal.SIGTERM)
    assert rc == 143 and "SIGTERM at step" in out, out[-3000:]
    preempted = int(out.split("SIGTERM at step ")[1].split(":")[0])
    assert (work / "checkpoints" / str(preempted)).exists()
    # the restart's step was a cache hit: no second entry
    assert sorted(f.name for f in (tmp_path / "xla_cache").glob("jit_step-*")) == cached
    got = _losses(work)
    assert sorted(got) == list(range(1, preempted + 1)) and preempted > killed_at
    for s in range(1, preempted + 1):
        assert got[s] == want[s], (s, got[s], want[s])  # bit for bit (floats written with repr)


def test_resume_on_another_mesh(data_root, ref_run, tmp_path, faults, monkeypatch):
    """Preempted (SIGTERM) at step 4 on a (2,2,2) mesh, continue on (8,1,1): the losses follow the reference
    run (fsdp 8)."""
    a = _cfg(data_root, steps=10)
    a.parallel.ici = dict(data=2, fsdp=2, tensor=2)
    faults(sigterm_at=4)
    with pytest.raises(Preempted, match="SIGTERM at step 4"):
        train(a, str(tmp_path / "run"))
    monkeypatch.undo()
    assert not (tmp_path / "run" / "final").exists()
    assert RunCheckpoints(str(tmp_path / "run" / "checkpoints")).all_steps()[-1] == 4
    b = _cfg(data_root, steps=10)
    b.parallel.ici = dict(data=8, fsdp=1, tensor=1)
    res = train(b, str(tmp_path / "run"))
    got = _losses(tmp_path / "run")
    assert sorted(got) == list(range(1, 11)) and res.final_dir
    np.testing.assert_allclose(
        [got[s] for s in range(1, 11)],
        [ref_run["losses"][s] for s in range(1, 11)],
        rtol=2e-5,
        atol=2e-5,
    )


def test_nan_batches_are_skipped_and_a_run_of_them_stops_the_run(data_root, tmp_path, faults):
    """A NaN batch at step 2 is skipped and training goes on; the checkpoint after it is finite; two in a
    row (steps 5 and 6, train.max_bad_steps=2) stop the run with the reason."""
    import jax

    from dsvl_jax.model.config import model_config_from_dict
    from dsvl_jax.parallel.mesh import build_mesh
    from dsvl_jax.parallel.rules import rules_from_config
    from dsvl_jax.train.state import StateFactory

    c = _cfg(data_root, steps=8, max_bad_steps=2)
    faults(nan_at=(1, 4, 5))  # draws are 0-based: steps 2, 5 and 6
    with pytest.raises(RunError, match="2 non-finite steps in a row .last: step 6"):
        train(c, str(tmp_path / "run"))
    recs = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert [r["skipped_steps"] for r in recs][:4] == [0, 1, 1, 1]
    assert recs[1]["loss"] == "nan" and np.isfinite(recs[2]["loss"])
    f = StateFactory(
        model_config_from_dict(c.model),
        c.train,
        build_mesh(c.parallel),
        rules_from_config(c.parallel.rules_override),
    )
    abstract = f.abstract_sharded()
    ck = RunCheckpoints(str(tmp_path / "run" / "checkpoints"))
    assert ck.all_steps() == [3]
    state, meta = ck.restore(3, abstract, None)
    # the skipped batch did not count as an update
    assert meta["skipped_steps"] == 1 and int(state.step) == 2
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(state))


def test_init_from_an_hf_folder_or_a_run_dir(data_root, ref_run, tmp_path):
    """init_from takes any model folder (checkpoints.open_model, what train's init_from calls): a previous
    run dir (its final/), its last step checkpoint, and an HF save_pretrained folder give the same params,
    placed with the run's shardings."""
    from dsvl_jax.interop.hf_export import save_hf
    from dsvl_jax.model.config import model_config_from_dict
    from dsvl_jax.parallel.mesh import build_mesh
    from dsvl_jax.parallel.rules import rules_from_config
    from dsvl_jax.train.state import StateFactory

    c = _cfg(data_root)
    mcfg = model_config_from_dict(c.model)
    f = StateFactory(
        mcfg, c.train, build_mesh(c.parallel), rules_from_config(c.parallel.rules_override)
    )
    _, want = load_model(ref_run["final_dir"])
    save_hf(str(tmp_path / "hf"), mcfg, want)
    run_dir = os.path.dirname(ref_run["final_dir"])
    for src in (run_dir, os.path.join(run_dir, "checkpoints", "10"), str(tmp_path / "hf")):
        got = open_model(src).params(mcfg, f.shardings.params)
        a, b = flatten(got), flatten(want)
        assert a.keys() == b.keys() and all(
            np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a
        ), src
        assert all(a[k].sharding == s for k, s in flatten(f.shardings.params).items())
    with pytest.raises(CheckpointError, match="not a model folder"):
        open_model(str(tmp_path))


def test_the_model_talks_as_it_was_trained(ref_run, tmp_path):
    """The tiny stages train without a system prompt. Every checkpoint of the run records that (and a
    copy of the tokenizer): a step checkpoint of the run, the run dir and final/ open with it, chat
    and the Python API answer as with an explicit --system "", and the HF export's chat template
    renders the same prompt ids."""
    from dsvl_jax.checkpoints import to_hf
    from dsvl_jax.data.template import render_generation_prompt
    from dsvl_jax.infer import Engine

    final = ref_run["final_dir"]
    run_dir = os.path.dirname(final)
    step = os.path.join(
        run_dir,
        "checkpoints",
        str(RunCheckpoints(os.path.join(run_dir, "checkpoints")).latest_step()),
    )
    for src in (run_dir, step, final):
        s = open_model(src)
        assert s.system_prompt == "" and s.tokenizer and os.path.exists(s.tokenizer), src
    question = "What is shown in the chart?"
    eng = Engine.load(step, batch_size=1)  # a step checkpoint, no flags
    assert eng.system_prompt == ""
    ours = eng.chat([question], max_new_tokens=5)[0]
    assert (
        ours
        == Engine.load(final, batch_size=1, system_prompt="").chat([question], max_new_tokens=5)[0]
    )
    p = commands.run("chat", f"--checkpoint={step}", "--max_new_tokens=5", question, devices=1)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1].strip() == ours.strip()
    # the export's chat template defaults to the recorded (empty) system prompt
    from transformers import AutoTokenizer

    res = to_hf(final, str(tmp_path / "hf"))
    assert res["system_prompt"] == ""
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = hf_tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    assert text.startswith("User: ")  # no system block: the recorded prompt is empty
    hf_ids = hf_tok(text)["input_ids"]  # the tokenizer adds BOS, as dsvl_jax does
    ref = render_generation_prompt(
        [records.Message("user", question)],
        eng.tokenizer,
        eng.cfg.num_image_tokens,
        default_system="",
    ).ids
    assert list(hf_ids) == list(ref)


def _cli(*args):
    return commands.run("train", *args, timeout=120)


def test_bad_configs_fail_with_one_line_before_compiling(data_root, tmp_path):
    base = [
        "--config=experiments/stage1_aligner.py:tiny",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data_root={data_root}",
    ]
    p = _cli(*base, "--config.train.trainable=()")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith(
        "train: error: train.trainable is empty"
    )
    p = _cli(*base, "--config.parallel.ici.data=3")
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and last.startswith("train: error: ") and "8" in last
    p = _cli(*base, "--config.train.bogus=1")
    assert p.returncode == 2
    assert p.stderr.strip().startswith(
        "train: error: --config.train.bogus=1: train has no field 'bogus'; its fields: b1, b2,"
    )
    assert len(p.stderr.strip().splitlines()) == 1
    # a bad spike field is named before the data is looked at (here: a data_root with nothing in it)
    p = _cli(*base[:2], f"--config.data_root={tmp_path}", "--config.train.spike_patience=-1")
    assert p.returncode == 2
    assert p.stderr.strip() == "train: error: train.spike_patience=-1 must be an int >= 0 (0 = off)"
    c = _cfg(data_root, steps=2, batch_size=6)
    with pytest.raises(ConfigError, match="batch_size=6 .* not divisible by the 8 batch shards"):
        train(c, str(tmp_path / "x"))
    assert not (tmp_path / "w" / "checkpoints").exists()
