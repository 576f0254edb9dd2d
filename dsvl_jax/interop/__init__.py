"""HuggingFace transformers interop: one name table (hf_names), import, export, config mapping.

To load any model folder (HF included) use `dsvl_jax.checkpoints.open_model`.
"""

from dsvl_jax.errors import CheckpointMismatch
from dsvl_jax.interop.hf_export import save_hf
from dsvl_jax.interop.hf_import import import_folder, load_hf

__all__ = ["CheckpointMismatch", "import_folder", "load_hf", "save_hf"]
