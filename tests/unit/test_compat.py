"""The private / experimental third-party names dsvl_jax uses (dsvl_jax/compat.py) still exist and behave.

When a pin moves and one of these names moves with it, this file fails naming it, instead of a training
step failing deep inside a trace. Each test touches the real object, not just the import.
"""

import ast
import importlib.util
import os
from pathlib import Path

import jax
import numpy as np

from dsvl_jax import compat

PKG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "dsvl_jax"
)


def test_concrete_mesh_sees_the_mesh_set_by_set_mesh():
    mesh = jax.make_mesh(
        (2,), ("x",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:2]
    )
    assert compat.concrete_mesh() is None
    with jax.set_mesh(mesh):
        got = compat.concrete_mesh()
        assert (
            got is not None
            and got.devices.flat[0].platform == "cpu"
            and dict(got.shape) == {"x": 2}
        )


def test_splash_attention_modules_have_what_model_attention_uses():
    sk, sm = compat.splash_attention()
    for name in ("BlockSizes", "make_splash_mha", "SegmentIds"):
        assert hasattr(sk, name), f"splash_attention_kernel.{name} moved"
    for name in ("MultiHeadMask", "CausalMask"):
        assert hasattr(sm, name), f"splash_attention_mask.{name} moved"


def test_device_mesh_array_shapes_devices():
    arr = compat.device_mesh_array((2, 4), None, jax.devices())
    assert arr.shape == (2, 4) and sorted(d.id for d in arr.flat) == list(range(8))


def test_topology_devices_returns_compile_only_tpus():
    from dsvl_jax.parallel import topologies

    assert importlib.util.find_spec("libtpu") is not None, (
        "libtpu not installed: pip install -e .[tpu]"
    )
    devs = compat.topology_devices(**topologies.parse("v5e-4").desc_kwargs())
    assert len(devs) == 4 and devs[0].platform == "tpu"


def test_thread_prefetch_yields_the_same_elements():
    import grain

    ds = grain.MapDataset.range(10).to_iter_dataset()
    assert list(compat.thread_prefetch(ds, 2)) == list(range(10))


def test_tfds_progress_bar_state_is_a_bool():
    assert isinstance(compat.tfds_progress_bar_state(), bool)


def test_orbax_tree_metadata_gives_shapes(tmp_path):
    import orbax.checkpoint as ocp

    tree = {"a": {"w": np.zeros((2, 3), np.float32)}, "b": np.ones((4,), np.int32)}
    with ocp.StandardCheckpointer() as c:
        c.save(str(tmp_path / "t"), tree)
    with ocp.StandardCheckpointer() as c:
        meta = compat.orbax_tree_metadata(c, str(tmp_path / "t"))
    assert tuple(meta["a"]["w"].shape) == (2, 3) and tuple(meta["b"].shape) == (4,)


def test_tensorboard_writer_writes_readable_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    w = compat.TensorboardWriter(str(tmp_path))
    w.scalars(3, {"loss": 1.5, "lr": 0.01})
    w.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(3, 1.5)]


def test_private_apis_are_only_used_through_compat():
    """No module but compat.py imports jax._src, jax.experimental, grain.experimental, tfds internals or
    tensorboard's writer internals."""
    private = (
        "jax._src",
        "jax.experimental",
        "tensorflow_datasets.core.utils",
        "tensorboard.summary.writer",
        "tensorboard.compat",
    )
    found = []
    for root, _, files in os.walk(PKG):
        for f in files:
            path = os.path.join(root, f)
            if not f.endswith(".py") or path.endswith(os.path.join("dsvl_jax", "compat.py")):
                continue
            tree = ast.parse(Path(path).read_text())
            for node in ast.walk(tree):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                found += [f"{path}:{node.lineno}: {n}" for n in names if n.startswith(private)]
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr == "experimental"
                    and isinstance(node.value, ast.Name)
                    and node.value.id in ("grain", "jax", "tfds")
                ):
                    found.append(f"{path}:{node.lineno}: {node.value.id}.experimental")
    assert not found, "private APIs outside dsvl_jax/compat.py:\n" + "\n".join(found)


def test_sentencepiece_model_proto_loads_with_the_pinned_protobuf(tmp_path):
    """sentencepiece's ModelProto parses a trained model whatever protobuf the extras pin (beam: < 7)."""
    from dsvl_jax.data import tokenizer

    model = tokenizer.train_sentencepiece(
        ["a chart of sales by year", "the red bar is the largest"] * 20,
        300,
        out=str(tmp_path / "t.model"),
    )
    pb = compat.sentencepiece_model_pb2()
    p = pb.ModelProto()
    p.ParseFromString(model)
    assert len(p.pieces) == 300 and p.trainer_spec.model_type == pb.TrainerSpec.BPE
