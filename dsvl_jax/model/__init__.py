"""Flax modules of DeepSeek-VL and their configuration. See WORKSPACE.md for the map."""

from dsvl_jax.model.config import ConfigError, ModelConfig, model_config_from_dict
from dsvl_jax.model.params import abstract_params, count_params, init_params, logical_axes
from dsvl_jax.model.sizes import SIZES, model_config, model_config_dict
from dsvl_jax.model.vlm import DeepseekVL

__all__ = [
    "SIZES",
    "ConfigError",
    "DeepseekVL",
    "ModelConfig",
    "abstract_params",
    "count_params",
    "init_params",
    "logical_axes",
    "model_config",
    "model_config_dict",
    "model_config_from_dict",
]
