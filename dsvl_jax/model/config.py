"""Typed, hashable model configuration built from ml_collections ConfigDicts.

Flax modules need hashable attributes, and validation belongs at load time, so the ConfigDict that
users edit (`model.siglip`, `model.sam`, `model.adaptor`, `model.llm`) is turned into frozen
dataclasses here, once, with every check that names the field that is wrong.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from dsvl_jax import errors

VISION_KINDS = ("siglip", "hybrid")
ADAPTOR_KINDS = ("mlp", "hybrid_split_mlp")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attn_out")
DTYPES = ("float32", "bfloat16", "float16")


# A model config field has a value the model cannot be built with (one error type for all configs).
ConfigError = errors.ConfigError


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """SigLIP ViT (low-res, semantic tower). Output: final-LayerNorm features [B, N, width]."""

    image_size: int = 384
    patch_size: int = 16
    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    act: str = "gelu"  # exact erf GELU; "gelu_tanh" for stock SigLIP checkpoints
    ln_eps: float = 1e-6

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """SAM-B ViTDet image encoder (high-res, detail tower) with DeepSeek's neck_hd + downsamples."""

    image_size: int = 1024
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    out_chans: int = 256
    ln_eps: float = 1e-6
    # Global-attention blocks run their queries in chunks of this many tokens (whole grid rows, dividing the
    # grid) against all keys, so only [images, heads, chunk, grid^2] logits live at a time instead of
    # [images, heads, grid^2, grid^2] (model/sam.py rel_pos_attention). Same maths, different peak memory:
    # 0 (or >= grid^2) = one dense block. At 1024 px (4096 tokens) 512 cuts the global-attention
    # temporaries 8x; with it 7B stage 2 fits v5p-256 at one micro-batch (launch/POD.md).
    global_attn_q_chunk: int = 512

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def out_width(self) -> int:
        """Channels after the two stride-2 downsample convs (256 -> 512 -> 1024)."""
        return self.out_chans * 4


@dataclasses.dataclass(frozen=True)
class AdaptorConfig:
    """`mlp`: Linear-GELU-Linear (1.3B). `hybrid_split_mlp`: [high_up ‖ low_up]-GELU-Linear (7B)."""

    kind: str = "mlp"


@dataclasses.dataclass(frozen=True)
class LlmConfig:
    """LLaMA-style DeepSeek LLM decoder."""

    vocab_size: int = 102400
    hidden: int = 2048
    layers: int = 24
    heads: int = 16
    kv_heads: int = 16
    head_dim: int = 128
    mlp_dim: int = 5632
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    tie_embeddings: bool = False
    max_position: int = 16384


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The whole VLM. `vision` picks the towers; the adaptor kind must agree with it."""

    vision: str = "siglip"
    siglip: SiglipConfig = SiglipConfig()
    sam: SamConfig = SamConfig()
    adaptor: AdaptorConfig = AdaptorConfig()
    llm: LlmConfig = LlmConfig()
    image_token_id: int = 100015
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # master weights
    scan_layers: bool = True  # stack SigLIP and LLM blocks on a leading `layers` axis
    remat_policy: str = "none"  # per-block rematerialisation for training
    attention: str = "xla"  # attention kernel (see model/attention.py)

    @property
    def hybrid(self) -> bool:
        return self.vision == "hybrid"

    @property
    def num_image_tokens(self) -> int:
        return self.siglip.num_tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_config_dict(self) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(self.to_dict())


_SECTIONS = {"siglip": SiglipConfig, "sam": SamConfig, "adaptor": AdaptorConfig, "llm": LlmConfig}


def _build(cls, values: Mapping[str, Any], where: str):
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: a {type(values).__name__}, expected a mapping of fields")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        if isinstance(v, (list, tuple)):
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def model_config_from_dict(d: Mapping[str, Any] | ml_collections.ConfigDict) -> ModelConfig:
    """ConfigDict / plain dict (as stored in checkpoints) -> validated ModelConfig."""
    if isinstance(d, ml_collections.ConfigDict):
        d = d.to_dict()
    if not isinstance(d, Mapping):
        raise ConfigError(f"model: a {type(d).__name__}, expected a mapping of fields")
    d = dict(d)
    sections = {k: _build(cls, d.pop(k, None) or {}, f"model.{k}") for k, cls in _SECTIONS.items()}
    cfg = _build(ModelConfig, {**d, **sections}, "model")
    validate(cfg)
    return cfg


def _check(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{field}: {msg}")


# Upper bounds no real model comes near (DeepSeek-VL 7B: hidden 4096, 30 layers, vocab 102400, 16384
# positions, 1024 px): a value past one is a typo or a hostile file, refused before anything is
# allocated or traced. max_position: RoPE has no learned table, but model/llm.py builds cos/sin tables
# [max_position, head_dim/2] on the host (f32 angles, f64 cos and sin) for every trace.
MAX_IMAGE_SIZE = 8192
LIMITS = {
    "siglip": dict(
        image_size=MAX_IMAGE_SIZE,
        patch_size=MAX_IMAGE_SIZE,
        width=65536,
        depth=1024,
        heads=1024,
        mlp_dim=2**18,
    ),
    "sam": dict(
        image_size=MAX_IMAGE_SIZE,
        patch_size=MAX_IMAGE_SIZE,
        width=65536,
        depth=1024,
        heads=1024,
        mlp_dim=2**18,
        window_size=MAX_IMAGE_SIZE,
        out_chans=65536,
    ),
    "llm": dict(
        vocab_size=2**20,
        hidden=65536,
        layers=1024,
        heads=1024,
        kv_heads=1024,
        head_dim=1024,
        mlp_dim=2**18,
        max_position=2**20,
    ),
}
FLOATS = {"siglip": ("ln_eps",), "sam": ("ln_eps",), "llm": ("rope_theta", "rms_eps")}
# Parameters may be sharded over many hosts (FSDP on a pod; `aot` allocates none), so a model is refused
# only when its parameters alone exceed this many times this host's memory: no slice of hosts like this
# one could hold it. The RoPE tables are built whole on every host: they must fit in half of one.
HOST_MEMORY_FACTOR = 64
ROPE_TABLE_BYTES = 4 + 8 + 8  # per [position, head_dim/2] entry: f32 angle, f64 cos, f64 sin


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_numbers(section: str, obj: Any) -> None:
    """Sizes are ints in [1, LIMITS]; eps and theta finite and > 0. Runs before any arithmetic on them."""
    for name, hi in LIMITS[section].items():
        v, field = getattr(obj, name), f"model.{section}.{name}"
        _check(_is_int(v) and v > 0, field, f"{v!r} is not a positive integer")
        _check(v <= hi, field, f"{v} > {hi}: larger than any real model (a typo?)")
    for name in FLOATS[section]:
        v = getattr(obj, name)
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        _check(ok, f"model.{section}.{name}", f"{v!r} is not a finite number > 0")


def host_memory_bytes() -> int | None:
    """Physical memory of this host (None where the OS does not say)."""
    try:
        n = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    return n if n > 0 else None


def param_count(cfg: ModelConfig) -> int:
    """The number of parameters `cfg` builds (model/params.py's abstract params, counted without
    tracing: validate uses it before anything is allocated)."""
    s, l = cfg.siglip, cfg.llm
    w, m = s.width, s.mlp_dim
    n = 3 * s.patch_size**2 * w + w + s.num_tokens * w + 2 * w
    n += s.depth * (4 * w * w + 2 * w * m + 9 * w + m)
    h = l.hidden
    if cfg.hybrid:
        a, hd, oc = cfg.sam, cfg.sam.width // cfg.sam.heads, cfg.sam.out_chans
        n += 3 * a.patch_size**2 * a.width + a.width + a.grid**2 * a.width
        n += a.depth * (4 * a.width**2 + 2 * a.width * a.mlp_dim + 9 * a.width + a.mlp_dim)
        glob = len(set(a.global_attn_indexes))
        n += 2 * hd * (glob * (2 * a.grid - 1) + (a.depth - glob) * (2 * a.window_size - 1))
        n += 2 * (a.width * oc + 9 * oc * oc + 4 * oc)  # neck, neck_hd
        n += 9 * oc * 2 * oc + 9 * 2 * oc * 4 * oc + 1  # downsample convs, hd_alpha
        half = h // 2
        n += 4 * oc * half + half + w * half + half + h * h + h
    else:
        n += w * h + h + h * h + h
    attn = h * l.head_dim * (2 * l.heads + 2 * l.kv_heads)
    n += l.vocab_size * h + l.layers * (attn + 3 * h * l.mlp_dim + 2 * h) + h
    if not l.tie_embeddings:
        n += h * l.vocab_size
    return n


def _check_size(cfg: ModelConfig) -> None:
    mem = host_memory_bytes()
    if mem is None:
        return
    gib = lambda b: f"{b / 2**30:,.1f} GiB"  # noqa: E731
    n = param_count(cfg)
    nbytes = n * (2 if cfg.param_dtype in ("bfloat16", "float16") else 4)
    _check(
        nbytes <= HOST_MEMORY_FACTOR * mem,
        "model",
        f"{n:,} parameters ({gib(nbytes)} in {cfg.param_dtype}) exceed {HOST_MEMORY_FACTOR} x this "
        f"host's {gib(mem)} of memory: check model.llm (hidden {cfg.llm.hidden}, layers "
        f"{cfg.llm.layers}, mlp_dim {cfg.llm.mlp_dim}, vocab_size {cfg.llm.vocab_size}) and the towers",
    )
    l = cfg.llm
    rope = l.max_position * (l.head_dim // 2) * ROPE_TABLE_BYTES
    _check(
        rope <= mem // 2,
        "model.llm.max_position",
        f"{l.max_position}: its RoPE tables ({l.max_position} x {l.head_dim // 2}) take {gib(rope)} "
        f"on every host, more than half of this host's {gib(mem)}",
    )


def validate(cfg: ModelConfig) -> None:
    """Every structural constraint, each failure naming its field. Types and bounds first (a string,
    zero, negative or absurd size is refused in microseconds), then the shapes' relations, then the
    estimated size against this host's memory."""
    _check(cfg.vision in VISION_KINDS, "model.vision", f"{cfg.vision!r} not in {VISION_KINDS}")
    _check_numbers("siglip", cfg.siglip)
    _check_numbers("llm", cfg.llm)
    _check(
        isinstance(cfg.llm.tie_embeddings, bool),
        "model.llm.tie_embeddings",
        f"{cfg.llm.tie_embeddings!r} is not true or false",
    )
    _check(
        _is_int(cfg.image_token_id),
        "model.image_token_id",
        f"{cfg.image_token_id!r} is not an integer",
    )
    _check(
        isinstance(cfg.scan_layers, bool),
        "model.scan_layers",
        f"{cfg.scan_layers!r} is not true or false",
    )
    if cfg.hybrid:
        m = cfg.sam
        _check_numbers("sam", m)
        _check(
            isinstance(m.global_attn_indexes, tuple) and all(map(_is_int, m.global_attn_indexes)),
            "model.sam.global_attn_indexes",
            f"{m.global_attn_indexes!r} is not a list of block indexes",
        )
        _check(
            _is_int(m.global_attn_q_chunk),
            "model.sam.global_attn_q_chunk",
            f"{m.global_attn_q_chunk!r} is not an integer",
        )
    _check(
        cfg.adaptor.kind in ADAPTOR_KINDS,
        "model.adaptor.kind",
        f"{cfg.adaptor.kind!r} not in {ADAPTOR_KINDS}",
    )
    want = "hybrid_split_mlp" if cfg.hybrid else "mlp"
    _check(
        cfg.adaptor.kind == want,
        "model.adaptor.kind",
        f"vision={cfg.vision!r} needs adaptor kind {want!r}, got {cfg.adaptor.kind!r}",
    )
    _check(cfg.dtype in DTYPES, "model.dtype", f"{cfg.dtype!r} not in {DTYPES}")
    _check(cfg.param_dtype in DTYPES, "model.param_dtype", f"{cfg.param_dtype!r} not in {DTYPES}")
    _check(
        cfg.remat_policy in REMAT_POLICIES,
        "model.remat_policy",
        f"{cfg.remat_policy!r} not in {REMAT_POLICIES}",
    )
    s = cfg.siglip
    _check(
        s.image_size % s.patch_size == 0,
        "model.siglip.image_size",
        f"{s.image_size} is not a multiple of patch_size {s.patch_size}",
    )
    _check(
        s.width % s.heads == 0, "model.siglip.width", f"{s.width} not divisible by heads {s.heads}"
    )
    _check(
        s.act in ("gelu", "gelu_tanh"),
        "model.siglip.act",
        f"{s.act!r} not in ('gelu', 'gelu_tanh')",
    )
    l = cfg.llm
    _check(
        l.heads % l.kv_heads == 0,
        "model.llm.heads",
        f"{l.heads} not divisible by kv_heads {l.kv_heads}",
    )
    _check(l.head_dim % 2 == 0, "model.llm.head_dim", f"{l.head_dim} must be even for RoPE")
    _check(
        0 <= cfg.image_token_id < l.vocab_size,
        "model.image_token_id",
        f"{cfg.image_token_id} outside the vocabulary [0, {l.vocab_size})",
    )
    if cfg.hybrid:
        m = cfg.sam
        _check(
            m.image_size % m.patch_size == 0,
            "model.sam.image_size",
            f"{m.image_size} is not a multiple of patch_size {m.patch_size}",
        )
        _check(
            m.width % m.heads == 0, "model.sam.width", f"{m.width} not divisible by heads {m.heads}"
        )
        _check(
            len(m.global_attn_indexes) > 0 and all(0 <= i < m.depth for i in m.global_attn_indexes),
            "model.sam.global_attn_indexes",
            f"{m.global_attn_indexes} must be non-empty and < depth {m.depth}",
        )
        qc, g = m.global_attn_q_chunk, m.grid
        _check(
            qc >= 0 and (qc >= g * g or (qc % g == 0 and (g * g) % qc == 0)),
            "model.sam.global_attn_q_chunk",
            f"{qc} must be 0, >= the {g * g} grid tokens, or a multiple of the grid width {g} that "
            f"divides {g * g}",
        )
        _check(
            l.hidden % 2 == 0,
            "model.llm.hidden",
            f"{l.hidden} must be even for the hybrid split adaptor",
        )
    _check_size(cfg)


# Fields that say how to run the model, not what function its weights compute: a run may choose them
# freely whatever checkpoint it starts from (llm.max_position: RoPE has no learned table).
RUNTIME_FIELDS = frozenset(
    {
        "dtype",
        "param_dtype",
        "scan_layers",
        "remat_policy",
        "attention",
        "sam.global_attn_q_chunk",
        "llm.max_position",
    }
)


def _fields(cfg: ModelConfig) -> dict[str, Any]:
    out = {}
    for k, v in cfg.to_dict().items():
        if isinstance(v, dict):
            out.update(
                {f"{k}.{kk}": tuple(vv) if isinstance(vv, list) else vv for kk, vv in v.items()}
            )
        else:
            out[k] = v
    if not cfg.hybrid:  # a SigLIP-only model has no SAM: its defaults mean nothing
        out = {k: v for k, v in out.items() if not k.startswith("sam.")}
    return out


def architecture_diff(ours: ModelConfig, theirs: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """{field: (ours, theirs)} for every field that changes what the weights compute (everything but
    RUNTIME_FIELDS): a run started from a checkpoint must agree with it on all of them."""
    a, b = _fields(ours), _fields(theirs)
    return {
        k: (a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if k not in RUNTIME_FIELDS and a.get(k) != b.get(k)
    }


def dtype_name_to_numpy(name: str):
    """'bfloat16' etc. -> a numpy dtype (bfloat16 via ml_dtypes, which jax ships)."""
    import ml_dtypes
    import numpy as np

    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r} not in {DTYPES}")
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
