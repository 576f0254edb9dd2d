"""One way to load a model: any folder that holds model state -> (config, params, tokenizer).

    src = open_model("runs/7b/stage3")          # reads only the config
    cfg, params = src.cfg, src.params()         # validated against the config (CheckpointMismatch)

Accepted folders (`kind`):
  run     a training workdir: its final/ params when the stage finished, else its latest step
  step    one step checkpoint of a run: RUN/checkpoints/<step> (params only, no optimizer state)
  params  a params checkpoint: model_config.json + params/ (what `final/` and `convert from-hf` write)
  hf      a HuggingFace folder: config.json + safetensors, in transformers' DeepseekVL(Hybrid) layout
          or DeepSeek's original release layout (`multi_modality`)
`params(cfg, shardings)` may change non-shape fields of the config (dtype, remat, attention) and
places the arrays with `shardings` (a tree like the params), else on the first device.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np

from dsvl_jax import jsonfile
from dsvl_jax.checkpoints import params as P
from dsvl_jax.checkpoints import run as R
from dsvl_jax.checkpoints.talk import TALK_DIR, read_talk
from dsvl_jax.data.template import system_prompt
from dsvl_jax.data.tokenizer import find_tokenizer
from dsvl_jax.errors import CheckpointError
from dsvl_jax.interop import hf_import
from dsvl_jax.model.config import ModelConfig, model_config_from_dict
from dsvl_jax.model.params import Params

# The layout of a training workdir (train/loop.py writes it).
# params + model_config.json (+ tokenizer) of the last step: next stage's init_from
FINAL_DIR = "final"
STEPS_DIR = "checkpoints"  # one folder per saved step
RUN_CONFIG = "config.json"  # the full run config, as JSON
KINDS = ("run", "step", "params", "hf")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A folder of model state, opened: its kind, the files to read, the stored model config."""

    kind: str  # what the user named: one of KINDS
    path: str  # the folder the params are read from (a run resolves to its final/ or a step)
    cfg: ModelConfig
    tokenizer: str | None  # the tokenizer stored with it (file or folder), None when there is none
    layout: str = ""  # how `path` stores them: "params", "step" or "hf" (default: the kind's)
    # the system prompt text the model was trained with (talk.py), None when not recorded
    system_prompt: str | None = None

    def params(self, cfg: ModelConfig | None = None, shardings=None) -> Params:
        cfg = cfg or self.cfg
        layout = self.layout or self.kind
        if layout == "params":
            return P.load_params(self.path, cfg, shardings)
        if layout == "step":
            return R.load_step_params(self.path, cfg, shardings)
        params = hf_import.import_folder(self.path, cfg)
        if shardings is None:
            shardings = jax.tree.map(
                lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), params
            )
        return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), params, shardings)


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, RUN_CONFIG)) and (
        os.path.isdir(os.path.join(path, FINAL_DIR)) or os.path.isdir(os.path.join(path, STEPS_DIR))
    )


def open_model(path: str | os.PathLike) -> ModelSource:
    """Detect what `path` holds and read its model config (no tensors are read)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such folder")
    if P.is_params_checkpoint(path):
        talk = read_talk(path)
        tok = (talk and talk.tokenizer) or find_tokenizer(path)
        system = talk.system_prompt if talk else None
        return ModelSource("params", path, P.read_model_config(path), tok, system_prompt=system)
    if R.step_of(path) is not None:
        why, _ = R.verify_step(path)
        if why is not None:
            raise CheckpointError(f"{path}: a damaged step checkpoint ({why[0]}: {why[1]})")
        run = os.path.dirname(os.path.dirname(path))
        conf = _run_config(run)
        tok, system = _run_talk(run, conf)
        return ModelSource("step", path, _model_config(conf), tok, system_prompt=system)
    if is_run_dir(path):
        conf = _run_config(path)
        final = os.path.join(path, FINAL_DIR)
        if P.is_params_checkpoint(final):
            src = open_model(final)
            tok, system = _run_talk(path, conf)
            return dataclasses.replace(
                src,
                kind="run",
                layout="params",
                tokenizer=src.tokenizer or tok,
                system_prompt=system if src.system_prompt is None else src.system_prompt,
            )
        steps = R.saved_steps(os.path.join(path, STEPS_DIR))
        if not steps:
            raise CheckpointError(
                f"{path}: a run folder with neither {FINAL_DIR}/ nor a saved step yet"
            )
        step_dir = _newest_sound_step(os.path.join(path, STEPS_DIR), steps)
        tok, system = _run_talk(path, conf)
        return ModelSource("run", step_dir, _model_config(conf), tok, "step", system)
    if os.path.isfile(os.path.join(path, "config.json")):
        conf = jsonfile.read(os.path.join(path, "config.json"), CheckpointError, dict)
        if "train" in conf and "model" in conf:  # a run's config.json: the run saved nothing yet
            raise CheckpointError(
                f"{path}: a run folder with neither {FINAL_DIR}/ nor a saved step yet"
            )
        cfg = hf_import.read_config(path)  # transformers' layout or DeepSeek's original release
        tok = path if os.path.isfile(os.path.join(path, "tokenizer.json")) else None
        return ModelSource("hf", path, cfg, tok)
    raise CheckpointError(
        f"{path}: not a model folder: expected a run dir ({RUN_CONFIG} + {FINAL_DIR}/ or {STEPS_DIR}/), "
        f"a step checkpoint, a params checkpoint ({P.CONFIG_FILE} + {P.PARAMS_DIR}/) "
        "or an HF folder (config.json + safetensors)"
    )


def _newest_sound_step(steps_dir: str, steps: list[int]) -> str:
    """The newest step of a run whose files match its manifest (a step the run is still writing the
    manifest of counts as sound). Damaged ones are passed over with a warning, not moved: a reader
    never changes a run's folder (the run itself moves them aside when it resumes)."""
    bad = []
    for step in reversed(steps):
        step_dir = os.path.join(steps_dir, str(step))
        why, _ = R.verify_step(step_dir)
        if why is None:
            if bad:
                log.warning(
                    "%s: reading step %d (newer steps are damaged: %s)",
                    steps_dir,
                    step,
                    "; ".join(bad),
                )
            return step_dir
        bad.append(f"step {step} ({why[0]}: {why[1]})")
    raise CheckpointError(f"{steps_dir}: every saved step is damaged: {'; '.join(bad)}")


def load_model(path: str | os.PathLike, **overrides) -> tuple[ModelConfig, Params]:
    """(cfg, params) of any model folder; `overrides` replace top-level config fields (dtype, ...)."""
    src = open_model(path)
    cfg = dataclasses.replace(src.cfg, **overrides) if overrides else src.cfg
    return cfg, src.params(cfg)


def _run_config(run: str) -> dict:
    """A run's config.json, with the file it came from (for error messages) under "__file__"."""
    path = os.path.join(run, RUN_CONFIG)
    return {**jsonfile.read(path, CheckpointError, dict), "__file__": path}


def _model_config(conf: dict) -> ModelConfig:
    model = conf.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"{conf['__file__']}: no model section")
    return model_config_from_dict(model)


def _run_talk(run: str, conf: dict) -> tuple[str | None, str | None]:
    """(tokenizer, system prompt text) a run trained with: its talk/ record (the tokenizer copied at
    start-up), else what its config.json says (older runs)."""
    talk = read_talk(os.path.join(run, TALK_DIR))
    if talk is not None:
        return talk.tokenizer or _tokenizer(conf), talk.system_prompt
    setting = (conf.get("data") or {}).get("system_prompt")
    return _tokenizer(conf), None if setting is None else system_prompt(setting)


def _tokenizer(conf: dict) -> str | None:
    """The tokenizer a run trained with (data.tokenizer), if it is still where the config says."""
    tok = (conf.get("data") or {}).get("tokenizer") or ""
    return tok if tok and os.path.exists(tok) else None
