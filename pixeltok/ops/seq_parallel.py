"""Sequence parallelism: one image's tokens split over the `seq` mesh axis, every token-mixing op exact.

Activations are (batch, L, ...) with the token axis L split into `shards` equal blocks over the mesh axis "seq"
(the batch axis over the data-parallel axes, as everywhere). Per-token work (norms, projections, MLPs, drop-path)
needs nothing special: under `jax.jit` the partitioner keeps it local. The ops here are the ones that mix tokens,
each a `jax.shard_map` with a small, fixed collective pattern (docs/sharding.md has the algebra and measurements):

* `ssd`: the SSD scan. Each shard runs the chunked `pixeltok.ops.ssd.ssd` on its tokens from a zero state, and
  computes its total log-decay lam_k = sum_t dt_t A <= 0. The pairs (lam_k, S_k) of all shards are all-gathered
  (S x (heads, head_dim, state) floats per device: tiny next to the activations) and combined by an exclusive
  associative scan over shards with (a1, s1) o (a2, s2) = (a1 + a2, exp(a2) s1 + s2) in log space, i.e. the chunk
  combine of the single-device scan lifted to devices. Shard k then adds C_t . exp(cs_t) S_in(k) to its outputs,
  cs_t the within-shard inclusive cumulative log-decay (a sum of non-positive terms, so every exponent is <= 0).
  An all-gather instead of a ppermute chain: one collective of latency log(S) instead of S - 1 dependent hops,
  for a payload of S states that is negligible at any shard count that fits a device. Gradients are exact by
  autodiff through the collectives (the all-gather transposes to a reduce-scatter).
* `causal_conv`: the depthwise causal conv1d; each shard receives the previous shard's last K - 1 inputs by one
  `ppermute` (shard 0 receives the `prefix` tokens, zeros by default, as the unsharded zero padding).
* `global_mean`: the masked token mean (padding excluded), float32 accumulation, one `psum`.
* `reverse_prefix`: reverses the first `n` tokens of the global sequence and leaves the rest (the trailing cls
  token and the padding) in place: shard order reversed by one `ppermute`, each block reversed locally, then a
  static left shift by the number of trailing tokens (two more `ppermute`s of at most one block).
* `attention`: exact softmax attention of each shard's queries against the keys/values of all shards: K and V are
  all-gathered (the simplest exact form; its cost and the alternative, ring attention, are discussed and measured
  in docs/sharding.md), padded keys masked, query blocks of `q_block` rows under `jax.checkpoint`.

Padding: a sequence of L tokens is padded at the END to `SeqLayout.padded` (a multiple of the shard count, at
least `MIN_LOCAL` tokens per shard). Padding after every real token cannot reach a real token through a causal
scan or a causal conv; the mean and the attention keys mask it out, and the SSD zeroes dt there so every shard's
state is the state after its real tokens.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from pixeltok.ops import ssd as ssd_lib

Array = jax.Array

AXIS = "seq"
MIN_LOCAL = 4          # tokens per shard at least (>= conv K - 1, so a halo comes from one neighbour)
_F32 = jnp.float32
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SeqLayout:
    """How a (batch, length, ...) activation is split over the `seq` mesh axis.

    Attributes:
      length: real tokens.
      shards: size of the seq axis.
      padded: tokens after end padding, a multiple of `shards`, >= MIN_LOCAL per shard.
      batch_axes: mesh axes the batch dim is split over inside the shard_maps (() = replicated).
      axis: the mesh axis name.
    """
    length: int
    shards: int
    padded: int
    batch_axes: tuple[str, ...] = ()
    axis: str = AXIS

    @property
    def local(self) -> int:
        """Tokens per shard."""
        return self.padded // self.shards

    def spec(self, ndim: int) -> P:
        """PartitionSpec of a (batch, tokens, ...) activation: batch over `batch_axes`, tokens over seq."""
        return P(self.batch_axes or None, self.axis, *([None] * (ndim - 2)))

    @property
    def batch_spec(self) -> P:
        """PartitionSpec of a (batch, ...) per-image value, replicated over seq."""
        return P(self.batch_axes or None)


def make_layout(length: int, shards: int, batch_axes: tuple[str, ...] = (), axis: str = AXIS) -> SeqLayout:
    """SeqLayout for `length` tokens over `shards` devices (end padding up to a multiple, >= MIN_LOCAL each)."""
    if length < 1 or shards < 1:
        raise ValueError(f"length {length} and shards {shards} must be >= 1")
    local = max(-(-length // shards), MIN_LOCAL)
    return SeqLayout(length=length, shards=shards, padded=local * shards, batch_axes=tuple(batch_axes), axis=axis)


def current_layout(length: int, batch: int, mesh=None) -> SeqLayout | None:
    """The layout for the ambient mesh (`jax.set_mesh`), or None when it has no seq axis of size > 1.

    The batch is split over the mesh's data-parallel axes ("data", "fsdp") when it divides their product.
    """
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or AXIS not in mesh.axis_names or mesh.shape[AXIS] == 1:
        return None
    axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names and mesh.shape[a] > 1)
    if batch % max(1, math.prod(mesh.shape[a] for a in axes)):
        axes = ()
    return make_layout(length, int(mesh.shape[AXIS]), axes)


def _smap(fn, layout: SeqLayout, in_specs, out_specs):
    """shard_map over the ambient mesh (`jax.set_mesh`); every mesh axis manual inside."""
    del layout
    return jax.shard_map(fn, in_specs=in_specs, out_specs=out_specs)


def shard_tokens(x: Array, layout: SeqLayout) -> Array:
    """Pads (batch, length, ...) at the end to layout.padded with zeros and constrains it to the seq sharding."""
    if x.shape[1] != layout.length:
        raise ValueError(f"activation has {x.shape[1]} tokens; the layout expects {layout.length}")
    pad = layout.padded - layout.length
    # Pin the unpadded input to "replicated over seq" first: otherwise the partitioner propagates the seq split
    # backwards through the pad into the producer (the patch embedding) with mismatched shard shapes.
    x = jax.lax.with_sharding_constraint(x, P(layout.batch_axes or None))
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jax.lax.with_sharding_constraint(x, layout.spec(x.ndim))


def constrain(x: Array, layout: SeqLayout) -> Array:
    """Constrains an already padded (batch, padded, ...) activation to the seq sharding."""
    return jax.lax.with_sharding_constraint(x, layout.spec(x.ndim))


def _positions(layout: SeqLayout) -> Array:
    """Global token index of each local position (inside a shard_map): (local,) int32."""
    k = jax.lax.axis_index(layout.axis)
    return k * layout.local + jnp.arange(layout.local, dtype=jnp.int32)


def token_mask(layout: SeqLayout) -> Array:
    """(padded,) bool, True on real tokens (outside shard_map; the partitioner shards it with its users)."""
    return jnp.arange(layout.padded) < layout.length


# ----------------------------------------------------------------------------------------------------------------
# Mean, reversal, conv halo
# ----------------------------------------------------------------------------------------------------------------
def global_mean(x: Array, layout: SeqLayout) -> Array:
    """Mean over the real tokens of (batch, padded, d): (batch, 1, d) float32, replicated over seq."""
    def local(xl):
        valid = (_positions(layout) < layout.length)[None, :, None]
        s = jnp.sum(jnp.where(valid, xl.astype(_F32), 0.0), axis=1, keepdims=True)
        return jax.lax.psum(s, layout.axis) / layout.length
    return _smap(local, layout, (layout.spec(3),), P(layout.batch_axes or None, None, None))(x)


def _shift_from(x: Array, offset: int, layout: SeqLayout) -> Array:
    """out[k] = x[k + offset] per shard k (zeros where k + offset is not a shard), inside a shard_map."""
    if offset == 0:
        return x
    perm = [(k + offset, k) for k in range(layout.shards) if 0 <= k + offset < layout.shards]
    if not perm:
        return jnp.zeros_like(x)
    return jax.lax.ppermute(x, layout.axis, perm)


def reverse_prefix(x: Array, n: int, layout: SeqLayout) -> Array:
    """Reverses tokens 0..n-1 of (batch, padded, ...) and keeps tokens n.. (cls, padding) in place. Self-inverse.

    With R the global reversal of x (R[j] = x[padded - 1 - j]: shard k gets shard S-1-k's block reversed),
    the result is R[j + t] for j < n, t = padded - n: a left shift by t tokens = q whole shards and r tokens,
    i.e. each shard concatenates R's shard k+q from token r with the first r tokens of shard k+q+1.
    """
    if not 0 <= n <= layout.length:
        raise ValueError(f"reverse_prefix n={n} must be in [0, {layout.length}]")
    m, t = layout.local, layout.padded - n
    q, r = divmod(t, m)

    def local(xl):
        swap = [(k, layout.shards - 1 - k) for k in range(layout.shards)]
        rev = jnp.flip(jax.lax.ppermute(xl, layout.axis, swap), axis=1)
        a = _shift_from(rev, q, layout)
        shifted = a if r == 0 else jnp.concatenate([a[:, r:], _shift_from(rev[:, :r], q + 1, layout)], axis=1)
        keep = (_positions(layout) < n).reshape((1, m) + (1,) * (xl.ndim - 2))
        return jnp.where(keep, shifted, xl)
    return _smap(local, layout, (layout.spec(x.ndim),), layout.spec(x.ndim))(x)


def causal_conv(x: Array, kernel: Array, bias: Array, layout: SeqLayout, prefix: Array | None = None) -> Array:
    """Causal depthwise conv1d of (batch, padded, channels): out[t] = bias + sum_k kernel[k] x[t - (K-1) + k].

    The K - 1 inputs before each shard come from the previous shard (one ppermute); before shard 0 they are
    `prefix` (batch, K-1, channels) (tokens that precede the sequence, e.g. the heading token) or zeros.
    kernel: (K, 1, channels) (flax depthwise layout), bias: (channels,). Output in x.dtype.
    """
    k_size = kernel.shape[0]
    if k_size - 1 > layout.local:
        raise ValueError(f"conv kernel {k_size} needs >= {k_size - 1} tokens per shard; have {layout.local}")
    if prefix is None:
        prefix = jnp.zeros((x.shape[0], k_size - 1, x.shape[2]), x.dtype)
    if k_size == 1:
        return bias.astype(x.dtype) + x * kernel[0, 0].astype(x.dtype)

    def local(xl, kern, b, pre):
        halo = _shift_from(xl[:, -(k_size - 1):], -1, layout)
        halo = jnp.where(jax.lax.axis_index(layout.axis) == 0, pre.astype(xl.dtype), halo)
        xp = jnp.concatenate([halo, xl], axis=1)
        out = b.astype(xl.dtype)
        for k in range(k_size):
            out = out + xp[:, k:k + layout.local] * kern[k, 0].astype(xl.dtype)
        return out
    return _smap(local, layout, (layout.spec(3), P(), P(), P(layout.batch_axes or None)), layout.spec(3))(
        x, kernel, bias, prefix)


# ----------------------------------------------------------------------------------------------------------------
# SSD
# ----------------------------------------------------------------------------------------------------------------
def _combine(left, right):
    """(log-decay, state) pairs: apply left, then right. Exponent a2 <= 0."""
    (a1, s1), (a2, s2) = left, right
    return a1 + a2, jnp.exp(a2)[..., None, None] * s1 + s2


def ssd(x: Array, dt: Array, A: Array, B: Array, C: Array, layout: SeqLayout, *, chunk_size: int = 128,
        initial_state: Array | None = None, chunks_per_step: int | None = None) -> Array:
    """`pixeltok.ops.ssd.ssd` over a token axis split on the seq mesh axis; same arguments, sharded (batch,
    padded, ...) x, dt, B, C; A (heads,) replicated; initial_state (batch, heads, head_dim, state) float32 or
    None: the state before token 0 (replicated over seq). Returns y (batch, padded, heads, head_dim) in x.dtype;
    outputs at padded positions are those of a scan that ignores the padding (dt = 0 there).
    """
    b, _, heads, dim = x.shape
    groups, nstate = B.shape[2], B.shape[3]
    reps = heads // groups
    init = (jnp.zeros((b, heads, dim, nstate), _F32) if initial_state is None
            else initial_state.astype(_F32))

    def local(xl, dtl, a_rates, bl, cl, s0):
        valid = (_positions(layout) < layout.length)[None, :, None]
        dtl = jnp.where(valid, dtl.astype(_F32), 0.0)            # padding: decay 1, no input
        y, final = ssd_lib.ssd(xl, dtl, a_rates, bl, cl, chunk_size=chunk_size, return_state=True,
                               chunks_per_step=chunks_per_step)
        loga = dtl * a_rates.astype(_F32)                          # (b, m, H) <= 0
        lam = jnp.sum(loga, axis=1)                                # shard total log-decay (b, H)
        # All shards' (lam, final) plus the initial state as a virtual shard -1 (lam = 0), then an exclusive scan.
        lams = jax.lax.all_gather(lam, layout.axis)               # (S, b, H)
        states = jax.lax.all_gather(final, layout.axis)           # (S, b, H, P, N)
        lams = jnp.concatenate([jnp.zeros_like(lams[:1]), lams], axis=0)
        states = jnp.concatenate([s0[None], states], axis=0)
        _, after = jax.lax.associative_scan(_combine, (lams, states), axis=0)
        s_in = jax.lax.dynamic_index_in_dim(after, jax.lax.axis_index(layout.axis), 0, keepdims=False)
        return (y.astype(_F32) + _incoming(s_in, cl, loga)).astype(xl.dtype)

    @jax.checkpoint            # recompute the (b, m, heads) decays in the backward pass instead of saving them
    def _incoming(s_in, cl, loga):
        # Contribution of the incoming state: y_t += exp(cs_t) * (S_in . C_t), cs_t = sum_{s <= t} loga_s <= 0.
        cs = jax.lax.cumsum(loga, axis=1)
        s_g = s_in.reshape(b_loc(cl), groups, reps, dim, nstate)
        corr = jnp.einsum("bgrpn,btgn->btgrp", s_g, cl.astype(_F32), precision=_HIGHEST)
        return corr.reshape(cl.shape[0], layout.local, heads, dim) * jnp.exp(cs)[..., None]

    b_loc = lambda t: t.shape[0]  # noqa: E731  (the per-shard batch inside the shard_map)
    act = lambda nd: layout.spec(nd)  # noqa: E731
    fn = _smap(local, layout,
               (act(4), act(3), P(), act(4), act(4), P(layout.batch_axes or None)), act(4))
    return fn(x, dt, A, B, C, init)


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------
def _masked_attention(q: Array, k: Array, v: Array, valid: int, q_block: int) -> Array:
    """softmax(q k^T / sqrt(d)) v over keys [0, valid); q (b, m, h, d), k/v (b, L, h, d) -> (b, m, h, d).

    Query blocks of <= q_block rows in a lax.map with a checkpointed body: one (b, h, q_block, L) block of
    probabilities alive at a time, recomputed in the backward pass. Float32 softmax, row max subtracted.
    """
    b, m, h, d = q.shape
    nb = -(-m // q_block)
    rows = -(-m // nb)
    qp = jnp.pad(q, ((0, 0), (0, nb * rows - m), (0, 0), (0, 0))).reshape(b, nb, rows, h, d).swapaxes(0, 1)
    key_ok = (jnp.arange(k.shape[1]) < valid)[None, None, None, :]
    scale = 1.0 / math.sqrt(d)

    @jax.checkpoint
    def block(qb):
        s = jnp.einsum("bqhd,bkhd->bhqk", qb, k, preferred_element_type=_F32) * scale
        s = jnp.where(key_ok, s, -jnp.inf)
        p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
        o = jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v, preferred_element_type=_F32)
        return (o / jnp.sum(p, axis=-1).swapaxes(1, 2)[..., None]).astype(q.dtype)

    o = jax.lax.map(block, qp) if nb > 1 else block(qp[0])[None]
    return o.swapaxes(0, 1).reshape(b, nb * rows, h, d)[:, :m]


def attention(q: Array, k: Array, v: Array, layout: SeqLayout, *, q_block: int = 256) -> Array:
    """Exact attention of sharded (batch, padded, heads, head_dim) q against the keys/values of every shard.

    K and V are all-gathered over seq (padded keys masked); each shard attends its own queries.
    """
    def local(ql, kl, vl):
        kg = jax.lax.all_gather(kl, layout.axis, axis=1, tiled=True)
        vg = jax.lax.all_gather(vl, layout.axis, axis=1, tiled=True)
        return _masked_attention(ql, kg, vg, layout.length, q_block)
    spec = layout.spec(4)
    return _smap(local, layout, (spec, spec, spec), spec)(q, k, v)


# Ring attention: K/V blocks travel around the seq ring (ppermute), an online softmax accumulates each shard's
# output; the custom VJP runs the ring again with the blocks' dK/dV travelling along and arriving home at the
# end, so no device ever holds more than two blocks of keys/values (O(L / S) memory instead of O(L)).
_NEG = -1e30           # finite "minus infinity" for the running max: a fully masked block never gives inf - inf


def _ring_perm(layout: SeqLayout):
    return [(j, (j + 1) % layout.shards) for j in range(layout.shards)]


def _q_blocks(t: Array, rows: int) -> Array:
    """(b, h, m, ...) -> (nb, b, h, rows, ...) with m padded to nb * rows."""
    b, h, m = t.shape[:3]
    nb = -(-m // rows)
    t = jnp.pad(t, [(0, 0), (0, 0), (0, nb * rows - m)] + [(0, 0)] * (t.ndim - 3))
    return jnp.moveaxis(t.reshape(b, h, nb, rows, *t.shape[3:]), 2, 0)


def _un_q_blocks(t: Array, m: int) -> Array:
    nb, b, h, rows = t.shape[:4]
    return jnp.moveaxis(t, 0, 2).reshape(b, h, nb * rows, *t.shape[4:])[:, :, :m]


def _ring_fwd_local(q, k, v, layout: SeqLayout, q_block: int):
    """q, k, v: (b, h, m, d) local blocks. Returns (o (b, h, m, d) in q.dtype, lse (b, h, m) float32)."""
    b, h, m, d = q.shape
    scale = 1.0 / math.sqrt(d)
    me = jax.lax.axis_index(layout.axis)
    rows = min(q_block, m)
    qb = _q_blocks(q, rows)
    nb = qb.shape[0]
    o = jnp.zeros((nb, b, h, rows, d), _F32)
    mx = jnp.full((nb, b, h, rows), _NEG, _F32)
    lsum = jnp.zeros((nb, b, h, rows), _F32)
    for i in range(layout.shards):
        src = (me - i) % layout.shards
        key_ok = (src * m + jnp.arange(m)) < layout.length                     # (m,)

        def update(args, kb=k, vb=v, key_ok=key_ok):
            qi, oi, mi, li = args
            s = jnp.einsum("bhqd,bhkd->bhqk", qi, kb, preferred_element_type=_F32) * scale
            s = jnp.where(key_ok, s, -jnp.inf)
            m_new = jnp.maximum(mi, s.max(-1))
            p = jnp.exp(s - m_new[..., None])                                   # exponent <= 0, masked -> 0
            corr = jnp.exp(mi - m_new)
            oi = oi * corr[..., None] + jnp.einsum("bhqk,bhkd->bhqd", p.astype(vb.dtype), vb,
                                                   preferred_element_type=_F32)
            return oi, m_new, li * corr + p.sum(-1)

        o, mx, lsum = jax.lax.map(update, (qb, o, mx, lsum))
        if i + 1 < layout.shards:
            k, v = jax.lax.ppermute((k, v), layout.axis, _ring_perm(layout))
    out = (o / lsum[..., None]).astype(q.dtype)
    return _un_q_blocks(out, m), _un_q_blocks(mx + jnp.log(lsum), m)


def _ring_bwd_local(q, k, v, o, lse, do, layout: SeqLayout, q_block: int):
    b, h, m, d = q.shape
    scale = 1.0 / math.sqrt(d)
    me = jax.lax.axis_index(layout.axis)
    rows = min(q_block, m)
    delta = jnp.sum(do.astype(_F32) * o.astype(_F32), axis=-1)                 # rowsum(dO * O) = rowsum(dP * P)
    qb, dob, lseb, deltab = (_q_blocks(t, rows) for t in (q, do, lse, delta))
    dq = jnp.zeros(qb.shape, _F32)
    dk, dv = k.astype(_F32) * 0.0, v.astype(_F32) * 0.0           # (varying over seq, as the scan's carry out)
    for i in range(layout.shards):
        src = (me - i) % layout.shards
        key_ok = (src * m + jnp.arange(m)) < layout.length

        def step(carry, xs, kb=k, vb=v, key_ok=key_ok):
            dk_acc, dv_acc = carry
            qi, doi, lsei, deltai, dqi = xs
            s = jnp.einsum("bhqd,bhkd->bhqk", qi, kb, preferred_element_type=_F32) * scale
            p = jnp.exp(jnp.where(key_ok, s - lsei[..., None], -jnp.inf))     # s*scale - lse <= 0
            dp = jnp.einsum("bhqd,bhkd->bhqk", doi, vb, preferred_element_type=_F32)
            ds = p * (dp - deltai[..., None]) * scale
            dqi = dqi + jnp.einsum("bhqk,bhkd->bhqd", ds.astype(kb.dtype), kb, preferred_element_type=_F32)
            dk_acc = dk_acc + jnp.einsum("bhqk,bhqd->bhkd", ds.astype(qi.dtype), qi, preferred_element_type=_F32)
            dv_acc = dv_acc + jnp.einsum("bhqk,bhqd->bhkd", p.astype(doi.dtype), doi, preferred_element_type=_F32)
            return (dk_acc, dv_acc), dqi

        (dk, dv), dq = jax.lax.scan(step, (dk, dv), (qb, dob, lseb, deltab, dq))
        # The block and its gradient move on together; after the last step one more hop brings dK/dV home.
        if i + 1 < layout.shards:
            k, v, dk, dv = jax.lax.ppermute((k, v, dk, dv), layout.axis, _ring_perm(layout))
        else:
            dk, dv = jax.lax.ppermute((dk, dv), layout.axis, _ring_perm(layout))
    return _un_q_blocks(dq, m).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def ring_attention(q: Array, k: Array, v: Array, layout: SeqLayout, *, q_block: int = 256) -> Array:
    """Exact attention like `attention`, with K/V passed around the seq ring instead of all-gathered.

    Per device it holds two (padded / S)-token K/V blocks at a time (all-gather: all `padded` tokens), at the
    price of S - 1 dependent ppermute hops forward and S backward (a custom VJP: the backward pass recomputes the
    probabilities from the saved log-sum-exp, flash-attention style). q, k, v: (batch, padded, heads, head_dim).
    """
    @jax.custom_vjp
    def ring(ql, kl, vl):
        return _ring_fwd_local(ql, kl, vl, layout, q_block)[0]

    def fwd(ql, kl, vl):
        o, lse = _ring_fwd_local(ql, kl, vl, layout, q_block)
        return o, (ql, kl, vl, o, lse)

    def bwd(res, do):
        return _ring_bwd_local(*res, do, layout, q_block)

    ring.defvjp(fwd, bwd)

    def local(ql, kl, vl):
        t = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731  (b, m, h, d) <-> (b, h, m, d)
        return t(ring(t(ql), t(kl), t(vl)))

    spec = layout.spec(4)
    return _smap(local, layout, (spec, spec, spec), spec)(q, k, v)
