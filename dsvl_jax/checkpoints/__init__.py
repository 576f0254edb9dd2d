"""Reading and writing model state: the one place every caller loads a model from.

- `open_model(path)` / `load_model(path)`: run dirs, step checkpoints, params checkpoints and HF
  folders (sources.py); every tensor is checked against the config with one report
  (`errors.CheckpointMismatch`).
- `save_params` / `load_params`: params checkpoints (params.py).
- `RunCheckpoints`: a run's step checkpoints: train state + data iterator + meta (run.py).
- `from_hf` / `to_hf`: conversion to and from HF folders, tokenizer included (convert.py).
Below `train/`, `infer` and `eval`; above `interop/` (it reads HF folders through it).
"""

from dsvl_jax.checkpoints.convert import from_hf, to_hf
from dsvl_jax.checkpoints.params import load_params, params_equal, read_model_config, save_params
from dsvl_jax.checkpoints.run import CheckpointRefused, RunCheckpoints
from dsvl_jax.checkpoints.sources import FINAL_DIR, ModelSource, load_model, open_model
from dsvl_jax.errors import CheckpointError, CheckpointMismatch

__all__ = [
    "FINAL_DIR",
    "CheckpointError",
    "CheckpointMismatch",
    "CheckpointRefused",
    "ModelSource",
    "RunCheckpoints",
    "from_hf",
    "load_model",
    "load_params",
    "open_model",
    "params_equal",
    "read_model_config",
    "save_params",
    "to_hf",
]
