"""dsvl_jax: DeepSeek-VL style vision-language models in JAX/Flax.

Public entry points: `dsvl_jax.api` (load / forward / generate), `dsvl_jax.model` (modules, configs),
`dsvl_jax.interop` (HF import/export). Commands: `python -m dsvl_jax.<command>`.
"""
__version__ = "0.1.0"
