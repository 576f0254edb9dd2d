"""Vision-language adaptors (the paper's "hybrid MLP"), mapping tower features to LLM embeddings.

mlp (1.3B):              low [B,N,Ws] -> Linear(Ws, D) -> GELU -> Linear(D, D)
hybrid_split_mlp (7B):   concat[high_up(high) [B,N,D/2], low_up(low) [B,N,D/2]] -> GELU -> Linear(D, D)
The concat order is [high, low], as in the original code and HF.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.layers import dense, dtype_of, gelu


class Adaptor(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, low: jax.Array, high: jax.Array | None = None) -> jax.Array:
        dt, pdt, d = dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype), self.cfg.llm.hidden
        if self.cfg.adaptor.kind == "mlp":
            x = dense(d, ("vit_embed", "mlp"), dtype=dt, param_dtype=pdt, name="fc1")(low)
        else:
            if high is None:
                raise ValueError(
                    "model.adaptor.kind='hybrid_split_mlp' needs high-res (SAM) features"
                )
            h = dense(d // 2, ("vit_embed", "mlp"), dtype=dt, param_dtype=pdt, name="high_up")(high)
            l = dense(d // 2, ("vit_embed", "mlp"), dtype=dt, param_dtype=pdt, name="low_up")(low)
            x = jnp.concatenate([h, l], axis=-1)
        return dense(d, ("mlp", "embed"), dtype=dt, param_dtype=pdt, name="fc2")(gelu(x))
