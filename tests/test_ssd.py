"""Tests for pixeltok.ops.ssd against a float64 NumPy recurrence written here from the math (docs/ssd.md):

    S_t = exp(dt_t * A) * S_{t-1} + dt_t * outer(x_t, B_t),   y_t = S_t @ C_t,   head h uses group h // (H / G).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pixeltok.ops import ssd as ssd_module
from pixeltok.ops.ssd import chunk_length, ssd, ssd_flops, ssd_jit, ssd_reference


# ----------------------------------------------------------------------------------------------------------------
# Independent reference and inputs.
# ----------------------------------------------------------------------------------------------------------------
def numpy_ssd(x, dt, A, B, C, initial_state=None):
    """float64 recurrence, one time step at a time (vectorised over batch and heads). Returns (y, final_state)."""
    x, dt, A, B, C = (np.asarray(t, np.float64) for t in (x, dt, A, B, C))
    b, length, heads, dim = x.shape
    group_of_head = np.arange(heads) // (heads // B.shape[2])
    Bh, Ch = B[:, :, group_of_head], C[:, :, group_of_head]            # (b, L, H, N)
    S = np.zeros((b, heads, dim, B.shape[3])) if initial_state is None else np.array(initial_state, np.float64)
    y = np.empty_like(x)
    for t in range(length):
        S = (np.exp(dt[:, t] * A)[:, :, None, None] * S
             + dt[:, t, :, None, None] * x[:, t, :, :, None] * Bh[:, t, :, None, :])
        y[:, t] = np.einsum("bhpn,bhn->bhp", S, Ch[:, t])
    return y, S


def make_inputs(seed, b, length, heads, dim, groups, state, *, init=False, dt_range=(0.01, 1.0),
                a_range=(0.1, 2.0)):
    r = np.random.default_rng(seed)
    x = r.standard_normal((b, length, heads, dim)).astype(np.float32)
    dt = r.uniform(*dt_range, (b, length, heads)).astype(np.float32)
    A = -r.uniform(*a_range, (heads,)).astype(np.float32)
    B = r.standard_normal((b, length, groups, state)).astype(np.float32)
    C = r.standard_normal((b, length, groups, state)).astype(np.float32)
    S0 = r.standard_normal((b, heads, dim, state)).astype(np.float32) if init else None
    return x, dt, A, B, C, S0


def assert_close(actual, expected, rtol, what=""):
    """Max abs error relative to the largest |expected| (elementwise rtol is meaningless near zeros of y)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    err = np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:.1g}"


# ----------------------------------------------------------------------------------------------------------------
# Forward: chunked vs recurrent vs NumPy.
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,chunk_size,groups,init", [(1, 16, 1, False), (37, 16, 2, True), (48, 16, 1, True),
                                                             (100, 32, 2, False)])
def test_reference_matches_numpy_recurrent_and_chunked(length, chunk_size, groups, init):
    """`ssd_reference` (the readable chunked algorithm) against the float64 recurrence, the `lax.scan` oracle and the
    optimised chunked form, with a short last chunk (37, 100), exact chunks (48), groups and initial states."""
    x, dt, A, B, C, S0 = make_inputs(length + 3 * groups, 2, length, 4, 3, groups, 5, init=init)
    y_ref, s_ref = numpy_ssd(x, dt, A, B, C, S0)
    y, s = jax.jit(functools.partial(ssd_reference, chunk_size=chunk_size))(x, dt, A, B, C, initial_state=S0)
    tag = f"L={length} Q={chunk_size} G={groups} init={init}"
    assert y.dtype == jnp.float32 and s.dtype == jnp.float32
    assert_close(y, y_ref, 1e-5, "reference y " + tag)
    assert_close(s, s_ref, 1e-5, "reference state " + tag)
    for impl in ("recurrent", "chunked"):
        y_impl, s_impl = ssd_jit(x, dt, A, B, C, chunk_size=chunk_size, impl=impl, initial_state=S0,
                                 return_state=True)
        assert_close(y_impl, y, 1e-5, f"{impl} vs reference y " + tag)
        assert_close(s_impl, s, 1e-5, f"{impl} vs reference state " + tag)


def test_reference_extreme_decays_finite():
    """dt·A down to -800 per step: the reference's exponents stay <= 0, so it is finite and matches float64."""
    x, dt, A, B, C, _ = make_inputs(11, 1, 40, 2, 3, 1, 4, dt_range=(1.0, 50.0), a_range=(1.0, 16.0))
    y, s = jax.jit(functools.partial(ssd_reference, chunk_size=16))(x, dt, A, B, C)
    y_ref, s_ref = numpy_ssd(x, dt, A, B, C)
    assert_close(y, y_ref, 1e-5, "y")
    assert_close(s, s_ref, 1e-5, "state")


@pytest.mark.parametrize("length", [1, 7, 129, 300])
@pytest.mark.parametrize("chunk_size", [64, 128])
@pytest.mark.parametrize("groups", [1, 2])
def test_matches_numpy(length, chunk_size, groups):
    # initial_state on/off alternates so that every (length, chunk_size) and (length, groups) pair sees both.
    init = (groups == 2) != (chunk_size == 128)
    x, dt, A, B, C, S0 = make_inputs(length * 7 + groups, 2, length, 4, 3, groups, 5, init=init)
    y_ref, s_ref = numpy_ssd(x, dt, A, B, C, S0)
    for impl in ("chunked", "recurrent"):
        y, s = ssd_jit(x, dt, A, B, C, chunk_size=chunk_size, impl=impl, initial_state=S0, return_state=True)
        tag = f"{impl} L={length} Q={chunk_size} G={groups} init={init}"
        assert y.dtype == jnp.float32 and s.dtype == jnp.float32, tag
        assert_close(y, y_ref, 1e-5, "y " + tag)
        assert_close(s, s_ref, 1e-5, "state " + tag)


def test_return_value_forms():
    x, dt, A, B, C, _ = make_inputs(0, 1, 10, 2, 3, 1, 4)
    y = ssd_jit(x, dt, A, B, C, chunk_size=4)
    assert isinstance(y, jax.Array) and y.shape == x.shape
    y2, s = ssd_jit(x, dt, A, B, C, chunk_size=4, return_state=True)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y2))
    assert s.shape == (1, 2, 3, 4) and s.dtype == jnp.float32


@pytest.mark.parametrize("chunks_per_step", [None, 0, 1, 3])
def test_chunk_map_step_sizes_agree(chunks_per_step):
    """The chunk map (lax.map in groups, remainder vmapped) gives the same numbers for any group size."""
    x, dt, A, B, C, S0 = make_inputs(3, 2, 170, 4, 3, 2, 5, init=True)
    y_ref, s_ref = numpy_ssd(x, dt, A, B, C, S0)
    y, s = ssd_jit(x, dt, A, B, C, chunk_size=16, initial_state=S0, return_state=True,
                   chunks_per_step=chunks_per_step)
    assert_close(y, y_ref, 1e-5, "y")
    assert_close(s, s_ref, 1e-5, "state")


def test_padding_never_affects_real_positions():
    """L=130, Q=64 pads 62 identity tokens: final state equals the recurrence's, and outputs equal the first 130
    of a 192-token run whose extra tokens are random (causality, and the padded tail leaks nothing)."""
    x, dt, A, B, C, S0 = make_inputs(11, 2, 192, 4, 3, 2, 5, init=True)
    head = [t[:, :130] for t in (x, dt, B, C)]
    y, s = ssd_jit(head[0], head[1], A, head[2], head[3], chunk_size=64, initial_state=S0, return_state=True)
    _, s_rec = ssd_jit(head[0], head[1], A, head[2], head[3], impl="recurrent", initial_state=S0, return_state=True)
    _, s_np = numpy_ssd(head[0], head[1], A, head[2], head[3], S0)
    assert_close(s, s_rec, 1e-5, "final state vs recurrent")
    assert_close(s, s_np, 1e-5, "final state vs numpy")
    y_full = ssd_jit(x, dt, A, B, C, chunk_size=64, initial_state=S0)
    assert_close(y, y_full[:, :130], 1e-6, "prefix of a longer sequence")


# ----------------------------------------------------------------------------------------------------------------
# Gradients.
# ----------------------------------------------------------------------------------------------------------------
def _loss(impl, chunk_size, weights):
    w_y, w_s = weights

    def loss(x, dt, A, B, C, S0):
        y, s = ssd(x, dt, A, B, C, chunk_size=chunk_size, impl=impl, initial_state=S0, return_state=True)
        return jnp.sum(y * w_y) + jnp.sum(s * w_s)
    return loss


@pytest.mark.parametrize("length,chunk_size,groups", [(130, 64, 2), (45, 16, 1)])
def test_gradients_chunked_vs_recurrent(length, chunk_size, groups):
    args = make_inputs(5, 2, length, 4, 3, groups, 5, init=True)
    r = np.random.default_rng(6)
    weights = (r.standard_normal(args[0].shape).astype(np.float32),
               r.standard_normal(args[5].shape).astype(np.float32))
    argnums = tuple(range(6))
    g_chunk = jax.jit(jax.grad(_loss("chunked", chunk_size, weights), argnums))(*args)
    g_rec = jax.jit(jax.grad(_loss("recurrent", chunk_size, weights), argnums))(*args)
    for name, gc, gr in zip(("x", "dt", "A", "B", "C", "initial_state"), g_chunk, g_rec):
        assert_close(gc, gr, 2e-5, f"d loss / d {name}")
    # The oracle's gradient itself, against a float64 central difference of the NumPy recurrence along a random
    # direction in all six inputs at once.
    direction = [r.standard_normal(np.shape(a)) for a in args]
    eps = 1e-6

    def np_loss(sign):
        shifted = [np.asarray(a, np.float64) + sign * eps * d for a, d in zip(args, direction)]
        y, s = numpy_ssd(*shifted)
        return np.sum(y * weights[0]) + np.sum(s * weights[1])
    fd = (np_loss(1) - np_loss(-1)) / (2 * eps)
    analytic = sum(np.sum(np.asarray(g, np.float64) * d) for g, d in zip(g_rec, direction))
    assert abs(analytic - fd) <= 1e-4 * max(abs(fd), 1.0), (analytic, fd)


def test_one_chunk_fast_path_values_and_gradients():
    # A sequence of one chunk with no initial state and no final state wanted skips the chunk states and the scan;
    # its output and gradients must still be the recurrence's (and equal the general path's, which return_state uses).
    x, dt, A, B, C, _ = make_inputs(7, 2, 11, 4, 3, 2, 5, init=True)
    w = np.random.default_rng(8).standard_normal(x.shape).astype(np.float32)

    def loss(impl, return_state):
        def f(*a):
            y = ssd(*a, chunk_size=16, impl=impl, return_state=return_state)
            return jnp.sum((y[0] if return_state else y) * w)
        return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3, 4)))
    y_np, _ = numpy_ssd(x, dt, A, B, C)
    assert_close(ssd_jit(x, dt, A, B, C, chunk_size=16), y_np, 2e-5, "y (one chunk, fast path)")
    g_rec, g_fast, g_general = (loss(i, r)(x, dt, A, B, C) for i, r in
                                (("recurrent", False), ("chunked", False), ("chunked", True)))
    for name, gr, gf, gg in zip(("x", "dt", "A", "B", "C"), g_rec, g_fast, g_general):
        assert_close(gf, gr, 2e-5, f"d loss / d {name} (fast path vs recurrence)")
        assert_close(gf, gg, 2e-5, f"d loss / d {name} (fast path vs general path)")


# ----------------------------------------------------------------------------------------------------------------
# Dtypes.
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt_dtype", [jnp.float32, jnp.bfloat16])
def test_bfloat16_inputs(dt_dtype):
    """bf16 x, B, C (and optionally dt, A; then also finite bf16 gradients): bf16 output close to the float32 result
    on the same (bf16-rounded) values. Error budget: the GEMM operands (dt*x, decay-weighted C.B^T, the carried
    state for y_off) are rounded to bf16 (unit roundoff 2^-9 ~ 2e-3) and so is y; decays and accumulation stay
    f32, so the error is a few roundoffs of the output scale and does not grow with length. Tolerance: 2e-2 of
    max|y| elementwise, 1e-2 in relative RMS (measured 3.1e-3 and 2.8e-3; final state 2.3e-3)."""
    x, dt, A, B, C, S0 = make_inputs(8, 2, 300, 4, 8, 2, 16, init=True)
    xb, Bb, Cb = (jnp.asarray(t, jnp.bfloat16) for t in (x, B, C))
    dtb, Ab = jnp.asarray(dt, dt_dtype), jnp.asarray(A, dt_dtype)
    y, s = ssd_jit(xb, dtb, Ab, Bb, Cb, chunk_size=64, initial_state=S0, return_state=True)
    assert y.dtype == jnp.bfloat16 and s.dtype == jnp.float32
    up = [np.asarray(jnp.asarray(t, jnp.float32)) for t in (xb, dtb, Ab, Bb, Cb)]
    y32, s32 = ssd_jit(*up, chunk_size=64, initial_state=S0, return_state=True)
    y_np, _ = numpy_ssd(*up, S0)
    assert_close(y32, y_np, 1e-5, "f32 on bf16-rounded values")
    assert_close(y, y32, 2e-2, "bf16 y (max)")
    rel_rms = np.linalg.norm(np.asarray(y, np.float64) - y32) / np.linalg.norm(y32)
    assert rel_rms < 1e-2, rel_rms
    assert_close(s, s32, 1e-2, "bf16 final state")
    if dt_dtype != jnp.bfloat16:
        return
    g = jax.jit(jax.grad(lambda *a: jnp.sum(ssd(*a, chunk_size=64).astype(jnp.float32) ** 2), argnums=(0, 1, 2, 3, 4)))(
        xb, dtb, Ab, Bb, Cb)
    assert all(gi.dtype == ai.dtype and np.all(np.isfinite(np.asarray(gi, np.float32)))
               for gi, ai in zip(g, (xb, dtb, Ab, Bb, Cb)))


# ----------------------------------------------------------------------------------------------------------------
# Long sequence and numerical extremes.
# ----------------------------------------------------------------------------------------------------------------
def test_long_sequence_p1_224():
    """50,178 tokens (p=1 at 224 with cls + heading token), one slow-decay head (memory over the whole
    sequence: exp(-1e-3 * 0.05 * 50178) ~ 0.08) and one fast head: finite, and the tail and final state equal the
    float64 recurrence."""
    length = 50_178
    x, dt, A, B, C, _ = make_inputs(9, 1, length, 2, 4, 1, 8, dt_range=(1e-3, 0.1))
    A = np.array([-1e-3, -8.0], np.float32)
    y, s = ssd_jit(x, dt, A, B, C, return_state=True)
    y = np.asarray(y)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(np.asarray(s)))
    y_np, s_np = numpy_ssd(x, dt, A, B, C)
    assert_close(y[:, -512:], y_np[:, -512:], 1e-4, "tail of y")
    assert_close(s, s_np, 1e-4, "final state")
    assert_close(y, y_np, 1e-4, "all of y")


def test_decay_matrix_stable_against_float64():
    """The within-chunk decay matrix is exp of sums of non-positive terms: entries in [0, 1], 0 above the diagonal,
    and accurate in relative terms even right after huge decays (|cumsum| ~ 5e4, where exp(cs_i - cs_j) would have
    ~3e-3 relative error)."""
    r = np.random.default_rng(10)
    a = -np.concatenate([np.full(64, 800.0), r.uniform(1e-6, 0.3, 64), np.full(5, 1e-7)]).astype(np.float32)
    a = np.stack([a, a[::-1]])                                       # (2, 133): both orders, Q not a block multiple
    decay = np.asarray(jax.jit(ssd_module._decay_matrix)(a), np.float64)
    q = a.shape[-1]
    i, j = np.tril_indices(q)
    ref = np.zeros((2, q, q))
    in_segment = (np.arange(q) > j[:, None]) & (np.arange(q) <= i[:, None])      # k in (j, i]
    ref[:, i, j] = np.exp(np.sum(a.astype(np.float64)[:, None, :] * in_segment, -1))
    assert np.all((decay >= 0) & (decay <= 1))
    assert np.all(decay[:, np.triu_indices(q, 1)[0], np.triu_indices(q, 1)[1]] == 0)
    assert np.all(decay[:, np.arange(q), np.arange(q)] == 1)
    big = ref > 1e-30
    rel = np.abs(decay - ref)[big] / ref[big]
    assert rel.max() < 1e-5, rel.max()


@pytest.mark.parametrize("dt_value", [50.0, 1e-7])
def test_extreme_decays_finite_and_exact(dt_value):
    """dt*|A| = 800 per step (everything but the newest token forgotten) and dt = 1e-7 (almost no decay, tiny
    inputs): outputs match the float64 recurrence and every gradient is finite."""
    x, dt, A, B, C, S0 = make_inputs(12, 1, 150, 2, 3, 1, 4, init=True)
    dt = np.full_like(dt, dt_value)
    dt[:, ::7] = 1e-3 if dt_value > 1 else 5.0                         # mix in the other regime
    A = np.array([-16.0, -1e-3], np.float32)
    y, s = ssd_jit(x, dt, A, B, C, chunk_size=64, initial_state=S0, return_state=True)
    y_np, s_np = numpy_ssd(x, dt, A, B, C, S0)
    assert_close(y, y_np, 1e-5, "y")
    assert_close(s, s_np, 1e-5, "state")
    grads = jax.jit(jax.grad(_loss("chunked", 64, (np.ones_like(x), np.ones_like(S0))), tuple(range(6))))(
        x, dt, A, B, C, S0)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))


# ----------------------------------------------------------------------------------------------------------------
# Memory and FLOPs.
# ----------------------------------------------------------------------------------------------------------------
def test_grad_memory_linear_in_length():
    """Compiled temp memory of jit(grad) grows ~linearly (4x the tokens -> <= 4.5x the bytes) and stays far below
    one length x length f32 matrix (which would be 256 MiB at 8192)."""
    def temp_bytes(length):
        s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
        args = (s(1, length, 2, 16), s(1, length, 2), s(2), s(1, length, 1, 16), s(1, length, 1, 16))
        f = jax.grad(lambda *a: jnp.sum(ssd(*a, chunk_size=128) ** 2), argnums=(0, 1, 2, 3, 4))
        return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes
    small, big = temp_bytes(2048), temp_bytes(8192)
    assert big <= 4.5 * small, (small, big)
    assert big < 48 * 2**20, big


def test_ssd_flops_hand_count():
    # length 301, chunk_size 128 -> ceil(301/128) = 3 chunks of Q = ceil(301/3) = 101 tokens, 303 padded tokens;
    # D = 8 * 4 = 32, G = 2, N = 16.
    per_token = 2 * 101 * 2 * 16 + 2 * 101 * 32 + 4 * 16 * 32
    assert ssd_flops(301, 8, 4, 16, 2, 128) == 303 * per_token
    assert ssd_flops(301, 8, 4, 16, 2, 128, padded=False) == 301 * per_token
    assert ssd_flops(7, 8, 4, 16, 2, 128) == 7 * (2 * 7 * 2 * 16 + 2 * 7 * 32 + 4 * 16 * 32)   # one chunk of L
    assert ssd_flops(258, 8, 4, 16, 2, 32) == 261 * (2 * 29 * 2 * 16 + 2 * 29 * 32 + 4 * 16 * 32)   # 9 x 29


def test_chunk_length_is_balanced():
    # As many chunks as chunk_size needs, each as short as possible: never longer, padding < one token per chunk.
    for length in range(1, 400):
        for chunk in (1, 7, 32, 64, 128):
            q = chunk_length(length, chunk)
            n = -(-length // chunk)
            assert q <= chunk and -(-length // q) == n and n * q - length < n, (length, chunk, q)
    assert (chunk_length(258, 32), chunk_length(66, 32), chunk_length(6, 32)) == (29, 22, 6)


# ----------------------------------------------------------------------------------------------------------------
# Argument validation.
# ----------------------------------------------------------------------------------------------------------------
def _bad_cases():
    x, dt, A, B, C, S0 = make_inputs(0, 2, 10, 4, 3, 2, 5, init=True)
    ok = dict(x=x, dt=dt, A=A, B=B, C=C)
    return [
        (dict(ok, x=x[0]), {}, r"x.shape=\(10, 4, 3\)"),
        (dict(ok, dt=dt[:, :5]), {}, r"dt.shape=\(2, 5, 4\)"),
        (dict(ok, A=A[:3]), {}, r"A.shape=\(3,\)"),
        (dict(ok, B=np.zeros((2, 10, 3, 5), np.float32), C=np.zeros((2, 10, 3, 5), np.float32)), {},
         "groups=3 must divide heads=4"),
        (dict(ok, C=C[..., :4]), {}, r"C.shape=\(2, 10, 2, 4\)"),
        (dict(ok, B=B[:, :9]), {}, r"B.shape=\(2, 9, 2, 5\)"),
        (ok, dict(chunk_size=0), "chunk_size=0"),
        (ok, dict(chunk_size=2.5), "chunk_size=2.5"),
        (ok, dict(impl="fast"), "impl='fast'"),
        (ok, dict(initial_state=S0[:, :2]), r"initial_state.shape=\(2, 2, 3, 5\)"),
        (ok, dict(chunks_per_step=-1), "chunks_per_step=-1"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_bad_arguments_raise(case):
    arrays, kwargs, message = _bad_cases()[case]
    with pytest.raises(ValueError, match=message):
        ssd(arrays["x"], arrays["dt"], arrays["A"], arrays["B"], arrays["C"], **kwargs)
