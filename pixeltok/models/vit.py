"""DeiT-style ViT (docs/models.md, "ViT"): cls token FIRST, learned pos-embed, pre-LN blocks, MHSA through
`jax.nn.dot_product_attention` (cuDNN flash attention on GPU in bf16, XLA elsewhere) or `chunked_attention`
(query blocks, for long sequences on CPU), GELU MLP, head on token 0.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pixeltok.models import common, heads
from pixeltok.ops import attention, seq_parallel
# Re-exported: `pixeltok.memory` and older call sites read these through the model module.
from pixeltok.ops.attention import (ATTN_IMPLS, CHUNK_Q_BLOCK, chunked_attention, padded_attention,  # noqa: F401
                                    resolve_attn_impl)

Array = jax.Array

def vit_heads(width: int, head_dim: int | None = None) -> int:
    """Number of attention heads for a width.

    DeiT sizes use head_dim 64 (Tiny 3, Small 6, Base 12, Large 16 heads). Below width 192 the head dim is 32
    (96 -> 3 heads, 128 -> 4, 64 -> 2); widths under 32 use a single head. An explicit head_dim overrides the rule.
    """
    if head_dim is None:
        head_dim = 64 if width >= 192 else 32
    heads = max(1, round(width / head_dim))
    if width % heads:
        raise ValueError(f"width {width} is not divisible into {heads} heads of ~{head_dim}; pick head_dim "
                         f"dividing {width}")
    return heads


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection (bias) and an output projection."""

    def __init__(self, d: int, heads: int, *, dtype, attn_impl: str = "auto", rngs: nnx.Rngs):
        self.heads, self.dtype = heads, dtype
        self.impl = attention.check_attn_impl(attn_impl)
        init = common.trunc_normal()
        self.qkv = common.linear(d, 3 * d, use_bias=True, kernel_init=init, dtype=dtype, rngs=rngs)
        self.proj = common.linear(d, d, use_bias=True, kernel_init=init, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, seq: seq_parallel.SeqLayout | None = None) -> Array:
        """x: (batch, length, d) compute dtype -> (batch, length, d) float32.

        seq: the sequence-parallel layout when x's tokens are split over the seq mesh axis (docs/sharding.md):
        every shard's queries attend the keys/values of all shards (padding masked), passed around the seq ring
        (`seq_parallel.ring_attention`: less memory and time than all-gathering them, measured in the doc).
        """
        b, length, d = x.shape
        qkv = self.qkv(x).astype(self.dtype).reshape(b, length, 3, self.heads, d // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]          # (batch, length, heads, head_dim)
        if seq is not None:
            o = seq_parallel.ring_attention(q, k, v, seq)
        else:
            o = attention.dot_product_attention(q, k, v, impl=self.impl)
        return self.proj(o.reshape(b, length, d).astype(self.dtype)).astype(jnp.float32)


class Mlp(nnx.Module):
    """fc1 -> GELU (exact erf, as timm's nn.GELU) -> fc2."""

    def __init__(self, d: int, hidden: int, *, dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        init = common.trunc_normal()
        self.fc1 = common.linear(d, hidden, use_bias=True, kernel_init=init, dtype=dtype, rngs=rngs)
        self.fc2 = common.linear(hidden, d, use_bias=True, kernel_init=init, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        h = jax.nn.gelu(self.fc1(x), approximate=False)
        return self.fc2(h.astype(self.dtype)).astype(jnp.float32)


class ViTBlock(nnx.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x)); LayerNorm eps 1e-6."""

    def __init__(self, d: int, heads: int, *, mlp_ratio: float = 4.0, dtype, attn_impl: str = "auto",
                 rngs: nnx.Rngs):
        self.dtype = dtype
        self.norm1 = nnx.LayerNorm(d, epsilon=1e-6, param_dtype=jnp.float32, rngs=rngs)
        self.attn = Attention(d, heads, dtype=dtype, attn_impl=attn_impl, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, epsilon=1e-6, param_dtype=jnp.float32, rngs=rngs)
        self.mlp = Mlp(d, int(mlp_ratio * d), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, *, drop_rate: float | Array = 0.0, rng: Array | None = None,
                 seq: seq_parallel.SeqLayout | None = None) -> Array:
        """x: (batch, n + 1, d) float32 residual stream -> same; drop_rate is traced in the scan over layers.
        seq: the layout when the tokens are split over the seq mesh axis (then x is (batch, padded, d))."""
        r1, r2 = common.split_rngs(rng, 2)
        x = x + common.drop_path(self.attn(self.norm1(x).astype(self.dtype), seq), drop_rate, r1)
        return x + common.drop_path(self.mlp(self.norm2(x).astype(self.dtype)), drop_rate, r2)


class ViT(nnx.Module):
    """DeiT classifier.

    Attributes:
      patch_embed: nnx.Conv kernel (p, p, C, d) + bias; PyTorch's default Conv2d init U(±1/√(C·p²)) for both, as
        DeiT's timm code leaves the patch conv at its default.
      cls_token: (1, 1, d) and pos_embed: (1, n + 1, d), trunc_normal(0.02); cls FIRST.
      blocks: nnx.List of ViTBlock (one module per layer; `remat` / `scan_layers` scan over their stacked states).
      norm: final LayerNorm (eps 1e-6); head: `heads.make_head(head_type)` (classification: Linear on token 0).
      Linear weights trunc_normal(0.02), biases 0; LayerNorms 1 / 0.
    """

    def __init__(self, *, width: int, depth: int, patch_size: int = 16, image_size: int = 224,
                 num_classes: int = 1000, num_channels: int = 3, head_dim: int | None = None,
                 mlp_ratio: float = 4.0, attn_impl: str = "auto", drop_path: float = 0.0,
                 drop_path_schedule: str = "linear", dtype="float32", remat=None, posemb: str = "learned",
                 scan_layers: bool = False, head_type: str = "classification", rngs: nnx.Rngs):
        grid = common.check_patch_size(patch_size, image_size)
        if posemb != "learned":
            raise ValueError(f"posemb {posemb!r} is unknown; valid: learned")
        if width < 1 or depth < 1:
            raise ValueError(f"width {width} and depth {depth} must be >= 1")
        dt = common.compute_dtype(dtype)
        self.patch_size, self.image_size, self.num_channels = patch_size, image_size, num_channels
        self.num_patches, self.width, self.depth, self.dtype = grid * grid, width, depth, dt
        self.grid, self.cls_index, self.head_type = grid, 0, heads.check_head_type(head_type)
        self.heads = vit_heads(width, head_dim)
        self.drop_rates = tuple(common.drop_path_rates(drop_path, depth, drop_path_schedule))
        self.remat_policy = common.remat_policy(remat)
        self.scan_layers = bool(scan_layers)
        conv_init = common.uniform_init(1.0 / math.sqrt(num_channels * patch_size * patch_size))
        self.patch_embed = common.patch_embed_conv(num_channels, width, patch_size, kernel_init=conv_init,
                                                   bias_init=conv_init, rngs=rngs)
        self.cls_token = nnx.Param(common.trunc_normal()(rngs.params(), (1, 1, width)))
        self.pos_embed = nnx.Param(common.trunc_normal()(rngs.params(), (1, self.num_patches + 1, width)))
        self.blocks = nnx.List([ViTBlock(width, self.heads, mlp_ratio=mlp_ratio, dtype=dt, attn_impl=attn_impl,
                                         rngs=rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(width, epsilon=1e-6, param_dtype=jnp.float32, rngs=rngs)
        self.head = heads.make_head(head_type, width, num_classes, patch_size=patch_size, dtype=dt, rngs=rngs)

    def embed(self, images: Array) -> Array:
        """images (batch, H, W, C) -> tokens (batch, n + 1, d) float32: cls FIRST, then patches row-major, + pos."""
        return common.embed_with_cls(self, images, cls_first=True)

    def forward_features(self, images: Array, train: bool = False, *, rng: Array | None = None) -> Array:
        """The residual stream after the last block (before the final norm): (batch, n + 1, d) float32."""
        x, seq = self._stream(images, train, rng)
        return x if seq is None else x[:, :seq.length]

    def _stream(self, images: Array, train: bool, rng: Array | None):
        """(residual stream after the blocks, its sequence-parallel layout or None). Under a mesh with seq > 1
        (`jax.set_mesh`) the tokens are padded at the end and split over seq from here to the head
        (docs/sharding.md)."""
        x = self.embed(images)
        seq = seq_parallel.current_layout(x.shape[1], x.shape[0])
        if seq is None:
            return common.run_block_stack(self, x, train, rng), None
        x = seq_parallel.shard_tokens(x, seq)
        return common.run_block_stack(self, x, train, rng, seq=(seq,) * self.depth), seq

    def features(self, images: Array, train: bool = False, rng: Array | None = None) -> Array:
        """All tokens after the final LayerNorm: (batch, n + 1, d) float32, cls FIRST, then patches row-major."""
        x, seq = self._stream(images, train, rng)
        x = self.norm(x).astype(jnp.float32)
        return x if seq is None else x[:, :seq.length]

    def patch_grid(self, tokens: Array) -> Array:
        """The patch tokens of `features` as the image grid (batch, gh, gw, d) (cls dropped)."""
        return common.patch_grid(tokens[:, 1:], self.grid)

    def __call__(self, images: Array, train: bool = False, *, rng: Array | None = None) -> Array:
        """images (batch, H, W, C) float -> the head's output; classification: logits (batch, num_classes) float32
        from the FIRST (cls) token."""
        return heads.apply_head(self, self.features(images, train, rng=rng))

