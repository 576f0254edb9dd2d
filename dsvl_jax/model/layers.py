"""Small building blocks shared by the towers and the LLM, every parameter named by logical axes.

Logical axis names used in this package (parallel/rules.py maps them onto mesh axes):
  LLM:     vocab, embed, mlp, heads, kv_heads, head_dim, norm
  vision:  vit_embed, vit_mlp, vit_heads, head_dim, patch (flattened conv input), conv_in, conv_out,
           pos (position rows), rel_pos
  stacked: layers (leading axis added by nn.scan)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


def dtype_of(name: str) -> Dtype:
    return jnp.dtype(name)


def boxed(init: Callable, names: Sequence[str]) -> Callable:
    """An initializer whose output carries logical axis names (nn.LogicallyPartitioned)."""
    return nn.with_logical_partitioning(init, tuple(names))


class DenseGeneral(nn.Module):
    """y = x . kernel (+ bias) contracting `axis` of x with the leading kernel axes.

    The kernel is created in its final shape [*in, *out] (no reshape inside the initializer), so its
    logical names apply directly; flax's own DenseGeneral reshapes a boxed kernel and trips over
    logical sharding constraints.
    """

    features: tuple[int, ...]
    names: tuple[str, ...]
    axis: tuple[int, ...] = (-1,)
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_std: float = 0.02

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        axis = tuple(a % x.ndim for a in self.axis)
        in_shape = tuple(x.shape[a] for a in axis)
        kernel = self.param(
            "kernel",
            boxed(nn.initializers.normal(self.init_std), self.names),
            in_shape + self.features,
            self.param_dtype,
        )
        # Accumulate in f32 whatever the compute dtype (the MXU does anyway; XLA:CPU's bf16 x bf16 -> bf16
        # matmul runs at less than half the speed of bf16 x bf16 -> f32).
        y = jax.lax.dot_general(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            ((axis, tuple(range(len(axis)))), ((), ())),
            preferred_element_type=jnp.float32,
        ).astype(self.dtype)
        if self.use_bias:
            bias = self.param(
                "bias",
                boxed(nn.initializers.zeros_init(), self.names[len(axis) :]),
                self.features,
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y


class Embed(nn.Module):
    """Token embedding [vocab, embed]. The lookup reads a replicated copy of the table in the compute
    dtype: a gather from a sharded table conflicts with batch-sharded outputs and the partitioner
    would replicate it anyway, less predictably. `attend` is the tied output head (x . table^T)."""

    vocab: int
    dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding",
            boxed(nn.initializers.normal(0.02), ("vocab", "embed")),
            (self.vocab, self.dim),
            self.param_dtype,
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        table = nn.with_logical_constraint(self.embedding.astype(self.dtype), (None, None))
        return jnp.take(table, ids, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("btd,vd->btv", x.astype(self.dtype), self.embedding.astype(self.dtype))


def dense(
    features,
    names: Sequence[str],
    *,
    axis=-1,
    use_bias: bool = True,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    init_std: float = 0.02,
    name: str | None = None,
) -> DenseGeneral:
    """A DenseGeneral whose kernel is named `names` (input axes first, then output axes)."""
    features = tuple(features) if isinstance(features, (tuple, list)) else (features,)
    axis = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    return DenseGeneral(
        features=features,
        names=tuple(names),
        axis=axis,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        init_std=init_std,
        name=name,
    )


def patch_embed(width: int, patch: int, dtype, param_dtype) -> nn.Conv:
    """Non-overlapping patch x patch conv with bias: NHWC pixels -> [B, H/p, W/p, width]."""
    return nn.Conv(
        width,
        (patch, patch),
        strides=(patch, patch),
        padding="VALID",
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=boxed(
            nn.initializers.lecun_normal(), ("conv_h", "conv_w", "conv_in", "vit_embed")
        ),
        bias_init=boxed(nn.initializers.zeros_init(), ("vit_embed",)),
        name="patch_embed",
    )


def layer_norm(
    axis_name: str, eps: float, dtype, param_dtype, name: str | None = None
) -> nn.LayerNorm:
    """LayerNorm with statistics in f32 (torch's LayerNorm does the same for half inputs)."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        use_fast_variance=False,
        scale_init=boxed(nn.initializers.ones_init(), (axis_name,)),
        bias_init=boxed(nn.initializers.zeros_init(), (axis_name,)),
        name=name,
    )


class RMSNorm(nn.Module):
    """LLaMA RMSNorm: normalise in f32, cast back, then scale (same order as HF LlamaRMSNorm)."""

    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", boxed(nn.initializers.ones_init(), ("norm",)), (x.shape[-1],), self.param_dtype
        )
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * y.astype(self.dtype)


def gelu(x: jax.Array, kind: str = "gelu") -> jax.Array:
    """`gelu` = exact erf GELU (SigLIP/SAM/adaptor in DeepSeek-VL); `gelu_tanh` = tanh approximation."""
    return jax.nn.gelu(x, approximate=(kind == "gelu_tanh"))


_POLICIES = {
    "full": None,  # save nothing: recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_attn_out": jax.checkpoint_policies.save_only_these_names("attn_out"),
}


def maybe_remat(
    block_cls: type[nn.Module],
    policy: str,
    static_argnums: tuple[int, ...] = (),
    scanned: bool = False,
) -> type[nn.Module]:
    """Wrap a block class in nn.remat according to a named policy ('none' leaves it as is)."""
    if policy == "none":
        return block_cls
    return nn.remat(
        block_cls, policy=_POLICIES[policy], prevent_cse=not scanned, static_argnums=static_argnums
    )


def repeat_blocks(
    block_cls: type[nn.Module],
    n: int,
    *,
    scan: bool,
    remat_policy: str,
    name: str,
    num_broadcast: int = 0,
    **block_kwargs,
) -> Callable:
    """Apply `n` copies of `block_cls` either stacked under nn.scan or unrolled.

    Block signature: block(carry, xs_i, *broadcast) -> (carry, ys_i). `xs` (per-layer inputs such as a
    KV cache) has a leading layer axis or is None; `ys` comes back stacked the same way. Scanned
    parameters get a leading axis named `layers`; unrolled ones live under `{name}_{i}`. Must be
    called inside a compact method of the parent module.
    """
    cls = maybe_remat(block_cls, remat_policy, scanned=scan)

    def run(carry, xs, *broadcast):
        if scan:
            scanned = nn.scan(
                cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=n,
                in_axes=(0,) + (nn.broadcast,) * num_broadcast,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            return scanned(name=name, **block_kwargs)(carry, xs, *broadcast)
        ys = []
        for i in range(n):
            xs_i = jax.tree.map(lambda a, i=i: a[i], xs)
            carry, y = cls(name=f"{name}_{i}", **block_kwargs)(carry, xs_i, *broadcast)
            ys.append(y)
        ys = None if all(y is None for y in ys) else jax.tree.map(lambda *a: jnp.stack(a), *ys)
        return carry, ys

    return run
