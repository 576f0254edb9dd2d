"""DeepSeek-VL glue: towers -> adaptor -> image embeddings spliced into the LLM input.

Images come either as a flat batch [N, H, W, 3] (HF layout: the k-th run of `num_image_tokens`
image-token positions in the row-major flattened [B, T] ids receives image k), or per sample
[B, I, H, W, 3] (training layout: row b's image tokens take row b's images, so rows never borrow
another row's images and micro-batches can be cut anywhere).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dsvl_jax.model.adaptor import Adaptor
from dsvl_jax.model.config import ModelConfig
from dsvl_jax.model.llm import Decoder, KVCache
from dsvl_jax.model.sam import SamEncoder
from dsvl_jax.model.siglip import SiglipEncoder


def splice_indices(
    ids: jax.Array, image_token_id: int, num_features: int
) -> tuple[jax.Array, jax.Array]:
    """Flat layout: for each [B, T] position, (is_image, index into the flat [num_features, D] features)."""
    is_image = ids == image_token_id
    idx = jnp.cumsum(is_image.reshape(-1)) - 1
    return is_image, jnp.clip(idx, 0, max(num_features - 1, 0)).reshape(ids.shape)


def splice_rows(ids: jax.Array, image_token_id: int, per_row: int) -> tuple[jax.Array, jax.Array]:
    """Per-sample layout: (is_image [B, T], index into that row's [per_row, D] features)."""
    is_image = ids == image_token_id
    idx = jnp.cumsum(is_image, axis=1) - 1
    return is_image, jnp.clip(idx, 0, max(per_row - 1, 0))


class DeepseekVL(nn.Module):
    cfg: ModelConfig

    def setup(self):
        self.siglip = SiglipEncoder(self.cfg)
        if self.cfg.hybrid:
            self.sam = SamEncoder(self.cfg)
        self.adaptor = Adaptor(self.cfg)
        self.llm = Decoder(self.cfg)

    def towers(
        self, pixels: jax.Array, high_pixels: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        """NHWC pixels [N, 384, 384, 3] (+ [N, 1024, 1024, 3]) -> per-tower features [N, 576, W]."""
        out = {"siglip": self.siglip(pixels)}
        if self.cfg.hybrid:
            out["sam"] = self.sam(high_pixels)
        return out

    def encode_images(self, pixels: jax.Array, high_pixels: jax.Array | None = None) -> jax.Array:
        """-> image embeddings [N, num_image_tokens, llm.hidden]."""
        f = self.towers(pixels, high_pixels)
        return self.adaptor(f["siglip"], f.get("sam"))

    def __call__(
        self,
        ids: jax.Array,
        positions: jax.Array,
        segments: jax.Array,
        *,
        pixels: jax.Array | None = None,
        high_pixels: jax.Array | None = None,
        image_embeds: jax.Array | None = None,
        cache: KVCache | None = None,
        cache_index: jax.Array | int = 0,
        output: str = "logits",
    ) -> tuple[jax.Array, KVCache | None]:
        """ids/positions [B, T], segments [B, S] (0 = padding) -> (logits [B, T, V] f32, cache)."""
        inject = inject_mask = None
        per_sample = pixels is not None and pixels.ndim == 5
        if image_embeds is None and pixels is not None:
            if per_sample:
                b, i = pixels.shape[:2]
                flat_hp = (
                    None
                    if high_pixels is None
                    else high_pixels.reshape(b * i, *high_pixels.shape[2:])
                )
                image_embeds = self.encode_images(pixels.reshape(b * i, *pixels.shape[2:]), flat_hp)
                image_embeds = image_embeds.reshape(b, -1, image_embeds.shape[-1])  # [B, I*N, D]
            else:
                image_embeds = self.encode_images(pixels, high_pixels)
        if image_embeds is not None and per_sample:
            inject_mask, idx = splice_rows(ids, self.cfg.image_token_id, image_embeds.shape[1])
            inject = jnp.take_along_axis(image_embeds, idx[..., None], axis=1)
        elif image_embeds is not None:
            flat = image_embeds.reshape(-1, image_embeds.shape[-1])
            inject_mask, idx = splice_indices(ids, self.cfg.image_token_id, flat.shape[0])
            inject = flat[idx]
        return self.llm(
            ids,
            positions,
            segments,
            inject=inject,
            inject_mask=inject_mask,
            cache=cache,
            cache_index=cache_index,
            output=output,
        )
