"""The SSD (Mamba-2) linear-time scan, chunked and recurrent (docs/ssd.md).

Per batch element and head h (state S is head_dim x state, float32):

    S_t = exp(dt_t * A_h) * S_{t-1} + dt_t * outer(x_t, B_t)        y_t = S_t @ C_t

where B_t, C_t come from group h // (heads // groups). Two implementations:

* ``impl="recurrent"``: `jax.lax.scan` over time; the oracle the tests compare against. Under `grad` it keeps every
  per-step state (memory ~ length x state), so it is for tests and short sequences only.
* ``impl="chunked"`` (default): the SSD block decomposition. The (padded) sequence is cut into chunks of Q tokens;
  inside a chunk the output is a masked, decay-weighted attention-like product computed with GEMMs; across chunks
  only the (heads, head_dim, state) chunk states travel, combined with `jax.lax.associative_scan`. Every exponent is
  a sum of non-positive terms (dt >= 0, A <= 0), masked with `where(..., -inf)` *before* `exp`, so nothing overflows
  and gradients stay finite. The per-chunk work is wrapped in `jax.checkpoint`, so the backward pass recomputes the
  (Q, Q) decay matrices instead of storing them: memory is linear in length (see `pixeltok/ops/README.md`).

Decays, cumulative sums, exponentials and states are float32 whatever the input dtypes; with bfloat16 inputs the
large GEMMs run in bfloat16 with float32 accumulation (`preferred_element_type=float32`).
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

__all__ = ["ssd", "ssd_jit", "ssd_flops", "ssd_reference", "IMPLS"]

IMPLS = ("chunked", "recurrent")
_HIGHEST = jax.lax.Precision.HIGHEST
_F32 = jnp.float32
# Default work per step of the chunk map, in elements of the (chunks, heads, Q, Q) decay tensor: 2^21 f32 = 8 MiB,
# small enough to stay cache-warm on CPU and bound the transient, big enough (>= 1e6) for accelerator kernels.
_BLOCK_ELEMENTS = 1 << 21


# ----------------------------------------------------------------------------------------------------------------
# Argument checks.
# ----------------------------------------------------------------------------------------------------------------
def _check_args(x, dt, A, B, C, chunk_size, impl, initial_state, chunks_per_step=None):
    """One-line ValueError for any inconsistent argument; returns (batch, length, heads, dim, groups, state)."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {IMPLS}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be an integer >= 1")
    if x.ndim != 4:
        raise ValueError(f"x.shape={tuple(x.shape)} must be (batch, length, heads, head_dim)")
    b, length, heads, dim = x.shape
    if tuple(dt.shape) != (b, length, heads):
        raise ValueError(f"dt.shape={tuple(dt.shape)} must be (batch, length, heads)={(b, length, heads)}")
    if tuple(A.shape) != (heads,):
        raise ValueError(f"A.shape={tuple(A.shape)} must be (heads,)={(heads,)}")
    if B.ndim != 4 or tuple(B.shape[:2]) != (b, length):
        raise ValueError(f"B.shape={tuple(B.shape)} must be (batch, length, groups, state) with "
                         f"(batch, length)={(b, length)}")
    if tuple(C.shape) != tuple(B.shape):
        raise ValueError(f"C.shape={tuple(C.shape)} must equal B.shape={tuple(B.shape)}")
    groups, state = B.shape[2], B.shape[3]
    if groups < 1 or heads % groups:
        raise ValueError(f"groups={groups} must divide heads={heads}")
    if chunks_per_step is not None and (isinstance(chunks_per_step, bool) or chunks_per_step < 0
                                        if isinstance(chunks_per_step, numbers.Integral) else True):
        raise ValueError(f"chunks_per_step={chunks_per_step!r} must be None or an integer >= 0")
    if initial_state is not None and tuple(initial_state.shape) != (b, heads, dim, state):
        raise ValueError(f"initial_state.shape={tuple(initial_state.shape)} must be "
                         f"(batch, heads, head_dim, state)={(b, heads, dim, state)}")
    return b, length, heads, dim, groups, state


def _gemm_dtype(*arrays):
    """Dtype of the large GEMM operands: bf16/f16 only when every operand is; float32 otherwise (f64 -> f32)."""
    dtypes = {jnp.dtype(a.dtype) for a in arrays}
    if len(dtypes) == 1 and jnp.dtype(next(iter(dtypes))).itemsize < 4:
        return next(iter(dtypes))
    return jnp.dtype(_F32)


def _einsum(spec, a, b, dtype):
    """Two-operand einsum in `dtype` with float32 accumulation; HIGHEST precision when float32 (TF32 on GPU)."""
    precision = _HIGHEST if dtype == jnp.dtype(_F32) else None
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), precision=precision, preferred_element_type=_F32)


# ----------------------------------------------------------------------------------------------------------------
# Recurrent oracle.
# ----------------------------------------------------------------------------------------------------------------
def _ssd_recurrent(x, dt, A, B, C, initial_state):
    """`lax.scan` over time with a float32 (batch, heads, head_dim, state) carry. Returns (y f32, final_state f32)."""
    b, _, heads, dim = x.shape
    reps = heads // B.shape[2]
    Bh = jnp.repeat(B.astype(_F32), reps, axis=2)  # head h -> group h // reps
    Ch = jnp.repeat(C.astype(_F32), reps, axis=2)
    dt = dt.astype(_F32)
    decay = jnp.exp(dt * A.astype(_F32))          # exponent dt*A <= 0
    xdt = x.astype(_F32) * dt[..., None]

    def step(S, inputs):
        dec_t, xdt_t, B_t, C_t = inputs             # (b,H), (b,H,P), (b,H,N), (b,H,N)
        S = dec_t[..., None, None] * S + xdt_t[..., :, None] * B_t[..., None, :]
        y_t = jnp.einsum("bhpn,bhn->bhp", S, C_t, precision=_HIGHEST)
        return S, y_t

    S0 = jnp.zeros((b, heads, dim, B.shape[3]), _F32) if initial_state is None else initial_state.astype(_F32)
    time_major = [jnp.moveaxis(t, 1, 0) for t in (decay, xdt, Bh, Ch)]
    final, y = jax.lax.scan(step, S0, time_major)
    return jnp.moveaxis(y, 0, 1), final


def ssd_reference(x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, *, chunk_size: int = 64,
                  initial_state: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The chunked SSD algorithm in plain `jnp`, to read before its optimised form `ssd(impl="chunked")`.

    Same arguments and semantics as `ssd`; returns (y in x.dtype, final_state float32). For each chunk of Q
    tokens, with a_t = dt_t·A <= 0 and x̃_t = dt_t·x_t:
      seg[i, j] = a_{j+1} + ... + a_i (i >= j)          L = exp(seg), 0 above the diagonal
      y_i = Σ_j (C_i·B_j) L[i, j] x̃_j  +  exp(a_0 + ... + a_i) · S_in C_i        (within chunk + entering state)
      S_out = exp(a_0 + ... + a_{Q-1}) · S_in + Σ_j L[Q-1, j] · x̃_j B_jᵀ           (the state passed on)
    Every exponent is a sum of a's (never a difference of cumsums), masked to -inf before exp. A Python loop over
    chunks (the last may be shorter); no padding, custom VJP, remat or associative scan. For tests and reading.
    """
    b, length, heads, dim = x.shape
    reps = heads // B.shape[2]
    Bh, Ch = (jnp.repeat(t.astype(_F32), reps, axis=2) for t in (B, C))       # head h -> group h // reps
    a = dt.astype(_F32) * A.astype(_F32)                                        # (b, L, H), <= 0
    xdt = x.astype(_F32) * dt.astype(_F32)[..., None]
    S = jnp.zeros((b, heads, dim, B.shape[3]), _F32) if initial_state is None else initial_state.astype(_F32)
    ein = lambda spec, *ops: jnp.einsum(spec, *ops, precision=_HIGHEST)        # noqa: E731
    ys = []
    for start in range(0, length, chunk_size):
        c = slice(start, start + chunk_size)
        q = a[:, c].shape[1]
        i, j = jnp.arange(q)[:, None], jnp.arange(q)[None, :]
        rows = jnp.where((i > j)[None, :, :, None], a[:, c, None, :], 0.0)      # [b, i, j, h] = a_i if i > j
        seg = jnp.cumsum(rows, axis=1)                                          # Σ_{j < k <= i} a_k
        decay = jnp.exp(jnp.where((i >= j)[None, :, :, None], seg, -jnp.inf))  # (b, i, j, H)
        cs = jnp.cumsum(a[:, c], axis=1)                                        # a_0 + ... + a_i
        scores = ein("bihn,bjhn->bijh", Ch[:, c], Bh[:, c]) * decay
        y = ein("bijh,bjhp->bihp", scores, xdt[:, c])
        y = y + jnp.exp(cs)[..., None] * ein("bhpn,bihn->bihp", S, Ch[:, c])
        S = jnp.exp(cs[:, -1])[..., None, None] * S + ein("bjh,bjhp,bjhn->bhpn", decay[:, -1], xdt[:, c], Bh[:, c])
        ys.append(y)
    y = jnp.concatenate(ys, axis=1) if ys else jnp.zeros(x.shape, _F32)
    return y.astype(x.dtype), S


# ----------------------------------------------------------------------------------------------------------------
# Chunked SSD.
# ----------------------------------------------------------------------------------------------------------------
def _cumsum(a, reverse=False, block=16):
    """Inclusive cumulative sum along the last axis, two-level (within blocks of `block`, then block offsets).

    Same terms as `jnp.cumsum` (for a <= 0 still a sum of non-positive terms), but XLA's CPU cumsum is a
    reduce-window costing O(n) per element, so long axes are split into short ones.
    """
    n = a.shape[-1]
    if n <= block:
        return jax.lax.cumsum(a, axis=a.ndim - 1, reverse=reverse)
    nb = -(-n // block)
    pad = [(0, 0)] * (a.ndim - 1) + [(nb * block - n, 0) if reverse else (0, nb * block - n)]
    ab = jnp.pad(a, pad).reshape(*a.shape[:-1], nb, block)
    inner = jax.lax.cumsum(ab, axis=ab.ndim - 1, reverse=reverse)
    totals = inner[..., 0] if reverse else inner[..., -1]                   # (..., nb)
    prefix = jax.lax.cumsum(totals, axis=totals.ndim - 1, reverse=reverse)  # nb is short
    zero = jnp.zeros_like(prefix[..., :1])
    # Exclusive block offsets by shifting (not prefix - totals: no difference of sums).
    offsets = (jnp.concatenate([prefix[..., 1:], zero], -1) if reverse
               else jnp.concatenate([zero, prefix[..., :-1]], -1))
    out = (inner + offsets[..., None]).reshape(*a.shape[:-1], nb * block)
    return out[..., nb * block - n:] if reverse else out[..., :n]


def _masked_cumsum(a):
    """seg[..., i, j] = sum_{k=j+1..i} a_k for i >= j (0 on the diagonal), 0 above it. a: (..., n) -> (..., n, n).

    The reference construction (docs/ssd.md, the decay matrix): a strictly-lower-triangular matrix holding a_i in
    row i, cumulative-summed down the rows, so only non-positive terms are ever added. Used on short axes only: XLA
    lowers cumsum to a log-depth scan, expensive on a full (Q, Q) matrix.
    """
    n = a.shape[-1]
    rows = jax.lax.broadcasted_iota(jnp.int32, (n, n), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (n, n), 1)
    return jnp.cumsum(jnp.where(rows > cols, a[..., :, None], 0.0), axis=-2)


def _exclusive_suffix_sum(a):
    """out[..., j] = sum_{k > j} a_k along the last axis, as a sum of the terms themselves (no subtraction)."""
    suffix = _cumsum(a, reverse=True)                                        # sum_{k >= j}
    return jnp.concatenate([suffix[..., 1:], jnp.zeros_like(suffix[..., :1])], axis=-1)


def _decay_matrix(a, block=16):
    """Within-chunk decay matrix L[i, j] = exp(seg[i, j]) with seg[i, j] = sum_{k=j+1..i} a_k for i >= j and
    L = 0 above the diagonal (docs/ssd.md, the decay matrix). a: (..., Q) log-decays <= 0 -> (..., Q, Q) float32.

    Stability: never a difference of cumsums (cs_i - cs_j loses precision, and can round positive, when |cs| is
    large); every exponent is a sum of non-positive terms and masked entries are set to -inf BEFORE exp (no inf*0
    in the backward pass). Speed: a cumsum over the full (Q, Q) matrix (XLA's CPU cumsum is a reduce-window, O(Q)
    per element) and a Q*Q exp per head cost more than the GEMMs, so the chunk is cut into blocks of `block` tokens.
    For i in block u and j in block v < u the segment splits at the block edges into three non-positive sums,
        seg = (a after j to the end of v) + (block totals strictly between v and u) + (a from the start of u to i),
    so L is a product of three exps, each <= 1 (no overflow; an intermediate product underflows only if the true
    value does). Inside one block (u == v) the masked cumsum of the reference construction is used directly.
    """
    q = a.shape[-1]
    ii = jax.lax.broadcasted_iota(jnp.int32, (min(block, q),) * 2, 0)
    jj = jax.lax.broadcasted_iota(jnp.int32, (min(block, q),) * 2, 1)
    if q <= block:
        return jnp.exp(jnp.where(ii >= jj, _masked_cumsum(a), -jnp.inf))
    s, nb = block, -(-q // block)
    if nb * s != q:            # zero log-decays at the end only enter rows/columns that are sliced off below
        a = jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, nb * s - q)])
    ab = a.reshape(*a.shape[:-1], nb, s)
    # One masked cumsum per block with a zero token in front gives all three in-block sums:
    # m[1+i, 0] = a_0..a_i (head), m[s, 1+j] = a_{j+1}..a_{s-1} (tail), m[1+i, 1+j] = a_{j+1}..a_i (inner).
    m = _masked_cumsum(jnp.pad(ab, [(0, 0)] * (ab.ndim - 1) + [(1, 0)]))          # (..., nb, s+1, s+1)
    head, tail, inner = m[..., 1:, 0], m[..., s, 1:], m[..., 1:, 1:]
    # Same trick over the block totals: mb[u, v+1] = total of blocks v+1 .. u-1 for u > v.
    totals = jnp.pad(head[..., -1], [(0, 0)] * (head.ndim - 2) + [(1, 0)])
    between = _masked_cumsum(totals)[..., :nb, 1:]                                 # (..., nb, nb)
    bu = jax.lax.broadcasted_iota(jnp.int32, (nb, nb), 0)
    bv = jax.lax.broadcasted_iota(jnp.int32, (nb, nb), 1)
    e_between = jnp.exp(jnp.where(bu > bv, between, -jnp.inf))
    e_inner = jnp.exp(jnp.where(ii >= jj, inner, -jnp.inf))                        # (..., nb, s, s)
    cross = (jnp.exp(head)[..., :, :, None, None] * e_between[..., :, None, :, None]
             * jnp.exp(tail)[..., None, None, :, :])                              # (..., nb, s, nb, s)
    same = jax.lax.broadcasted_iota(jnp.int32, (nb, s, nb, s), 0) == jax.lax.broadcasted_iota(
        jnp.int32, (nb, s, nb, s), 2)
    decay = jnp.where(same, e_inner[..., :, :, None, :], cross)
    return decay.reshape(*a.shape[:-1], nb * s, nb * s)[..., :q, :q]


@jax.custom_vjp
def _scores(cb, a):
    """Decay-weighted scores cb[g, i, j] * L[g, r, i, j] (the diagonal block of docs/ssd.md, before the x contraction).

    cb: (..., G, Q, Q) C.B^T per group; a: (..., G, R, Q) log-decays <= 0 -> (..., G, R, Q, Q) float32.
    Custom VJP: autodiff through the factorised decay matrix reduces the (Q, Q) cotangent onto every factor
    separately (several passes over Q*Q*H); the math needs one: with d = cotangent * scores (= dL/dseg),
    dcs_i = sum_j d[i, j] - sum_j d[j, i] and da_k = sum_{m >= k} dcs_m (seg depends on a only through
    partial sums; no exponentials are involved in the backward pass).
    """
    return cb[..., :, None, :, :] * _decay_matrix(a)


def _scores_fwd(cb, a):
    return _scores(cb, a), (cb, a)


def _scores_bwd(res, g):
    cb, a = res
    g_decay = g * _decay_matrix(a)                                 # recomputed: we run under remat anyway
    d_cb = jnp.sum(g_decay, axis=-3)                               # heads of a group share cb
    d_seg = g_decay * cb[..., :, None, :, :]
    d_cs = jnp.sum(d_seg, axis=-1) - jnp.sum(d_seg, axis=-2)
    return d_cb, _cumsum(d_cs, reverse=True)


_scores.defvjp(_scores_fwd, _scores_bwd)


def _intra_chunk(x, dt, A, B, C, with_states=True):
    """Everything that only looks inside a chunk (the within-chunk steps of docs/ssd.md).

    Args (the leading `...` is (batch, chunks)):
      x: (..., Q, G, R, P) inputs, head h = g * R + r.   dt: (..., Q, G, R).   A: (G, R).
      B, C: (..., Q, G, N).
    Returns:
      y_diag: (..., Q, G, R, P) float32, the within-chunk output.
      states: (..., G, R, P, N) float32, each chunk's final state started from zero (None unless `with_states`).
      cs: (..., Q, G, R) float32 within-chunk inclusive cumulative log-decay (<= 0).
    """
    gdt = _gemm_dtype(x, B, C)
    dt = dt.astype(_F32)
    a = jnp.moveaxis(dt * A.astype(_F32), -3, -1)                 # (..., G, R, Q) log-decays, <= 0
    cs = jnp.moveaxis(_cumsum(a), -1, -3)                         # (..., Q, G, R), within the chunk only
    xdt = x.astype(_F32) * dt[..., None]                          # (..., Q, G, R, P)
    # Diagonal block: C.B^T once per group, then the per-head decay mask, then the dt-weighted inputs. Never one
    # 4-operand einsum: it may materialise (..., Q, Q, H, P).
    cb = _einsum("...ign,...jgn->...gij", C, B, gdt)              # (..., G, Q, Q)
    scores = _scores(cb, a)                                       # (..., G, R, Q, Q)
    y_diag = _einsum("...grij,...jgrp->...igrp", scores, xdt, gdt)
    if not with_states:
        return y_diag, None, cs
    # Chunk states from zero: decay from token j to the chunk end = exp(sum_{k>j} a_k) (last row of L).
    to_end = jnp.moveaxis(jnp.exp(_exclusive_suffix_sum(a)), -1, -3)   # (..., Q, G, R)
    states = _einsum("...jgrp,...jgn->...grpn", xdt * to_end[..., None], B, gdt)
    return y_diag, states, cs


def _combine(left, right):
    """Associative combine of (log-decay, state) pairs: apply `left` then `right` (docs/ssd.md, across chunks)."""
    (l1, s1), (l2, s2) = left, right
    return l1 + l2, jnp.exp(l2)[..., None, None] * s1 + s2          # exponent l2 <= 0


@jax.custom_vjp
def _linear_scan(log_decay, states):
    """after_c = exp(log_decay_c) * after_{c-1} + states_c from zero, over axis 1 (`_scan_chunks`).

    log_decay: (b, c, G, R) <= 0; states: (b, c, G, R, P, N). Returns (prefix (b, c, G, R), after (like states)),
    prefix_c = log_decay_0 + ... + log_decay_c (<= 0).
    Custom VJP: the adjoint of a linear recurrence is the same recurrence run backwards, so the backward pass is one
    reverse associative scan instead of the transpose of every level of the forward one (several times faster to
    run and to compile for hundreds of chunks).
    """
    return _scan_chunks(log_decay, states)


# Up to this many chunks the recurrence across chunks is unrolled (c fused multiply-adds); beyond it the log-depth
# associative scan wins. Measured on CPU: at 3 chunks the associative scan's pads, slices and concatenations cost
# several times the arithmetic they organise.
_UNROLL_CHUNKS = 16


def _scan_chunks(log_decay, states, reverse=False):
    """(prefix, after) of after_c = exp(log_decay_c) * after_{c-1} + states_c over axis 1 (from the end if
    `reverse`); prefix is the inclusive cumulative sum of log_decay in the same direction (every exponent <= 0)."""
    c = states.shape[1]
    if c > _UNROLL_CHUNKS:
        return jax.lax.associative_scan(_combine, (log_decay, states), axis=1, reverse=reverse)
    order = range(c - 1, -1, -1) if reverse else range(c)
    prefix, after, acc_l, acc_s = [None] * c, [None] * c, None, None
    for i in order:
        acc_l, acc_s = ((log_decay[:, i], states[:, i]) if acc_l is None
                        else _combine((acc_l, acc_s), (log_decay[:, i], states[:, i])))
        prefix[i], after[i] = acc_l, acc_s
    return jnp.stack(prefix, axis=1), jnp.stack(after, axis=1)


def _linear_scan_fwd(log_decay, states):
    prefix, after = _linear_scan(log_decay, states)
    return (prefix, after), (log_decay, after)


def _linear_scan_bwd(res, cotangents):
    log_decay, after = res
    d_prefix, d_after = cotangents
    # Total cotangent of after_c: g_c = d_after_c + exp(log_decay_{c+1}) * g_{c+1} (reverse recurrence).
    next_decay = jnp.concatenate([log_decay[:, 1:], jnp.zeros_like(log_decay[:, :1])], axis=1)
    _, g = _scan_chunks(next_decay, d_after, reverse=True)
    before = jnp.concatenate([jnp.zeros_like(after[:, :1]), after[:, :-1]], axis=1)      # after_{c-1}, 0 at c=0
    d_log_decay = jnp.sum(g * before, axis=(-2, -1)) * jnp.exp(log_decay)
    d_log_decay = d_log_decay + jax.lax.cumsum(d_prefix, axis=1, reverse=True)          # prefix = cumsum
    return d_log_decay, g


_linear_scan.defvjp(_linear_scan_fwd, _linear_scan_bwd)


def _chunk_scan(log_decay, states, initial_state):
    """States entering each chunk and the final state (the inter-chunk step of docs/ssd.md).

    log_decay: (b, c, G, R) chunk log-decays; states: (b, c, G, R, P, N) chunk states from zero;
    initial_state: (b, G, R, P, N) or None. Returns (state_in (b, c, G, R, P, N), final (b, G, R, P, N)).
    """
    prefix, after = _linear_scan(log_decay, states)
    if initial_state is not None:
        after = after + jnp.exp(prefix)[..., None, None] * initial_state[:, None]       # exp(prefix) <= 1
        first = initial_state[:, None]
    else:
        first = jnp.zeros_like(after[:, :1])
    state_in = jnp.concatenate([first, after[:, :-1]], axis=1)
    return state_in, after[:, -1]


def _inter_chunk_output(state_in, C, cs):
    """Off-diagonal output y_off[i] = exp(cs_i) * (S_in . C_i) (docs/ssd.md), float32.

    state_in: (..., G, R, P, N) f32; C: (..., Q, G, N); cs: (..., Q, G, R) <= 0. Returns (..., Q, G, R, P).
    """
    gdt = _gemm_dtype(C)
    y = _einsum("...grpn,...ign->...igrp", state_in, C, gdt)
    return y * jnp.exp(cs)[..., None]


def _map_chunks(x, dt, A, B, C, chunks_per_step, with_states=True):
    """`_intra_chunk` over all (batch, chunk) pairs, `chunks_per_step` at a time, under `jax.checkpoint`.

    Remat: the backward pass recomputes the (Q, Q) decay matrices and chunk-local products from the inputs instead
    of keeping B*L*Q*H-sized residuals alive. Mapping (`lax.map`) over groups of chunks bounds the transient to
    chunks_per_step*Q*Q*H elements per tensor and lets every step reuse the same small, cache-warm buffers.
    Inputs have leading dims (batch, chunks); so do the outputs.
    """
    b, c = x.shape[:2]
    flat = [t.reshape(b * c, *t.shape[2:]) for t in (x, dt, B, C)]
    body = jax.checkpoint(lambda xs: _intra_chunk(xs[0], xs[1], A, xs[2], xs[3], with_states))
    if chunks_per_step is None:
        q, heads = x.shape[2], x.shape[3] * x.shape[4]
        chunks_per_step = max(1, _BLOCK_ELEMENTS // (q * q * heads))
    if chunks_per_step <= 0 or chunks_per_step >= b * c:
        out = body(flat)
    else:
        out = jax.lax.map(body, flat, batch_size=chunks_per_step)
    return tuple(None if t is None else t.reshape(b, c, *t.shape[1:]) for t in out)


def chunk_length(length: int, chunk_size: int) -> int:
    """The chunk length Q the chunked SSD uses: as many chunks as `chunk_size` needs, each as short as possible.

    ceil(length / chunk_size) chunks of ceil(length / chunks) tokens: never longer than `chunk_size`, and the padded
    tail is under one token per chunk instead of up to a whole chunk (258 tokens at chunk_size 32: 9 chunks of 29,
    261 tokens, not 288; 66 tokens: 3 chunks of 22, not 96). The result is the same for any Q (docs/ssd.md).
    """
    nchunks = -(-length // chunk_size)
    return -(-length // nchunks)


def _ssd_chunked(x, dt, A, B, C, chunk_size, initial_state, chunks_per_step, need_state=True):
    """Chunked SSD (docs/ssd.md). Returns (y f32 (b, L, H, P), final_state f32 (b, H, P, N) or None).

    `need_state=False` (no final state wanted) lets a one-chunk sequence without an initial state skip the
    chunk states and the inter-chunk scan entirely: both are zero work in value, but their (zero) cotangents would
    still be materialised in the backward pass, which at a few tokens per image costs more than the rest of the SSD.
    """
    b, length, heads, dim = x.shape
    groups, nstate = B.shape[2], B.shape[3]
    reps = heads // groups
    q = chunk_length(length, chunk_size)
    nchunks = -(-length // q)
    pad = nchunks * q - length
    if pad:
        # Identity elements at the END: dt = 0 gives decay exp(0) = 1 and zero input, x = B = C = 0 add nothing,
        # so real outputs and the final state are unchanged.
        widths = lambda t: [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2)  # noqa: E731
        x, dt, B, C = (jnp.pad(t, widths(t)) for t in (x, dt, B, C))
    xc = x.reshape(b, nchunks, q, groups, reps, dim)
    dtc = dt.reshape(b, nchunks, q, groups, reps)
    Bc = B.reshape(b, nchunks, q, groups, nstate)
    Cc = C.reshape(b, nchunks, q, groups, nstate)
    Ag = A.reshape(groups, reps)
    init = None if initial_state is None else initial_state.astype(_F32).reshape(b, groups, reps, dim, nstate)

    if nchunks == 1 and init is None and not need_state:
        y_diag, _, _ = _map_chunks(xc, dtc, Ag, Bc, Cc, chunks_per_step, with_states=False)
        return y_diag.reshape(b, q, heads, dim)[:, :length], None
    y_diag, states, cs = _map_chunks(xc, dtc, Ag, Bc, Cc, chunks_per_step)
    state_in, final = _chunk_scan(cs[:, :, -1], states, init)
    y_off = jax.checkpoint(_inter_chunk_output)(state_in, Cc, cs)
    y = (y_diag + y_off).reshape(b, nchunks * q, heads, dim)[:, :length]
    return y, final.reshape(b, heads, dim, nstate)


# ----------------------------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------------------------
def ssd(x: jax.Array, dt: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, *, chunk_size: int = 128,
        impl: str = "chunked", initial_state: jax.Array | None = None, return_state: bool = False,
        chunks_per_step: int | None = None):
    """SSD scan S_t = exp(dt_t*A)*S_{t-1} + dt_t*outer(x_t, B_t), y_t = S_t @ C_t (docs/ssd.md, "The recurrence").

    Args:
      x: (batch, length, heads, head_dim) inputs, float32 or bfloat16.
      dt: (batch, length, heads) positive step sizes (softplus already applied).
      A: (heads,) negative decay rates.
      B, C: (batch, length, groups, state); `groups` divides `heads`, head h uses group h // (heads // groups).
      chunk_size: the longest chunk for impl="chunked": the sequence is cut into ceil(length / chunk_size) chunks
        of equal length Q = `chunk_length(length, chunk_size)`, the last padded with identities (any length works).
      impl: "chunked" (SSD block form, memory linear in length) or "recurrent" (`lax.scan` over time, the oracle).
      initial_state: (batch, heads, head_dim, state) float32 state before the first token, or None for zeros.
      return_state: also return the state after the last token.
      chunks_per_step: (extension) chunks processed per step of the within-chunk map for impl="chunked"; None
        picks ~2^21 / (Q*Q*heads) (bounded transient memory, cache-warm buffers), 0 processes all chunks at once.

    Returns:
      y: (batch, length, heads, head_dim) in x.dtype; with return_state=True the tuple
      (y, final_state (batch, heads, head_dim, state) float32).
    """
    x, dt, A, B, C = (jnp.asarray(t) for t in (x, dt, A, B, C))
    b, length, heads, dim, groups, nstate = _check_args(x, dt, A, B, C, chunk_size, impl, initial_state,
                                                         chunks_per_step)
    if length == 0:
        y = jnp.zeros(x.shape, x.dtype)
        final = (jnp.zeros((b, heads, dim, nstate), _F32) if initial_state is None
                 else jnp.asarray(initial_state, _F32))
    elif impl == "recurrent":
        y, final = _ssd_recurrent(x, dt, A, B, C, initial_state)
    else:
        y, final = _ssd_chunked(x, dt, A, B, C, chunk_size, initial_state, chunks_per_step, need_state=return_state)
    y = y.astype(x.dtype)
    return (y, final) if return_state else y


def ssd_flops(length: int, heads: int, head_dim: int, state: int, groups: int, chunk_size: int = 128,
              padded: bool = True) -> float:
    """Forward FLOPs of the chunked SSD (docs/ssd.md, "FLOPs"): GEMMs only, per token
    2*Q*G*N (C.B^T) + 2*Q*D (decay-weighted sum over the chunk) + 4*N*D (chunk states and y_off), D = heads*head_dim.

    Q = chunk_length(length, chunk_size) as in `ssd`. With padded=True (default) the count is over the padded length
    ceil(length/Q)*Q, i.e. what the implementation executes; padded=False counts `length` tokens. Elementwise work
    (masks, exps) and the inter-chunk scan (O(length/Q * D * N)) are not counted.
    """
    if length < 1 or chunk_size < 1 or groups < 1 or heads % groups:
        raise ValueError(f"invalid ssd_flops arguments: length={length}, chunk_size={chunk_size}, "
                         f"heads={heads}, groups={groups}")
    q = chunk_length(length, chunk_size)
    tokens = math.ceil(length / q) * q if padded else length
    d = heads * head_dim
    return float(tokens * (2 * q * groups * state + 2 * q * d + 4 * state * d))


# A jitted entry point with the static options marked, for benchmarks and interactive use.
ssd_jit = jax.jit(ssd, static_argnames=("chunk_size", "impl", "return_state", "chunks_per_step"))
