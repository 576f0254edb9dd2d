"""Demo: caption a synthetic image with a randomly initialised model, then checkpoint + HF export.

Command (what `make demo` runs):
  python -m dsvl_jax.demo --config=experiments/demo.py:tiny
Hardware: any CPU (2 cores: ~15 s including compiles). Sizes: tiny | tiny_siglip | 1.3b | 7b
(the real sizes need the memory of their parameters: ~8 GB / ~30 GB in f32).
"""
import ml_collections

from dsvl_jax.model.sizes import model_config_dict


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = model_config_dict(arg or "tiny")
    c.seed = 0
    c.bos_id = 1
    c.prompt_ids = (101, 102, 103)  # stands in for "Describe the image." until the tokenizer lands
    c.max_new_tokens = 16
    c.out_dir = "runs/demo"
    return c.lock()
