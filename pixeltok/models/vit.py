"""DeiT-style ViT (adventurer.md §5): cls token FIRST, learned pos-embed, pre-LN blocks, MHSA through
`jax.nn.dot_product_attention` (cuDNN flash attention on GPU in bf16, XLA elsewhere) or `chunked_attention`
(query blocks, for long sequences on CPU), GELU MLP, head on token 0.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from pixeltok.models import common

Array = jax.Array

ATTN_IMPLS = ("auto", "xla", "cudnn", "chunked")
# Query rows per block of `chunked_attention` (an upper bound: blocks are balanced, see there). ViT-Tiny fwd+bwd on
# the 2-core dev CPU: 128, 256, 384, 512 within the ±5 % noise of each other at 785 and 1,025 tokens x4 and 4,097
# x1; 256 keeps half the block memory of 512. One block for all rows (no loop) was 15 % slower at 1,025 tokens.
CHUNK_Q_BLOCK = 256
# "auto" on CPU uses `chunked_attention` from this many tokens (ViT fwd+bwd vs XLA's dense attention, measured):
# with a 16-bit compute dtype faster from 197 tokens (ViT-B/16 224² x8: 4.9 vs 5.3 s; 4,097 tokens: 4.1 vs 11.9 s),
# a tie at 65; in float32 a tie at 197 and 257 tokens, faster from 577 (1.07 vs 1.25 s). In float32 only the
# (L, L) memory traffic is saved; in bf16 also XLA's float32 backward matmuls (see `_attend_rows_grad`).
CHUNK_MIN_LENGTH_16BIT = 128
CHUNK_MIN_LENGTH = 512


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


def _check_attn_impl(impl: str) -> str:
    if impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl {impl!r} is unknown; valid: {', '.join(ATTN_IMPLS)}")
    return impl


def resolve_attn_impl(impl: str, dtype, length: int) -> str:
    """Resolves "auto" for a sequence length: cuDNN flash attention on GPU for 16-bit inputs (it needs them);
    on CPU `chunked_attention` from CHUNK_MIN_LENGTH(_16BIT) tokens (XLA's dense attention there writes and
    re-reads the (L, L) float32 probabilities and runs its backward matmuls in float32); XLA's otherwise.
    """
    if _check_attn_impl(impl) != "auto":
        return impl
    backend, half = jax.default_backend(), jnp.dtype(dtype).itemsize == 2
    if backend == "gpu" and half:
        return "cudnn"
    min_length = CHUNK_MIN_LENGTH_16BIT if half else CHUNK_MIN_LENGTH
    return "chunked" if backend == "cpu" and length >= min_length else "xla"


def padded_attention(q: Array, k: Array, v: Array, *, implementation: str = "cudnn", multiple: int = 128) -> Array:
    """`jax.nn.dot_product_attention` on a length padded up to a multiple of `multiple`, padded keys masked out.

    Why: cuDNN's fused attention rejects some lengths in training (odd ones on current JAX, and a ViT has n + 1
    tokens: 197, 50,177) and runs best on tile multiples. The padded keys are excluded through
    `key_value_seq_lengths` (cuDNN's padding mask, no bias tensor), padded query rows are dropped, so the result
    equals unpadded attention.

    q, k, v: (batch, length, heads, head_dim) -> (batch, length, heads, head_dim).
    """
    b, length = q.shape[:2]
    pad = -length % multiple
    if pad == 0:
        return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    lengths = jnp.full((b,), length, jnp.int32)
    o = jax.nn.dot_product_attention(q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                                     implementation=implementation)
    return o[:, :length]


def chunked_attention(q: Array, k: Array, v: Array, *, q_block: int = CHUNK_Q_BLOCK) -> Array:
    """Exact softmax(q·kᵀ/√d)·v over blocks of at most `q_block` query rows, each block against all keys.

    Why: dense attention materialises the (batch, heads, L, L) logits and probabilities, and autodiff saves them for
    the backward pass: O(B·h·L²) memory and memory traffic (several GiB per image at 4k tokens on CPU). Here the
    query blocks run in a `jax.lax.map`, so only one (B, h, q_block, L) block of probabilities is alive at a time:
    O(B·h·q_block·L). The backward pass (a custom VJP) recomputes each block's probabilities from the saved
    per-row log-sum-exp instead of saving them, for one extra q·kᵀ matmul. Each block sees every key, so no online
    softmax rescaling is needed. (A `jax.checkpoint`ed block body under autodiff gives the same memory but was 2x
    slower on CPU: its float32 cotangents make every backward matmul a float32 one, and it sums dk, dv across
    blocks in the compute dtype.)

    The length is split into ceil(L / q_block) blocks of equal size (<= q_block), so padding adds fewer query rows
    than there are blocks; padded rows are zeros and their outputs are dropped. Reverse-mode differentiable only
    (no forward-mode jvp), like `jax.nn.dot_product_attention`'s cuDNN path.

    Args:
      q, k, v: (batch, length, heads, head_dim), one dtype, as `jax.nn.dot_product_attention`.
      q_block: the most query rows per block.

    Returns:
      (batch, length, heads, head_dim) in q's dtype.
    """
    b, length, heads, dim = q.shape
    blocks = -(-length // q_block)
    rows = -(-length // blocks)
    qh, kh, vh = (x.transpose(0, 2, 1, 3) for x in (q, k, v))      # (batch, heads, length, head_dim)
    qh = jnp.pad(qh, ((0, 0), (0, 0), (0, blocks * rows - length), (0, 0)))
    qb = qh.reshape(b, heads, blocks, rows, dim).transpose(2, 0, 1, 3, 4)
    o = _blockwise_attention(qb, kh, vh)                            # (blocks, batch, heads, rows, head_dim)
    return o.transpose(1, 0, 3, 2, 4).reshape(b, blocks * rows, heads, dim)[:, :length]


def _logits(q: Array, k: Array) -> Array:
    """Unscaled q·kᵀ, (..., rows, d) x (..., L, d) -> (..., rows, L) float32 (float32 accumulation)."""
    return jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)


def _attend_rows(q: Array, k: Array, v: Array) -> tuple[Array, Array]:
    """One block of rows: (output in q's dtype, float32 log-sum-exp of the scaled logits, (..., rows, 1)).

    Softmax in float32 with the row max subtracted, so every exponent is <= 0; the normalisation divides the
    (rows, d) output rather than the (rows, L) probabilities.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = _logits(q, k)
    m = s.max(axis=-1, keepdims=True)
    p = jnp.exp((s - m) * scale)
    total = p.sum(axis=-1, keepdims=True)
    o = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32) / total
    return o.astype(q.dtype), m * scale + jnp.log(total)


def _attend_rows_grad(q: Array, q_t: Array, k: Array, v: Array, o: Array, lse: Array, do: Array,
                      do_t: Array) -> tuple[Array, Array, Array]:
    """Gradients from one block of rows: (dq, this block's dkᵀ, dvᵀ), float32; q_t, do_t are q, do transposed.

    p = exp(s/√d - lse) <= 1 (lse >= every scaled logit of its row) are the block's probabilities; with
    dp = do·vᵀ and the row sums rowsum(dp∘p) = rowsum(do∘o), ds = p∘(dp - rowsum)/√d gives dq = ds·k, dkᵀ = qᵀ·ds,
    dvᵀ = doᵀ·p. The matmul operands are in the compute dtype with float32 accumulation (flash-attention practice):
    XLA:CPU runs bf16 dots through YNNPACK only when each dot's lhs contracts its minor dimension in the HLO itself,
    hence dkᵀ and dvᵀ (not dk, dv) from the pre-transposed q_t, do_t; otherwise it upcasts them to float32,
    2-3x slower here.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    p = jnp.exp(_logits(q, k) * scale - lse)
    dp = jnp.einsum("bhqd,bhkd->bhqk", do, v, preferred_element_type=jnp.float32)
    row = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)
    ds = (p * (dp - row) * scale).astype(q.dtype)
    dq = jnp.einsum("bhqk,bhkd->bhqd", ds, k, preferred_element_type=jnp.float32)
    dk_t = jnp.einsum("bhdq,bhqk->bhdk", q_t, ds, preferred_element_type=jnp.float32)
    dv_t = jnp.einsum("bhdq,bhqk->bhdk", do_t, p.astype(do.dtype), preferred_element_type=jnp.float32)
    return dq, dk_t, dv_t


@jax.custom_vjp
def _blockwise_attention(qb: Array, k: Array, v: Array) -> Array:
    """Query blocks (blocks, batch, heads, rows, d) against k, v (batch, heads, L, d) -> (blocks, ..., rows, d)."""
    return _blockwise_fwd(qb, k, v)[0]


def _blockwise_fwd(qb: Array, k: Array, v: Array) -> tuple[Array, tuple]:
    o, lse = jax.lax.map(lambda q: _attend_rows(q, k, v), qb)
    return o, (qb, k, v, o, lse)                                      # O(B·h·L·d): no probabilities saved


def _blockwise_bwd(res: tuple, do: Array) -> tuple[Array, Array, Array]:
    qb, k, v, o, lse = res

    def step(carry, xs):
        dq, dk_t, dv_t = _attend_rows_grad(xs[0], xs[1], k, v, *xs[2:])
        return (carry[0] + dk_t, carry[1] + dv_t), dq.astype(qb.dtype)

    zeros = jnp.zeros(k.shape[:2] + (k.shape[3], k.shape[2]), jnp.float32)    # dkᵀ, dvᵀ, summed in f32
    xs = (qb, qb.swapaxes(-1, -2), o, lse, do, do.swapaxes(-1, -2))
    (dk_t, dv_t), dq = jax.lax.scan(step, (zeros, zeros), xs)
    return dq, dk_t.swapaxes(-1, -2).astype(k.dtype), dv_t.swapaxes(-1, -2).astype(v.dtype)


_blockwise_attention.defvjp(_blockwise_fwd, _blockwise_bwd)


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection (bias) and an output projection."""

    def __init__(self, d: int, heads: int, *, dtype, attn_impl: str = "auto", rngs: nnx.Rngs):
        self.heads, self.dtype = heads, dtype
        self.impl = _check_attn_impl(attn_impl)
        init = common.trunc_normal()
        self.qkv = common.linear(d, 3 * d, use_bias=True, kernel_init=init, dtype=dtype, rngs=rngs)
        self.proj = common.linear(d, d, use_bias=True, kernel_init=init, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        """x: (batch, length, d) compute dtype -> (batch, length, d) float32."""
        b, length, d = x.shape
        qkv = self.qkv(x).astype(self.dtype).reshape(b, length, 3, self.heads, d // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]          # (batch, length, heads, head_dim)
        impl = resolve_attn_impl(self.impl, self.dtype, length)
        if impl == "chunked":
            o = chunked_attention(q, k, v)
        elif impl == "cudnn":
            o = padded_attention(q, k, v, implementation="cudnn")
        else:
            o = jax.nn.dot_product_attention(q, k, v, implementation=impl)
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

    def __call__(self, x: Array, *, drop_rate: float | Array = 0.0, rng: Array | None = None) -> Array:
        """x: (batch, n + 1, d) float32 residual stream -> same; drop_rate is traced in the scan over layers."""
        r1, r2 = common.split_rngs(rng, 2)
        x = x + common.drop_path(self.attn(self.norm1(x).astype(self.dtype)), drop_rate, r1)
        return x + common.drop_path(self.mlp(self.norm2(x).astype(self.dtype)), drop_rate, r2)


class ViT(nnx.Module):
    """DeiT classifier.

    Attributes:
      patch_embed: nnx.Conv kernel (p, p, C, d) + bias; PyTorch's default Conv2d init U(±1/√(C·p²)) for both, as
        DeiT's timm code leaves the patch conv at its default.
      cls_token: (1, 1, d) and pos_embed: (1, n + 1, d), trunc_normal(0.02); cls FIRST.
      blocks: nnx.List of ViTBlock (one module per layer; `remat` / `scan_layers` scan over their stacked states).
      norm: final LayerNorm (eps 1e-6); head: Linear on token 0.
      Linear weights trunc_normal(0.02), biases 0; LayerNorms 1 / 0.
    """

    def __init__(self, *, width: int, depth: int, patch_size: int = 16, image_size: int = 224,
                 num_classes: int = 1000, num_channels: int = 3, head_dim: int | None = None,
                 mlp_ratio: float = 4.0, attn_impl: str = "auto", drop_path: float = 0.0,
                 drop_path_schedule: str = "linear", dtype="float32", remat=None, posemb: str = "learned",
                 scan_layers: bool = False, rngs: nnx.Rngs):
        grid = common.check_patch_size(patch_size, image_size)
        if posemb != "learned":
            raise ValueError(f"posemb {posemb!r} is unknown; valid: learned")
        if width < 1 or depth < 1:
            raise ValueError(f"width {width} and depth {depth} must be >= 1")
        dt = common.compute_dtype(dtype)
        self.patch_size, self.image_size, self.num_channels = patch_size, image_size, num_channels
        self.num_patches, self.width, self.depth, self.dtype = grid * grid, width, depth, dt
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
        self.head = common.linear(width, num_classes, use_bias=True, kernel_init=common.trunc_normal(), dtype=dt,
                                  rngs=rngs)

    def embed(self, images: Array) -> Array:
        """images (batch, H, W, C) -> tokens (batch, n + 1, d) float32: cls FIRST, then patches row-major, + pos."""
        return common.embed_with_cls(self, images, cls_first=True)

    def forward_features(self, images: Array, train: bool = False, *, rng: Array | None = None) -> Array:
        """The residual stream after the last block (before the final norm): (batch, n + 1, d) float32."""
        return common.run_block_stack(self, self.embed(images), train, rng)

    def __call__(self, images: Array, train: bool = False, *, rng: Array | None = None) -> Array:
        """images (batch, H, W, C) float -> logits (batch, num_classes) float32, read from the FIRST (cls) token."""
        x = self.forward_features(images, train, rng=rng)
        return self.head(self.norm(x[:, 0]).astype(self.dtype)).astype(jnp.float32)

