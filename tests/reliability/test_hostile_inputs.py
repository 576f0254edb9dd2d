"""Broken or hostile files are refused by name, fast, before anything big is allocated: HF tensors of
the wrong shape, dtype or value, safetensors indexes pointing outside their folder, absurd model
configs, JSON nested past the parser's recursion limit, and a full disk under the run's logs."""

import copy
import io
import json
import os
import shutil

import numpy as np
import pytest
from faults import FullDisk
from PIL import Image
from safetensors.numpy import load_file, save_file

from dsvl_jax.data import importers
from dsvl_jax.data.import_common import ImportContext, SkipCounter
from dsvl_jax.errors import CheckpointError, CheckpointMismatch, ConfigError
from dsvl_jax.eval.items import load_items
from dsvl_jax.interop.hf_config import from_hf, to_hf
from dsvl_jax.interop.hf_export import save_hf
from dsvl_jax.interop.hf_import import load_hf, read_config
from dsvl_jax.model.config import HOST_MEMORY_FACTOR, model_config_from_dict, param_count, validate
from dsvl_jax.model.params import abstract_params, flatten, unflatten
from dsvl_jax.model.sizes import model_config
from dsvl_jax.train.logger import LogWriteError, MetricsLogger

LLM = "model.language_model.layers.0"
DEEP = "[" * 100_000 + "]" * 100_000  # past Python's recursion limit: json raises RecursionError


@pytest.fixture(scope="module")
def hf_tiny(tmp_path_factory):
    """A tiny HF folder (config.json + model.safetensors) and its tensors."""
    folder = tmp_path_factory.mktemp("hf_tiny")
    cfg = model_config("tiny")
    # random weights of init_params' shapes, without compiling the init
    rng = np.random.default_rng(0)
    flat = flatten(abstract_params(cfg)).items()
    params = unflatten({k: rng.standard_normal(a.shape).astype(np.float32) for k, a in flat})
    save_hf(str(folder), cfg, params)
    return folder, load_file(str(folder / "model.safetensors"))


def _folder(tmp_path, hf_tiny, **edits) -> str:
    """A copy of the tiny folder with some tensors replaced."""
    src, tensors = hf_tiny
    shutil.copy(src / "config.json", tmp_path / "config.json")
    save_file({**tensors, **edits}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    return str(tmp_path)


def test_the_unedited_folder_loads(tmp_path, hf_tiny):
    cfg, params = load_hf(_folder(tmp_path, hf_tiny))
    assert cfg == model_config("tiny") and params


@pytest.mark.parametrize(
    "key, edit",
    [
        # a transposed Linear ("linear": w.T.reshape would take any [64, 128])
        (f"{LLM}.mlp.gate_proj.weight", lambda w: w.T),
        # a bias split per head ("flatten"), stored pre-split: same element count
        ("model.vision_model.encoder.layers.0.self_attn.k_proj.bias", lambda w: w.reshape(2, 16)),
        # SAM's pos_embed ("squeeze0") stored without its leading 1
        ("model.high_res_vision_model.vision_encoder.pos_embed", lambda w: w[0]),
        # a norm scale ("identity") as a column
        (f"{LLM}.input_layernorm.weight", lambda w: w[:, None]),
    ],
    ids=["transposed", "flatten", "squeeze0", "identity"],
)
def test_a_tensor_of_the_right_size_but_wrong_shape_is_refused(tmp_path, hf_tiny, key, edit):
    w = hf_tiny[1][key]
    bad = np.ascontiguousarray(edit(w))
    assert bad.size == w.size and bad.shape != w.shape
    with pytest.raises(CheckpointMismatch) as e:
        load_hf(_folder(tmp_path, hf_tiny, **{key: bad}))
    assert f"{key}: stored {bad.shape} vs expected {w.shape}" in str(e.value)


def test_a_transposed_square_matrix_cannot_be_told_by_shape(tmp_path, hf_tiny):
    """The limit of a shape check: [64, 64] transposed is still [64, 64]. Only the parity tests' logits
    (tests/parity) catch a layout bug there; a file transposed on purpose loads."""
    key = f"{LLM}.self_attn.q_proj.weight"
    w = hf_tiny[1][key]
    assert w.shape[0] == w.shape[1]
    _, params = load_hf(_folder(tmp_path, hf_tiny, **{key: np.ascontiguousarray(w.T)}))
    got = np.asarray(params["llm"]["blocks"]["q"]["kernel"][0]).reshape(64, 64)
    np.testing.assert_array_equal(got, w)  # kernel = stored.T: the transposed file, taken as is


def test_non_finite_weights_are_refused_by_name(tmp_path, hf_tiny):
    key = f"{LLM}.mlp.down_proj.weight"
    w = hf_tiny[1][key].copy()
    w[3, 5], w[0, 0] = np.nan, np.inf
    with pytest.raises(CheckpointError, match=rf"tensor {key} \(64, 128\) holds 2 non-finite"):
        load_hf(_folder(tmp_path, hf_tiny, **{key: w}))


@pytest.mark.parametrize("dtype", [np.int32, np.bool_])
def test_integer_weights_are_refused_by_name(tmp_path, hf_tiny, dtype):
    key = "model.language_model.norm.weight"
    w = np.ones_like(hf_tiny[1][key], dtype=dtype)
    with pytest.raises(
        CheckpointError, match=rf"tensor {key} has dtype {np.dtype(dtype)}, expected"
    ):
        load_hf(_folder(tmp_path, hf_tiny, **{key: w}))


@pytest.mark.parametrize("target", ["../outside.safetensors", "/tmp/outside.safetensors"])
def test_a_safetensors_index_cannot_point_outside_its_folder(tmp_path, hf_tiny, target):
    src, tensors = hf_tiny
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(src / "config.json", folder / "config.json")
    key = "lm_head.weight"
    save_file({k: v for k, v in tensors.items() if k != key}, str(folder / "model-1.safetensors"))
    outside = (folder / target).resolve() if not os.path.isabs(target) else None
    if outside is not None:
        save_file({key: tensors[key]}, str(outside))  # readable: only the index check stops it
    weight_map = {k: "model-1.safetensors" for k in tensors if k != key} | {key: target}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=rf"weight_map names '{target}'.*outside the folder"):
        load_hf(str(folder))


def _hf_config(**text) -> dict:
    conf = to_hf(model_config("tiny"))
    conf["text_config"].update(text)
    return conf


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("hidden_size", 10**9, "1000000000 > 65536"),
        ("num_hidden_layers", 10**7, "10000000 > 1024"),
        ("max_position_embeddings", 5 * 10**7, "50000000 > 1048576"),
        ("hidden_size", "abc", "'abc' is not a positive integer"),
        ("hidden_size", 0, "0 is not a positive integer"),
        ("num_attention_heads", -1, "-1 is not a positive integer"),
        ("vocab_size", 2.5, "2.5 is not a positive integer"),
        ("rms_norm_eps", "x", "'x' is not a finite number > 0"),
    ],
)
def test_absurd_hf_configs_are_refused_naming_the_field(field, value, why):
    """Refused by validate before any allocation (no time bound asserted: they fail in microseconds
    where they used to allocate 238 GiB or convert for minutes)."""
    with pytest.raises(
        ConfigError, match=rf"config.json text_config.{field} \(model.llm.\w+\): {why}"
    ):
        from_hf(_hf_config(**{field: value}))


def test_an_absurd_config_json_is_refused_before_any_tensor_is_read(tmp_path, hf_tiny):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(_hf_config(hidden_size=10**9)))
    (folder / "model.safetensors").write_bytes(b"not read")
    with pytest.raises(ConfigError, match="hidden_size"):
        read_config(str(folder))


@pytest.mark.parametrize(
    "section, field, value",
    [
        ("llm", "hidden", 10**9),
        ("llm", "layers", 10**7),
        ("llm", "max_position", 5 * 10**7),
        ("llm", "hidden", "abc"),
        ("llm", "vocab_size", 0),
        ("llm", "heads", -1),
        ("siglip", "image_size", 10**6),
        ("sam", "width", None),
    ],
)
def test_absurd_model_configs_are_refused_naming_the_field(section, field, value):
    """model_config.json and --config.model.* overrides take this path (model_config_from_dict)."""
    d = model_config("tiny").to_dict()
    d[section][field] = value
    with pytest.raises(ConfigError, match=rf"^model.{section}.{field}: "):
        model_config_from_dict(d)


def test_a_model_too_big_for_any_slice_of_hosts_is_refused_by_its_size():
    d = model_config("tiny").to_dict()
    d["llm"].update(hidden=65536, layers=1024, mlp_dim=2**18, heads=512, kv_heads=512, head_dim=128)
    with pytest.raises(
        ConfigError, match=rf"parameters .* exceed {HOST_MEMORY_FACTOR} x this host"
    ):
        model_config_from_dict(d)


@pytest.mark.parametrize("size", ["tiny", "tiny_siglip", "1.3b"])
def test_the_size_estimate_counts_every_parameter(size):
    cfg = model_config(size)
    validate(cfg)
    shapes = flatten(abstract_params(cfg)).values()
    assert param_count(cfg) == sum(int(np.prod(s.shape)) for s in shapes)


def test_a_deeply_nested_config_json_is_one_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": ' + DEEP + "}")
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_config(str(tmp_path))


def _deep_files(tmp_path):
    """name -> (file to poison, the call that reads it, the error kind): every JSON file a model folder,
    run, part or benchmark brings."""
    from dsvl_jax.checkpoints import open_model
    from dsvl_jax.checkpoints.params import read_model_config
    from dsvl_jax.checkpoints.talk import read_talk
    from dsvl_jax.eval.benchmarks import load_seed
    from dsvl_jax.interop.hf_parts import read_part
    from dsvl_jax.interop.hf_release import image_token_id

    run = tmp_path / "run"
    return {
        "params model_config.json": (
            tmp_path / "model_config.json",
            lambda: read_model_config(str(tmp_path)),
            CheckpointError,
        ),
        "run config.json": (run / "config.json", lambda: open_model(str(run)), CheckpointError),
        "HF config.json": (
            tmp_path / "config.json",
            lambda: open_model(str(tmp_path)),
            CheckpointError,
        ),
        "talk.json": (tmp_path / "talk.json", lambda: read_talk(str(tmp_path)), CheckpointError),
        "part config.json": (
            tmp_path / "config.json",
            lambda: read_part("llm", str(tmp_path)),
            CheckpointError,
        ),
        "tokenizer.json": (
            tmp_path / "tokenizer.json",
            lambda: image_token_id(str(tmp_path)),
            CheckpointError,
        ),
        "SEED-Bench.json": (
            tmp_path / "SEED-Bench.json",
            lambda: load_seed(str(tmp_path)),
            ValueError,
        ),
    }


@pytest.mark.parametrize(
    "which",
    [
        "params model_config.json",
        "run config.json",
        "HF config.json",
        "talk.json",
        "part config.json",
        "tokenizer.json",
        "SEED-Bench.json",
    ],
)
def test_every_json_file_a_folder_brings_is_one_error_when_nested_too_deeply(tmp_path, which):
    path, read, kind = _deep_files(tmp_path)[which]
    path.parent.mkdir(exist_ok=True)
    if which == "run config.json":
        (path.parent / "final").mkdir()
    path.write_text(DEEP)
    with pytest.raises(kind) as e:
        read()
    assert str(e.value) == f"{path}: JSON nested too deeply to parse"


def test_a_deeply_nested_language_benchmark_line_is_one_skipped_item(tmp_path):
    from dsvl_jax.eval.language import load_arc

    good = {"id": "a1", "question": "2+2?", "choices": {"text": ["3", "4"], "label": ["A", "B"]}}
    (tmp_path / "arc.jsonl").write_text(json.dumps({**good, "answerKey": "B"}) + "\n" + DEEP + "\n")
    got = load_arc(str(tmp_path / "arc.jsonl"))
    assert [i.id for i in got.items] == ["a1"]
    assert [(s.reason, s.detail) for s in got.skipped] == [
        ("bad_json", "JSON nested too deeply to parse")
    ]


def test_a_deeply_nested_jsonl_line_is_one_bad_record(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    lines = [
        json.dumps({"id": "c1", "image": "a.png", "caption": "red"}),
        DEEP,
        json.dumps({"id": "c3", "image": "a.png", "caption": "still red"}),
    ]
    cap = tmp_path / "caps.jsonl"
    cap.write_text("\n".join(lines) + "\n")
    counter = SkipCounter("caps.jsonl", max_skip_rate=None)
    ctx = ImportContext(str(tmp_path))
    got = list(importers.import_file("captions", str(cap), "caps.jsonl", ctx, counter))
    assert [ex.id for ex in got] == ["c1", "c3"]
    assert (counter.written, dict(counter.skipped)) == (2, {"bad_conversation": 1})
    (skip,) = counter.skipped_ids
    assert skip["id"] == "caps.jsonl:2" and "nested too deeply" in skip["detail"]


def test_a_deeply_nested_eval_line_is_one_skipped_item(tmp_path):
    lines = [json.dumps({"id": "q1", "question": "2+2?", "answer": "4"}), DEEP]
    path = tmp_path / "bench.jsonl"
    path.write_text("\n".join(lines) + "\n")
    got = load_items(str(path))
    assert [i.id for i in got.items] == ["q1"]
    assert [(s.reason, "nested too deeply" in s.detail) for s in got.skipped] == [
        ("bad_json", True)
    ]


def test_a_full_disk_under_the_logs_is_one_named_error(tmp_path):
    """Every write fails with ENOSPC: the logger raises LogWriteError (one line, the file named), stops
    logging, and close() (the loop's `finally`) does not raise again."""
    lg = MetricsLogger(str(tmp_path), total_steps=3, start_step=0, progress=False, config={})
    lg._f.close()
    lg._f = FullDisk()
    with pytest.raises(
        LogWriteError, match=r"metrics.jsonl: cannot write .*: the disk is full"
    ) as e:
        lg.write({"step": 1, "loss": 2.0})
    assert isinstance(e.value, OSError) and "\n" not in str(e.value)
    lg.write({"step": 2, "loss": 1.0})  # logging stopped: no second error
    lg.close()


def test_a_config_dict_in_a_wrong_place_is_a_config_error():
    d = copy.deepcopy(model_config("tiny").to_dict())
    d["llm"] = "abc"
    with pytest.raises(ConfigError, match="model.llm: a str, expected a mapping"):
        model_config_from_dict(d)
