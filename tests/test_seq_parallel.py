"""Sequence parallelism on 8 virtual CPU devices (conftest.py): every sharded op against a float64 NumPy reference
or the unsharded computation, then whole models (losses and gradients) and the compiled per-device memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixeltok import sharding
from pixeltok.ops import seq_parallel as sp
from pixeltok.ops import ssd as ssd_lib

# (mesh, token count): lengths that are multiples of neither the shard count nor the chunk (8).
MESHES = [({"seq": 2, "data": 4}, 37), ({"seq": 4, "data": 2}, 37), ({"seq": 8}, 61)]


def _mesh(cfg):
    return sharding.make_mesh({**cfg, "data": cfg.get("data", 1)}, jax.devices()[:cfg["seq"] * cfg.get("data", 1)])


# ------------------------------------------------------------------------------------------------ float64 oracles
def ssd_reference(x, dt, A, B, C, s0):
    """The SSD recurrence token by token in float64 (head h uses group h // (heads // groups))."""
    x, dt, A, B, C, s = (np.asarray(t, np.float64) for t in (x, dt, A, B, C, s0))
    b, L, H, _ = x.shape
    reps = H // B.shape[2]
    y = np.zeros_like(x)
    for t in range(L):
        Bt, Ct = np.repeat(B[:, t], reps, axis=1), np.repeat(C[:, t], reps, axis=1)        # (b, H, N)
        s = np.exp(dt[:, t] * A)[..., None, None] * s + (dt[:, t, :, None] * x[:, t])[..., None] * Bt[:, :, None]
        y[:, t] = np.einsum("bhpn,bhn->bhp", s, Ct)
    return y


def _ssd_inputs(b, L, H=4, P=8, G=2, N=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, L, H, P)).astype(np.float32)
    dt = (0.5 * np.log1p(np.exp(rng.standard_normal((b, L, H))))).astype(np.float32)
    A = (-np.exp(rng.uniform(-1, 1.5, (H,)))).astype(np.float32)
    B = rng.standard_normal((b, L, G, N)).astype(np.float32)
    C = rng.standard_normal((b, L, G, N)).astype(np.float32)
    s0 = rng.standard_normal((b, H, P, N)).astype(np.float32)
    return x, dt, A, B, C, s0


@pytest.mark.parametrize("mesh_cfg, L", MESHES)
def test_sharded_ssd_matches_recurrence_and_grads(mesh_cfg, L):
    b = 4
    args = _ssd_inputs(b, L)
    w = jnp.cos(jnp.arange(L, dtype=jnp.float32))[None, :, None, None]       # a non-uniform loss weighting

    def sharded(x, dt, A, B, C, s0):
        lay = sp.current_layout(L, b)
        assert lay is not None and lay.shards == mesh_cfg["seq"]
        y = sp.ssd(*(sp.shard_tokens(t, lay) for t in (x, dt)), A, *(sp.shard_tokens(t, lay) for t in (B, C)),
                   lay, chunk_size=8, initial_state=s0)
        return y[:, :L]

    def unsharded(x, dt, A, B, C, s0):
        return ssd_lib.ssd(x, dt, A, B, C, chunk_size=8, initial_state=s0)

    with jax.set_mesh(_mesh(mesh_cfg)):
        y = jax.jit(sharded)(*args)
        np.testing.assert_allclose(np.asarray(y), ssd_reference(*args), rtol=1e-4, atol=1e-4)
        grad = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * w), argnums=tuple(range(6))))  # noqa: E731
        got, want = grad(sharded)(*args), grad(unsharded)(*args)
    for name, g, r in zip("x dt A B C s0".split(), got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-4 * np.abs(r).max(),
                                   err_msg=name)


@pytest.mark.parametrize("mesh_cfg, L", MESHES)
def test_sharded_token_ops(mesh_cfg, L):
    """Masked mean, prefix reversal (cls + padding stay put), conv with halo and prefix, all-gather attention."""
    b, d = 4, 6
    rng = np.random.default_rng(1)
    h = rng.standard_normal((b, L, d)).astype(np.float32)
    kernel = rng.standard_normal((4, 1, d)).astype(np.float32)
    bias = rng.standard_normal(d).astype(np.float32)
    prefix = rng.standard_normal((b, 3, d)).astype(np.float32)
    q, k, v = (rng.standard_normal((b, L, 2, 8)).astype(np.float32) for _ in range(3))
    with jax.set_mesh(_mesh(mesh_cfg)):
        lay = sp.current_layout(L, b)
        put = lambda t: sp.shard_tokens(t, lay)  # noqa: E731
        mean = jax.jit(lambda h: sp.global_mean(put(h), lay))(h)
        revs = {n: jax.jit(lambda h, n=n: sp.reverse_prefix(put(h), n, lay)[:, :L])(h) for n in (L, L - 1, 3)}
        conv = jax.jit(lambda h, p: sp.causal_conv(put(h), kernel, bias, lay, prefix=p)[:, :L])(h, prefix)
        attn = jax.jit(lambda q, k, v: sp.attention(put(q), put(k), put(v), lay, q_block=4)[:, :L])(q, k, v)
    h64 = h.astype(np.float64)
    np.testing.assert_allclose(np.asarray(mean)[:, 0], h64.mean(1), rtol=1e-5, atol=1e-6)
    for n, r in revs.items():
        np.testing.assert_array_equal(np.asarray(r), np.concatenate([h[:, :n][:, ::-1], h[:, n:]], axis=1))
    xp = np.concatenate([prefix, h], axis=1).astype(np.float64)
    want = bias + sum(xp[:, j:j + L] * kernel[j, 0] for j in range(4))
    np.testing.assert_allclose(np.asarray(conv), want, rtol=1e-5, atol=1e-5)
    s = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), k) / np.sqrt(8)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(attn), np.einsum("bhqk,bkhd->bqhd", p, v), rtol=1e-4, atol=1e-5)


def test_layout_padding_and_no_seq_axis():
    lay = sp.make_layout(37, 8)
    assert (lay.padded, lay.local) == (40, 5)
    assert sp.make_layout(5, 4).local == sp.MIN_LOCAL          # tiny sequences: at least a conv halo per shard
    with jax.set_mesh(sharding.make_mesh({"data": 8})):
        assert sp.current_layout(37, 8) is None
    with jax.set_mesh(sharding.make_mesh({"data": 2, "fsdp": 2, "seq": 2})):
        lay = sp.current_layout(37, 8)
        assert lay.batch_axes == ("data", "fsdp") and lay.shards == 2
        assert sp.current_layout(37, 3).batch_axes == ()       # a batch that does not divide: replicated
    with pytest.raises(ValueError, match="shards"):
        sp.make_layout(10, 0)
