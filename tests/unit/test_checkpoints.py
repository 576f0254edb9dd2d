"""checkpoints.open_model: one way to load a model from every folder a user has (a run dir before and
after its final/, one step checkpoint, a params checkpoint, an HF folder), with the tokenizer that goes
with it; everything else is a CheckpointError that names the folder."""

import json

import jax
import pytest

from dsvl_jax.checkpoints import (
    CheckpointError,
    RunCheckpoints,
    load_model,
    open_model,
    params_equal,
    save_params,
)
from dsvl_jax.config import base_config
from dsvl_jax.interop.hf_export import save_hf
from dsvl_jax.model.config import model_config_from_dict
from dsvl_jax.parallel.mesh import build_mesh
from dsvl_jax.parallel.rules import rules_from_config
from dsvl_jax.train.state import StateFactory


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as train writes it, before final/: config.json + checkpoints/{2,4} (state, meta)."""
    root = tmp_path_factory.mktemp("run")
    c = base_config("tiny")
    tok = root / "tok.model"
    tok.write_bytes(b"not read here")
    c.data.tokenizer = str(tok)
    mcfg = model_config_from_dict(c.model)
    f = StateFactory(mcfg, c.train, build_mesh(c.parallel), rules_from_config(None))
    first = f.init(jax.random.key(0))  # one compile; the later step holds other values
    states = {2: first, 4: jax.tree.map(lambda x: x * 2 + 1, first)}
    ckpts = RunCheckpoints(str(root / "checkpoints"), async_save=False)
    for step, st in states.items():
        ckpts.save(step, st, None, {"loop_step": step}, force=True)
    ckpts.close()
    (root / "config.json").write_text(c.to_json_best_effort())
    return root, mcfg, states


def test_a_running_run_loads_its_latest_step(run_dir):
    root, mcfg, states = run_dir
    src = open_model(root)
    assert (src.kind, src.layout, src.cfg) == ("run", "step", mcfg)
    assert src.path == str(root / "checkpoints" / "4") and src.tokenizer == str(root / "tok.model")
    assert params_equal(src.params(), states[4].params)
    step2 = open_model(root / "checkpoints" / "2")
    assert step2.kind == "step" and params_equal(step2.params(), states[2].params)


def test_a_finished_run_loads_final_then_params_and_hf_folders_load_the_same(run_dir, tmp_path):
    root, mcfg, states = run_dir
    final = tmp_path / "run"
    final.mkdir()
    (final / "config.json").write_text((root / "config.json").read_text())
    save_params(str(final / "final"), mcfg, states[2].params)
    (final / "final" / "tokenizer.model").write_bytes(b"x")
    src = open_model(final)
    assert (src.kind, src.layout) == ("run", "params")
    assert src.tokenizer == str(final / "final" / "tokenizer.model")
    for folder in (final, final / "final"):
        cfg, params = load_model(folder)
        assert cfg == mcfg and params_equal(params, states[2].params)
    save_hf(str(tmp_path / "hf"), mcfg, states[2].params)
    hf = open_model(tmp_path / "hf")
    assert hf.kind == "hf" and hf.tokenizer is None and params_equal(hf.params(), states[2].params)
    # a non-shape override (compute dtype) loads the same tensors
    cfg, params = load_model(tmp_path / "hf", dtype="bfloat16")
    assert cfg.dtype == "bfloat16" and params_equal(params, states[2].params)


def test_folders_that_hold_no_model_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        open_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=f"{tmp_path}: not a model folder"):
        open_model(tmp_path)
    run = tmp_path / "fresh_run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": {}, "train": {}}))
    with pytest.raises(CheckpointError, match="neither final/ nor a saved step yet"):
        open_model(run)
    (run / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="neither final/ nor a saved step yet"):
        open_model(run)


def test_step_params_are_checked_against_the_config(run_dir):
    """The step loader reads only params, and a config they do not fit is the one mismatch report."""
    import dataclasses

    from dsvl_jax.errors import CheckpointMismatch

    root, mcfg, _ = run_dir
    wider = dataclasses.replace(
        mcfg, llm=dataclasses.replace(mcfg.llm, mlp_dim=mcfg.llm.mlp_dim * 2)
    )
    with pytest.raises(
        CheckpointMismatch, match=r"llm/blocks/gate/kernel: stored \(2, 64, 128\)"
    ) as e:
        open_model(root).params(wider)
    assert str(root / "checkpoints" / "4") in str(e.value)
    assert [x.split(":")[0] for x in e.value.shapes] == [
        f"llm/blocks/{n}/kernel" for n in ("down", "gate", "up")
    ]
