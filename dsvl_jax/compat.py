"""Every private or experimental third-party API dsvl_jax relies on, each behind one function.

These names are not covered by their libraries' compatibility promises, so they live here and
nowhere else: when a pin moves, `tests/unit/test_compat.py` fails on the name that moved instead of
a run failing deep inside a step. Imports happen on call, so importing this module costs nothing.

| function                | wraps                                                         | used by            |
|-------------------------|---------------------------------------------------------------|--------------------|
| concrete_mesh           | jax._src.mesh.get_concrete_mesh                               | model/attention.py |
| splash_attention        | jax.experimental.pallas.ops.tpu.splash_attention              | model/attention.py |
| device_mesh_array       | jax.experimental.mesh_utils.create_(hybrid_)device_mesh        | parallel/mesh.py   |
| topology_devices        | jax.experimental.topologies.get_topology_desc                 | parallel/topologies.py |
| thread_prefetch         | grain.experimental.ThreadPrefetchIterDataset                  | data/pipeline.py   |
| tfds_progress_bar_state | tensorflow_datasets.core.utils.tqdm_utils._active             | data/builders.py   |
| orbax_tree_metadata     | Checkpointer.metadata(dir).item_metadata.tree                 | checkpoints/        |
| TensorboardWriter       | tensorboard's EventFileWriter + Event/Summary protos          | none (tensorboardX now) |
| tensorboardx_hparams    | tensorboardX.summary.hparams + SummaryWriter.file_writer      | train/logger.py    |
| sentencepiece_model_pb2 | sentencepiece's generated ModelProto (protobuf version gate)  | interop/hf_processor.py |
"""

from __future__ import annotations

import time
from typing import Any


def concrete_mesh():
    """The mesh set by `jax.set_mesh` (devices included), or None; no public alias in jax 0.10."""
    from jax._src import mesh as mesh_lib

    mesh = mesh_lib.get_concrete_mesh()
    return None if mesh is None or mesh.empty else mesh


def splash_attention():
    """(splash_attention_kernel, splash_attention_mask) modules of the Pallas TPU splash kernel."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel,
        splash_attention_mask,
    )

    return splash_attention_kernel, splash_attention_mask


def device_mesh_array(ici: tuple[int, ...], dcn: tuple[int, ...] | None, devices) -> Any:
    """Devices arranged for the ICI mesh shape (times the DCN shape across slices): an ndarray."""
    from jax.experimental import mesh_utils

    if dcn is not None:
        return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    return mesh_utils.create_device_mesh(ici, devices)


def topology_devices(**desc_kwargs) -> list:
    """Compile-only devices of a TPU slice description (needs libtpu, no TPU attached)."""
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(**desc_kwargs).devices)


def thread_prefetch(ds, buffer_size: int):
    """grain IterDataset whose elements are produced ahead in a background thread."""
    import grain

    return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=buffer_size)


def tfds_progress_bar_state() -> bool:
    """Whether tfds shows its own progress bars (to restore after silencing them)."""
    from tensorflow_datasets.core.utils import tqdm_utils

    return bool(tqdm_utils._active)


def orbax_tree_metadata(checkpointer, directory: str) -> Any:
    """The stored tree of a pytree item as nested dicts of array metadata (with `.shape`). orbax 0.12
    wraps it as `metadata(dir).item_metadata.tree`; earlier releases returned `.tree` or the tree."""
    meta = checkpointer.metadata(directory)
    meta = getattr(meta, "item_metadata", None) or meta
    tree = getattr(meta, "tree", None)
    return meta if tree is None else tree


class TensorboardWriter:
    """Scalars into TensorBoard event files with tensorboard's own writer and protos (no TensorFlow)."""

    def __init__(self, logdir: str):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = Event, Summary
        self._writer = EventFileWriter(logdir)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        vals = [self._summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()]
        self._writer.add_event(
            self._event(step=int(step), wall_time=time.time(), summary=self._summary(value=vals))
        )

    def close(self) -> None:
        self._writer.close()


def tensorboardx_hparams(writer, hparams: dict, metric_tags: list[str], step: int = 0) -> None:
    """The hparams plugin's three summaries (experiment, session start, session end) into `writer`'s own
    run. tensorboardX's public `add_hparams` writes them into a new sub-run with one point per metric;
    in the run itself the plugin reads each metric as the last value of the run's scalar `tag`."""
    from tensorboardX.summary import hparams as hparams_summaries

    for summ in hparams_summaries(hparams, dict.fromkeys(metric_tags, 0.0)):
        writer.file_writer.add_summary(summ, step)


def sentencepiece_model_pb2():
    """sentencepiece's generated `sentencepiece_model_pb2` module (the ModelProto schema).

    sentencepiece 0.2.3 generated it with protobuf 7.36 and refuses an older runtime, while
    apache-beam (the `beam` extra) pins protobuf < 7. The module only builds its messages from a
    serialized descriptor, which protobuf 6 supports, so the version gate is relaxed for this one
    import (tests/unit/test_compat.py parses a trained model through it).
    """
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb

        return pb
    except ImportError:
        raise
    except Exception as e:
        if type(e).__name__ != "VersionError":
            raise
    import sys

    from google.protobuf import runtime_version

    check = runtime_version.ValidateProtobufRuntimeVersion
    runtime_version.ValidateProtobufRuntimeVersion = lambda *a, **k: None
    try:
        sys.modules.pop("sentencepiece.sentencepiece_model_pb2", None)
        from sentencepiece import sentencepiece_model_pb2 as pb
    finally:
        runtime_version.ValidateProtobufRuntimeVersion = check
    return pb
