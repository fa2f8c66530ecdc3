"""Attention kernels for (batch, length, heads, head_dim) inputs; the ViT's `Attention` layer calls them.

`dot_product_attention(q, k, v, impl=...)` dispatches on the implementation: "xla" (`jax.nn.dot_product_attention`
on XLA), "cudnn" (`padded_attention`: cuDNN flash attention at a padded length, GPU and 16-bit inputs), "chunked"
(`chunked_attention`: exact attention over blocks of query rows with a custom VJP, for long sequences on CPU), or
"auto" (`resolve_attn_impl`). The algorithms and their memory are described in docs/models.md.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

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


def check_attn_impl(impl: str) -> str:
    """Returns impl if it is one of ATTN_IMPLS; ValueError naming the valid ones otherwise."""
    if impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl {impl!r} is unknown; valid: {', '.join(ATTN_IMPLS)}")
    return impl


def resolve_attn_impl(impl: str, dtype, length: int) -> str:
    """Resolves "auto" for a sequence length: cuDNN flash attention on GPU for 16-bit inputs (it needs them);
    on CPU `chunked_attention` from CHUNK_MIN_LENGTH(_16BIT) tokens (XLA's dense attention there writes and
    re-reads the (L, L) float32 probabilities and runs its backward matmuls in float32); XLA's otherwise.
    """
    if check_attn_impl(impl) != "auto":
        return impl
    backend, half = jax.default_backend(), jnp.dtype(dtype).itemsize == 2
    if backend == "gpu" and half:
        return "cudnn"
    min_length = CHUNK_MIN_LENGTH_16BIT if half else CHUNK_MIN_LENGTH
    return "chunked" if backend == "cpu" and length >= min_length else "xla"


def dot_product_attention(q: Array, k: Array, v: Array, *, impl: str = "auto") -> Array:
    """softmax(q·kᵀ/√d)·v with the implementation `impl` (ATTN_IMPLS; "auto" resolved by `resolve_attn_impl`).

    q, k, v: (batch, length, heads, head_dim), one dtype -> (batch, length, heads, head_dim) in that dtype.
    """
    impl = resolve_attn_impl(impl, q.dtype, q.shape[1])
    if impl == "chunked":
        return chunked_attention(q, k, v)
    if impl == "cudnn":
        return padded_attention(q, k, v, implementation="cudnn")
    return jax.nn.dot_product_attention(q, k, v, implementation=impl)


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


def chunked_attention(q: Array, k: Array, v: Array, *, q_block: int | None = None) -> Array:
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
      q_block: the most query rows per block; None: CHUNK_Q_BLOCK (read at call time).

    Returns:
      (batch, length, heads, head_dim) in q's dtype.
    """
    b, length, heads, dim = q.shape
    q_block = CHUNK_Q_BLOCK if q_block is None else q_block
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


