"""dsvl_jax: DeepSeek-VL style vision-language models in JAX/Flax.

Public entry points: `dsvl_jax.api` (load / forward / generate), `dsvl_jax.checkpoints` (load any model
folder, convert to and from HF), `dsvl_jax.infer.Engine` (chat), `dsvl_jax.model` (modules, configs).
Commands: `python -m dsvl_jax.<command>` (--help on each). Map of the code: WORKSPACE.md.
"""

__version__ = "0.1.0"
