"""PyTorch pickles are never unpickled: a folder with only .bin / .pt weights is refused by name,
with the command that turns them into safetensors, and the file's code never runs."""

import json
import pickle
from pathlib import Path

import pytest

from dsvl_jax.checkpoints import from_hf, open_model
from dsvl_jax.errors import CheckpointError
from dsvl_jax.interop.hf_config import to_hf
from dsvl_jax.interop.hf_import import load_hf
from dsvl_jax.model.sizes import model_config


class _Trap:
    """Unpickling this creates `marker`: proof that a loader ran the file's code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_folder(folder: Path, files: list[str], marker: Path) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(to_hf(model_config("tiny"))))
    for name in files:
        if name.endswith(".json"):
            (folder / name).write_text(json.dumps({"weight_map": {"w": files[0]}}))
        else:
            (folder / name).write_bytes(pickle.dumps({"w": _Trap(marker)}))


def test_the_trap_is_armed(tmp_path):
    """Unpickling the test file does create its marker (so the refusal tests below can fail)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Trap(marker)))  # a pickle we wrote ourselves
    assert marker.exists()


@pytest.mark.parametrize(
    "files",
    [
        ["pytorch_model.bin"],
        ["model.pt"],
        ["pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json"],
    ],
)
def test_pickle_weights_are_refused_unopened(tmp_path, files):
    marker = tmp_path / "ran"
    folder = tmp_path / "hf"
    _pickle_folder(folder, files, marker)
    calls = [
        lambda: from_hf(str(folder), str(tmp_path / "out")),
        lambda: load_hf(str(folder)),
        lambda: open_model(folder).params(),
    ]
    for call in calls:
        with pytest.raises(CheckpointError) as e:
            call()
        msg = str(e.value)
        assert str(folder) in msg and files[0] in msg, msg
        assert "safetensors" in msg and "weights_only=True" in msg, msg
        if len(files) > 1:
            assert "model.safetensors.index.json" in msg, msg
    assert not marker.exists()
