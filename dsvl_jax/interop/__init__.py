"""HuggingFace transformers interop: one name table (hf_names), import, export, config mapping."""
from dsvl_jax.interop.hf_export import save_hf
from dsvl_jax.interop.hf_import import CheckpointMismatch, load_hf

__all__ = ["save_hf", "load_hf", "CheckpointMismatch"]
