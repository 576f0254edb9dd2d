"""A run's step checkpoints: orbax CheckpointManager (async) with three items per step:

  state     TrainState (params + optimizer state), sharded; restored through the abstract state with
            the *current* run's shardings, so a checkpoint restores onto another mesh shape
  data_iter the grain iterator state (JSON, one file per process)
  meta      JSON: step, skipped-step count, data counters, and `config`: the run config (JSON) the
            step was written under

Keeps the last `keep` checkpoints plus every `keep_period`-th step. A state with non-finite values
is never written.

Verified checkpoints. Once a save has committed (a background thread waits for orbax's finalize), process 0
writes `<step>/manifest.json`:

  {"format": 1, "step": 6, "finite": true, "algorithm": "sha256",
   "files": {"state/ocdbt.process_0/d/<id>": {"size": 1234, "sha256": "<hex>"}, ...}}

(every file under the step folder but the manifest itself; `finite`: the on-device check that params
and optimizer moments hold no NaN / Inf, made before the save). `restore_latest` tries the steps newest
first: manifest (every file present, same size, same digest, finite: true), then the meta item (the
config check below), then the state and iterator through orbax, then finiteness of what was restored.
ANY failure, an orbax / tensorstore exception included, moves the step folder aside to
`checkpoints/quarantine/<step>.bad-<reason>` (reason: missing, size, digest, manifest, not-finite,
restore-error; spike: written during a loss spike the run rolled back from, `restore_before`; `why.txt`
inside says more), logs one line and tries the next older step: a bad step is
never deleted and never counted as a saved step again. If none is left, one CheckpointError names every
step and why (a rerun then stops with the same error instead of quietly starting over).
A step without a manifest (written before manifests existed, or a run killed before its last save's
manifest) is *unverified*: it is restored only if it loads and is finite. In a multi-process run process
0 checks the files and moves a step aside; every process learns each verdict (`_anywhere`).

Config checks. Each step's meta holds the run config it was written under. On resume the current config
must equal it except for RESUME_UNCHECKED (fields that do not change what is trained or which batches
come) and the keys the user accepts with `--config.resume_overrides=train.lr,train.steps` (dotted keys
or prefixes); anything else is one ConfigError listing the changed keys (old -> new). Accepted changes
are returned for the run's `config_history.jsonl` (`record_config_changes`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from dsvl_jax import compat
from dsvl_jax.checkpoints.params import check_params, restore_target, shapes
from dsvl_jax.errors import CheckpointError, ConfigError, Error
from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.params import Params

log = logging.getLogger(__name__)

STATE_ITEM = "state"
MANIFEST = "manifest.json"
QUARANTINE_DIR = "quarantine"
CONFIG_HISTORY = "config_history.jsonl"
# Config sections / keys a resume may change without --config.resume_overrides: they change neither the
# trained values nor the batch order. log: logging; checkpoint: how often / how many steps are kept;
# parallel: the mesh and its rules (a checkpoint restores onto another mesh shape); eval: in-run eval
# (its own held-out pipeline); resume_overrides itself.
RESUME_UNCHECKED = ("resume_overrides", "log", "checkpoint", "parallel", "eval")


class CheckpointRefused(Error, RuntimeError):
    """A save that would write non-finite parameters."""


class _IterSnapshot:
    """The iterator state at the moment of `save`: orbax writes it from a background thread while the
    live iterator runs ahead. (grain's handler takes non-DatasetIterator states as JSON bytes.)"""

    def __init__(self, state: dict):
        self._state = json.dumps(state, indent=1).encode()

    def get_state(self) -> bytes:
        return self._state


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


@dataclasses.dataclass
class Restored:
    """What `restore_latest` resumed: the step, its state and meta, whether a manifest vouched for it,
    and the config changes against the checkpoint's (dotted key -> [old, new]): `accepted` through
    resume_overrides, `unchecked` in RESUME_UNCHECKED."""

    step: int
    state: Any
    meta: dict
    verified: bool
    accepted: dict
    unchecked: dict


class RunCheckpoints:
    """`config`: the run config (a JSON dict) every save records in its meta and `restore_latest`
    compares the checkpoint's with (None: neither)."""

    def __init__(
        self,
        directory: str,
        *,
        keep: int = 3,
        keep_period: int | None = None,
        async_save: bool = True,
        config: Mapping | None = None,
    ):
        self.directory = os.path.abspath(directory)
        self.config = config
        opts = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_period or None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.mngr = ocp.CheckpointManager(self.directory, options=opts)
        self._manifests: threading.Thread | None = None
        self._moved = 0

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.mngr.all_steps())

    def save(self, step: int, state: Any, data_iter, meta: dict, *, force: bool = False) -> bool:
        if not bool(_all_finite(state)):
            raise CheckpointRefused(
                f"step {step}: the train state holds non-finite values; not saving"
            )
        if self.config is not None:
            meta = {**meta, "config": self.config}
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(
                _IterSnapshot(data_iter.get_state())
            )
        saved = self.mngr.save(step, args=ocp.args.Composite(**items), force=force)
        if saved:
            self._manifest_after_commit(step)
        return saved

    def _manifest_after_commit(self, step: int) -> None:
        """A thread that waits for the save of `step` to commit, then writes its manifest (process 0;
        threads run one after another). The state was checked finite above."""
        prev, mngr = self._manifests, self.mngr

        def work():
            if prev is not None:
                prev.join()
            try:
                mngr.wait_until_finished()
                if jax.process_index() != 0 or step not in mngr.all_steps():
                    return  # another process writes it / the save failed (orbax dropped the step)
                write_manifest(os.path.join(self.directory, str(step)), step, finite=True)
            except Exception as e:  # noqa: BLE001 - the step then restores unverified
                log.warning("checkpoint step %d: no manifest written (%s)", step, short_error(e))

        self._manifests = threading.Thread(target=work, name=f"manifest-{step}", daemon=True)
        self._manifests.start()

    def restore(self, step: int, abstract_state: Any, data_iter) -> tuple[Any, dict]:
        """-> (state, meta) of one step, unchecked; `data_iter` (if given) is positioned in place."""
        items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self.mngr.restore(step, args=ocp.args.Composite(**items))
        return out["state"], dict(out["meta"])

    def restore_latest(
        self, abstract_state: Any, data_iter, *, accept: str = ""
    ) -> Restored | None:
        """The newest good step (see the module doc), `data_iter` positioned with it; None when the run
        has no checkpoint. Bad steps are moved aside; none good: CheckpointError; a config that differs
        from the checkpoint's beyond RESUME_UNCHECKED and `accept`: ConfigError."""
        bad = []
        for step in sorted(self.all_steps(), reverse=True):
            why, verified = None, False
            if jax.process_index() == 0:  # one process reads the files; all learn the verdict
                why, verified = verify_step(os.path.join(self.directory, str(step)))
            if _anywhere(why is not None):
                bad.append(self._move_aside(step, why or ("other", "found bad on process 0")))
                continue
            try:
                saved_meta = self._restore_meta(step)
            except Exception as e:  # noqa: BLE001 - any failure to read is a bad checkpoint
                why = ("restore-error", f"meta: {short_error(e)}")
            if _anywhere(why is not None):
                bad.append(self._move_aside(step, why or ("other", "found bad on another process")))
                continue
            accepted, unchecked = compare_config(
                saved_meta.get("config"), self.config, accept, f"{self.directory}/{step}"
            )
            try:
                state, meta = self.restore(step, abstract_state, data_iter)
                if not bool(_all_finite(state)):
                    why = ("not-finite", "the restored state holds NaN or Inf")
            except Exception as e:  # orbax / tensorstore errors of a damaged step
                if isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e):
                    raise  # the host or device, not the checkpoint
                why = ("restore-error", short_error(e))
            if _anywhere(why is not None):
                bad.append(self._move_aside(step, why or ("other", "found bad on another process")))
                continue
            if not verified and jax.process_index() == 0:
                log.warning(
                    "checkpoint step %d has no %s (written before manifests, or its run stopped "
                    "before writing it): restored unverified (it loads and is finite)",
                    step,
                    MANIFEST,
                )
            return Restored(step, state, meta, verified, accepted, unchecked)
        aside = os.path.join(self.directory, QUARANTINE_DIR)
        if bad:
            raise CheckpointError(
                f"{self.directory}: no usable checkpoint: {'; '.join(bad)}; all moved to {aside}/ "
                "(to start over, move the run's checkpoints/ away or use another --workdir)"
            )
        if os.path.isdir(aside) and os.listdir(aside):
            raise CheckpointError(
                f"{self.directory}: no usable checkpoint: every step was moved aside as bad "
                f"({', '.join(sorted(os.listdir(aside)))} in {aside}/); to start over, move the "
                "run's checkpoints/ away or use another --workdir"
            )
        return None

    def restore_before(
        self, step: int, abstract_state: Any, *, accept: str = ""
    ) -> Restored | None:
        """A loss-spike rollback (train/spikes.py) to before `step`, the spike's first step: the steps
        at or after it (written on a signal while the spike was building) are moved aside as
        bad-spike, then the newest good earlier step is restored like `restore_latest` does, its state
        only (the live data iterator goes on: the batches in between are skipped). None: no step
        before `step` (nothing is moved then)."""
        self.wait()
        steps = sorted(self.all_steps(), reverse=True)
        if not any(s < step for s in steps):
            return None
        for s in steps:
            if s >= step:
                self._move_aside(s, ("spike", f"written during the loss spike from step {step}"))
        return self.restore_latest(abstract_state, None, accept=accept)

    def _restore_meta(self, step: int) -> dict:
        out = self.mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def _move_aside(self, step: int, why: tuple[str, str]) -> str:
        """checkpoints/<step> -> checkpoints/quarantine/<step>.bad-<reason> (process 0, between barriers),
        forgotten by the manager; -> "step N (detail)" for the error that may follow."""
        slug, detail = why
        src = os.path.join(self.directory, str(step))
        aside = os.path.join(self.directory, QUARANTINE_DIR)
        dest = os.path.join(aside, f"{step}.bad-{slug}")
        self._moved += 1
        ocp.multihost.sync_global_processes(f"dsvl_move_aside_{step}_{self._moved}_a")
        if jax.process_index() == 0:
            os.makedirs(aside, exist_ok=True)
            n = 1
            while os.path.exists(dest):
                n += 1
                dest = os.path.join(aside, f"{step}.bad-{slug}-{n}")
            os.rename(src, dest)
            with open(os.path.join(dest, "why.txt"), "w") as f:
                f.write(detail + "\n")
        ocp.multihost.sync_global_processes(f"dsvl_move_aside_{step}_{self._moved}_b")
        self.mngr.reload()
        log.warning(
            "checkpoint step %d is bad (%s: %s): moved to %s; trying the previous step",
            step,
            slug,
            detail,
            dest,
        )
        return f"step {step} ({slug}: {detail})"

    def wait(self) -> None:
        self.mngr.wait_until_finished()
        if self._manifests is not None:
            self._manifests.join()

    def close(self) -> None:
        if self.mngr is not None:
            self.wait()
            self.mngr.close()
            self.mngr = None


def _anywhere(flag: bool) -> bool:
    """`flag` on any process (every process calls it at the same point)."""
    if jax.process_count() == 1:
        return flag
    return bool(ocp.multihost.global_max([int(flag)])[0])


def short_error(e: BaseException) -> str:
    """An exception as a short one-line reason (orbax / tensorstore messages run over many lines)."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:200]}"


def _files(step_dir: str) -> list[str]:
    """Every file under a step folder but the manifest, as sorted '/'-separated relative paths."""
    out = []
    for root, _, names in os.walk(step_dir):
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), step_dir).replace(os.sep, "/")
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(step_dir: str, step: int, *, finite: bool) -> dict:
    """The manifest of a committed step (module doc), written atomically (tmp + rename)."""
    files = {
        rel: {
            "size": os.path.getsize(os.path.join(step_dir, rel)),
            "sha256": _sha256(os.path.join(step_dir, rel)),
        }
        for rel in _files(step_dir)
    }
    manifest = dict(format=1, step=step, finite=bool(finite), algorithm="sha256", files=files)
    tmp = os.path.join(step_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(step_dir, MANIFEST))
    return manifest


def verify_step(step_dir: str) -> tuple[tuple[str, str] | None, bool]:
    """-> ((reason slug, detail) or None, verified): the files of a step against its manifest; no
    manifest: (None, False), unverified."""
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(path):
        return None, False
    try:
        with open(path) as f:
            m = json.load(f)
        files, finite = m["files"], m["finite"]
        expected = {rel: (int(e["size"]), str(e["sha256"])) for rel, e in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return ("manifest", f"{MANIFEST} unreadable: {short_error(e)}"), False
    if finite is not True:
        return ("not-finite", f"{MANIFEST} records a non-finite state"), False
    for rel, (size, digest) in expected.items():
        full = os.path.join(step_dir, rel)
        if not os.path.isfile(full):
            return ("missing", f"{rel} is missing"), False
        if (got := os.path.getsize(full)) != size:
            return ("size", f"{rel} has {got} bytes, the manifest {size}"), False
        if _sha256(full) != digest:
            return ("digest", f"{rel}: sha256 differs from the manifest's"), False
    return None, True


def _flat(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def compare_config(
    saved: Mapping | None, current: Mapping | None, accept: str, where: str
) -> tuple[dict, dict]:
    """(accepted, unchecked): the changes (dotted key -> [old, new]) of `current` against the config a
    checkpoint was written under, split by `accept` (resume_overrides: comma list of dotted keys or
    prefixes) and RESUME_UNCHECKED; any other change: ConfigError listing them and the flag that
    accepts them. No saved config (a checkpoint from before config checks): nothing compared."""
    if saved is None or current is None:
        if current is not None:
            log.warning("%s records no config (written before config checks): not compared", where)
        return {}, {}
    old, new = _flat(saved), _flat(current)
    absent = "(absent)"
    changes = {
        k: [old.get(k, absent), new.get(k, absent)]
        for k in sorted(old.keys() | new.keys())
        if old.get(k, absent) != new.get(k, absent)
    }
    allowed = [p.strip() for p in accept.split(",") if p.strip()]
    unchecked = {k: v for k, v in changes.items() if _under(k, RESUME_UNCHECKED)}
    accepted = {k: v for k, v in changes.items() if k not in unchecked and _under(k, allowed)}
    refused = [k for k in changes if k not in unchecked and k not in accepted]
    if refused:
        show = lambda v: v if v == absent else json.dumps(v)  # noqa: E731
        listing = ", ".join(f"{k} {show(changes[k][0])} -> {show(changes[k][1])}" for k in refused)
        flag = ",".join([*allowed, *refused])
        raise ConfigError(
            f"the config differs from the one {where} was written under: {listing}; to resume with "
            f"these changes: --config.resume_overrides={flag} (or start a new --workdir)"
        )
    return accepted, unchecked


def record_config_changes(workdir: str, step: int, accepted: dict, unchecked: dict) -> None:
    """Append a resume's config changes to <workdir>/config_history.jsonl (one JSON line)."""
    if not accepted and not unchecked:
        return
    rec = {
        "step": step,
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "accepted": accepted,
        "unchecked": unchecked,
    }
    with open(os.path.join(workdir, CONFIG_HISTORY), "a") as f:
        f.write(json.dumps(rec) + "\n")


def step_of(path: str) -> int | None:
    """The step of a step-checkpoint folder (`.../checkpoints/<step>` holding a state item), else None."""
    name = os.path.basename(os.path.normpath(path))
    return int(name) if name.isdigit() and os.path.isdir(os.path.join(path, STATE_ITEM)) else None


def saved_steps(directory: str) -> list[int]:
    """The complete steps (holding a state item) under a run's checkpoints/ folder, ascending; read
    from the folder names, without an orbax manager (which would create the folder)."""
    if not os.path.isdir(directory):
        return []
    found = (step_of(os.path.join(directory, name)) for name in os.listdir(directory))
    return sorted(s for s in found if s is not None)


def load_step_params(path: str, cfg: ModelConfig, shardings=None) -> Params:
    """Only the params of a step checkpoint (the optimizer state is not read): for chat, eval, export
    of a run that is still going."""
    state_dir = os.path.join(path, STATE_ITEM)
    if not os.path.isdir(state_dir):
        raise CheckpointError(f"{path}: not a step checkpoint (no {STATE_ITEM}/ item)")
    with ocp.PyTreeCheckpointer() as ckptr:
        tree = compat.orbax_tree_metadata(ckptr, state_dir)
        if not isinstance(tree, dict) or "params" not in tree:
            raise CheckpointError(f"{path}: the state item holds no params")
        check_params(cfg, shapes(tree["params"]), path)
        target = {"params": restore_target(cfg, shardings)}
        restore_args = jax.tree.map(
            lambda a: ocp.ArrayRestoreArgs(
                sharding=a.sharding, global_shape=a.shape, dtype=a.dtype
            ),
            target,
        )
        out = ckptr.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True
            ),
        )
    return out["params"]
