"""The two estimators for L = E + A·x^α (docs/scaling.md), float64 NumPy/SciPy.

Both work on a generic positive abscissa x given as `logx` (x = patch size p for the main law; x = 1/T for the token
law; see fit.py) and support several groups that share α but have their own E, A (the joint fit over model sizes).

- `lse_fit`: Chinchilla approach 3 as corrected by Epoch AI: log L̂ = LSE(e, a + α log x), Huber_δ on log residuals
  summed over points, L-BFGS-B in float64 with tight tolerances from a grid of initialisations.
- `varpro_fit`: variable projection: for fixed α the law is linear in (E, A); weighted NNLS per α (weights 1/L², the
  relative-error proxy of the log objective) over a dense α grid, refined by golden section. Vectorised over a batch
  of data sets, so the bootstrap can refit it cheaply.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import scipy.optimize
from threadpoolctl import threadpool_limits

DELTA = 1e-3
# L-BFGS-B settings (docs/scaling.md): the objective is scaled by 1/δ and the tolerances are tight because the
# published Chinchilla fit went wrong exactly by stopping early on a badly scaled objective.
LBFGS_OPTIONS = {"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-12, "maxls": 50}
ALPHA_BOUNDS = (0.0, 10.0)
# The α grid of the VarPro profile: dense and log-spaced so small exponents are resolved too.
VARPRO_ALPHA_GRID = np.geomspace(0.01, 6.0, 2000)


def single_blas_thread(fn):
    """Runs `fn` with one BLAS thread: the 3-variable L-BFGS-B solves call BLAS on tiny vectors, and a threaded
    OpenBLAS on a busy machine made each call ~10x slower (measured 13 s vs 1.6 s for one fit on 2 shared cores)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapper


def huber(r: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """Huber_δ(r) = r²/2 if |r| ≤ δ else δ(|r| − δ/2), elementwise."""
    r = np.asarray(r, np.float64)
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def lse_log_predict(e: np.ndarray, a: np.ndarray, alpha: float, logx: np.ndarray) -> np.ndarray:
    """log(E + A·x^α) = LSE(e, a + α log x) computed stably. e, a: per point (n,) or scalars; logx: (n,)."""
    return np.logaddexp(e, a + alpha * np.asarray(logx, np.float64))


# ----------------------------------------------------------------------------------------------------------------
# LSE-Huber L-BFGS


@dataclasses.dataclass
class LseFit:
    """Result of `lse_fit`. e, a: (groups,), original (uncentred) log x coordinates."""
    e: np.ndarray
    a: np.ndarray
    alpha: float
    objective: float            # Σ w·Huber_δ(r) (or Σ w·r²/2 for loss="squared"), unscaled
    grad_norm: float            # ∞-norm of the projected gradient of the 1/δ-scaled objective at the optimum
    converged: bool
    n_starts: int
    n_converged: int
    start_spread: dict          # over the best converged starts: objective and parameter ranges
    at_bound: list              # names of parameters at a box bound
    message: str

    @property
    def E(self) -> np.ndarray:  # noqa: N802 (the law's own symbol)
        return np.exp(self.e)

    @property
    def A(self) -> np.ndarray:  # noqa: N802
        return np.exp(self.a)


def _objective(theta, lx, y, w, gid, n_groups, delta, loss):
    """Scaled objective (÷δ) and its analytic gradient. theta = [e_g..., a_g... (centred), α]."""
    e = theta[:n_groups][gid]
    a = theta[n_groups:2 * n_groups][gid]
    alpha = theta[2 * n_groups]
    u = a + alpha * lx
    yhat = np.logaddexp(e, u)
    r = yhat - y
    if loss == "huber":
        f = huber(r, delta) / delta
        psi = np.clip(r, -delta, delta) / delta
    else:
        f = 0.5 * r * r / delta
        psi = r / delta
    gw = w * psi
    s_e = np.exp(e - yhat)      # ∂ log L̂ / ∂e = E / L̂
    s_u = np.exp(u - yhat)      # ∂ log L̂ / ∂a = A x^α / L̂ (computed directly, not as 1 − s_e, for precision)
    grad = np.concatenate([np.bincount(gid, gw * s_e, n_groups), np.bincount(gid, gw * s_u, n_groups),
                           [np.dot(gw * s_u, lx)]])
    return float(np.dot(w, f)), grad


def _projected_grad(theta, grad, bounds):
    pg = grad.copy()
    for i, (lo, hi) in enumerate(bounds):
        if theta[i] <= lo + 1e-12 and pg[i] > 0:
            pg[i] = 0.0
        if theta[i] >= hi - 1e-12 and pg[i] < 0:
            pg[i] = 0.0
    return pg


def _default_starts(lx, L, gid, n_groups):
    """Grid of initialisations in centred coordinates (docs/scaling.md, made scale-free).

    e ∈ log(min L_g) + log{0.5, 0.8, 0.9, 0.95, 0.99}; α ∈ {0.1, 0.5, 1, 1.5, 2, 3}; the amplitude at the largest x,
    a' = log(max L_g − E_g) + {−2, −1, 0, 1} (the reference's absolute a ∈ {−10..0} rescaled to the data), plus one
    VarPro-style start per α (E, A by NNLS at that α).
    """
    starts = []
    fracs = np.array([0.5, 0.8, 0.9, 0.95, 0.99])
    alphas = np.array([0.1, 0.5, 1.0, 1.5, 2.0, 3.0])
    lmin = np.array([L[gid == g].min() for g in range(n_groups)])
    lmax = np.array([L[gid == g].max() for g in range(n_groups)])
    for frac in fracs:
        e0 = np.log(frac * lmin)
        amp = np.log(np.maximum(lmax - frac * lmin, 1e-3 * lmax))
        for alpha in alphas:
            for off in (-2.0, -1.0, 0.0, 1.0):
                starts.append(np.concatenate([e0, amp + off, [alpha]]))
    for alpha in alphas:
        e0, a0 = [], []
        for g in range(n_groups):
            m = gid == g
            E, A = _nnls2_single(np.exp(alpha * lx[m]), L[m], 1.0 / L[m] ** 2)
            e0.append(np.log(max(E, 1e-6 * lmin[g])))
            a0.append(np.log(max(A, 1e-6 * lmax[g])))
        starts.append(np.concatenate([e0, a0, [alpha]]))
    return starts


def lse_fit(logx, losses, *, weights=None, group_ids=None, n_groups=1, starts=None, extra_starts=(), delta=DELTA,
            loss="huber", max_starts=None) -> LseFit:
    """Fits log L̂ = LSE(e_g, a_g + α log x) by L-BFGS-B from many starts; keeps the best objective.

    Args:
      logx: (n,) log of the abscissa (log p).
      losses: (n,) positive losses.
      weights: (n,) non-negative case weights (bootstrap counts); default ones.
      group_ids: (n,) ints in [0, n_groups): groups share α, have their own e, a.
      starts: list of parameter vectors [e_g..., a_g..., α] in ORIGINAL coordinates; default: the grid.
      extra_starts: more starts (original coordinates) added to the grid or to `starts`.
      loss: "huber" (primary estimator) or "squared" (Gaussian log-space least squares, for AIC/BIC).
      max_starts: run L-BFGS only from this many starts with the lowest initial objective (None: all).
    """
    logx = np.asarray(logx, np.float64)
    L = np.asarray(losses, np.float64)
    y = np.log(L)
    w = np.ones_like(L) if weights is None else np.asarray(weights, np.float64)
    gid = np.zeros(L.shape, np.int64) if group_ids is None else np.asarray(group_ids, np.int64)
    c = float(logx.max())
    lx = logx - c                                   # centred: a' = a + α·c is the amplitude at the largest x
    lmin = np.array([L[gid == g].min() for g in range(n_groups)])
    lmax = np.array([L[gid == g].max() for g in range(n_groups)])
    bounds = ([(float(np.log(m)) - 40.0, float(np.log(M))) for m, M in zip(lmin, lmax)]
              + [(float(np.log(M)) - 60.0, float(np.log(M)) + 5.0) for M in lmax] + [ALPHA_BOUNDS])
    starts_c = _default_starts(lx, L, gid, n_groups) if starts is None else []
    for s in list(starts or []) + list(extra_starts):
        s = np.array(s, np.float64)
        s[n_groups:2 * n_groups] += s[2 * n_groups] * c
        starts_c.append(s)
    starts_c = [np.clip(s, [b[0] for b in bounds], [b[1] for b in bounds]) for s in starts_c]
    args = (lx, y, w, gid, n_groups, delta, loss)
    if max_starts is not None and len(starts_c) > max_starts:
        f0 = np.array([_objective(s, *args)[0] for s in starts_c])
        starts_c = [starts_c[i] for i in np.argsort(f0)[:max_starts]]
    results = []
    for s in starts_c:
        res = scipy.optimize.minimize(_objective, s, args=args, jac=True, method="L-BFGS-B", bounds=bounds,
                                      options=LBFGS_OPTIONS)
        f, g = _objective(res.x, *args)
        pg = float(np.max(np.abs(_projected_grad(res.x, g, bounds))))
        ok = bool(np.all(np.isfinite(res.x)) and np.isfinite(f) and (res.success or pg < 1e-6 * max(1.0, w.sum())))
        results.append((f, res.x, pg, ok, str(res.message)))
    conv = [r for r in results if r[3]]
    pool = conv if conv else results
    best = min(pool, key=lambda r: r[0])
    theta = best[1].copy()
    theta[n_groups:2 * n_groups] -= theta[2 * n_groups] * c   # back to original coordinates
    top = sorted(conv, key=lambda r: r[0])[:5]
    spread = {}
    if top:
        th = np.array([r[1] for r in top])
        spread = {"k": len(top), "objective": float((top[-1][0] - top[0][0]) * delta),
                  "e": float(np.ptp(th[:, :n_groups])), "alpha": float(np.ptp(th[:, 2 * n_groups]))}
    names = [f"e[{g}]" for g in range(n_groups)] + [f"a[{g}]" for g in range(n_groups)] + ["alpha"]
    at_bound = [names[i] for i, (lo, hi) in enumerate(bounds)
                if best[1][i] <= lo + 1e-9 or best[1][i] >= hi - 1e-9]
    return LseFit(e=theta[:n_groups], a=theta[n_groups:2 * n_groups], alpha=float(theta[2 * n_groups]),
                  objective=float(best[0] * delta), grad_norm=best[2], converged=best[3], n_starts=len(results),
                  n_converged=len(conv), start_spread=spread, at_bound=at_bound, message=best[4])


# ----------------------------------------------------------------------------------------------------------------
# Variable projection


def _nnls2(S0, S1, S2, T0, T1):
    """Solves min Σ w (E + A X − L)² with E, A ≥ 0 from its moments (broadcasting arrays).

    S0 = Σw, S1 = ΣwX, S2 = ΣwX², T0 = ΣwL, T1 = ΣwXL. When the unconstrained E < 0 the optimum has E = 0; when
    A < 0 it has A = 0 (both cannot be negative for positive L). A near-singular system (X constant, α → 0) → A = 0.
    """
    det = S0 * S2 - S1 * S1
    ok = det > 1e-13 * S0 * S2
    safe = np.where(ok, det, 1.0)
    E = np.where(ok, (S2 * T0 - S1 * T1) / safe, -1.0)
    A = np.where(ok, (S0 * T1 - S1 * T0) / safe, -1.0)
    e_zero = ok & (E < 0)
    a_zero = ~ok | (A < 0)
    E = np.where(e_zero, 0.0, E)
    A = np.where(e_zero, T1 / S2, A)
    E = np.where(a_zero, T0 / S0, E)
    A = np.where(a_zero, 0.0, A)
    return E, A


def _nnls2_single(X, L, w):
    return tuple(float(v) for v in _nnls2(w.sum(), (w * X).sum(), (w * X * X).sum(), (w * L).sum(),
                                          (w * X * L).sum()))


@dataclasses.dataclass
class VarProFit:
    """Result of `varpro_fit`; arrays have the batch shape (B,) (scalars for a single data set)."""
    E: np.ndarray
    A: np.ndarray
    alpha: np.ndarray
    rss: np.ndarray             # Σ w (L̂ − L)²/L² at the optimum
    at_edge: np.ndarray         # α at the edge of the grid
    profile: np.ndarray | None  # (G, 2) [α, min over (E, A) of the objective], single data set only


def _moments(X, L, w):
    """X: (..., n), L, w: (..., n) → the five NNLS moments over the last axis."""
    return (w.sum(-1), (w * X).sum(-1), (w * X * X).sum(-1), (w * L).sum(-1), (w * X * L).sum(-1))


def varpro_fit(logx, losses, weights=None, *, alpha_grid=None, golden_iters=60, relative=True,
               chunk=128) -> VarProFit:
    """Variable-projection fit of L = E + A x^α, vectorised over a batch of data sets on the same design.

    Args:
      logx: (n,) log abscissa (shared design).
      losses: (n,) or (B, n) losses.
      weights: same shape as losses (bootstrap counts) or None.
      relative: weight each squared residual by 1/L² (≈ the log-space objective).
    """
    logx = np.asarray(logx, np.float64)
    L = np.asarray(losses, np.float64)
    single = L.ndim == 1
    L = np.atleast_2d(L)
    W = np.ones_like(L) if weights is None else np.atleast_2d(np.asarray(weights, np.float64))
    W = np.broadcast_to(W, L.shape)
    if relative:
        W = W / L ** 2
    grid = VARPRO_ALPHA_GRID if alpha_grid is None else np.asarray(alpha_grid, np.float64)
    c = float(logx.max())
    lx = logx - c                                # x/x_max ≤ 1: keeps the normal equations well scaled
    X = np.exp(grid[:, None] * lx[None, :])      # (G, n)
    out_alpha = np.empty(L.shape[0])
    profile = None
    for s in range(0, L.shape[0], chunk):
        Lc, Wc = L[s:s + chunk], W[s:s + chunk]
        WL = Wc * Lc
        S0, T0, Q = Wc.sum(-1)[:, None], WL.sum(-1)[:, None], (WL * Lc).sum(-1)[:, None]
        S1, S2, T1 = Wc @ X.T, Wc @ (X * X).T, WL @ X.T
        E, A = _nnls2(S0, S1, S2, T0, T1)
        rss = Q - 2 * E * T0 - 2 * A * T1 + E * E * S0 + 2 * E * A * S1 + A * A * S2   # (b, G), for the argmin
        k = np.argmin(rss, axis=1)
        if single:
            profile = np.stack([grid, np.maximum(rss[0], 0.0)], axis=1)
        lo = grid[np.maximum(k - 1, 0)]
        hi = grid[np.minimum(k + 1, len(grid) - 1)]
        out_alpha[s:s + chunk] = _golden(lambda al: _varpro_rss(al, lx, Lc, Wc)[0], lo, hi, golden_iters)
    rss, E, A = _varpro_rss(out_alpha, lx, L, W)
    A = A * np.exp(-out_alpha * c)
    at_edge = (out_alpha <= grid[1]) | (out_alpha >= grid[-2])
    if single:
        return VarProFit(float(E[0]), float(A[0]), float(out_alpha[0]), float(rss[0]), bool(at_edge[0]), profile)
    return VarProFit(E, A, out_alpha, rss, at_edge, None)


def _varpro_rss(alpha, lx, L, W):
    """Direct (cancellation-free) weighted RSS at per-row α: (B,) → rss, E, A (A at the centred scale)."""
    X = np.exp(alpha[:, None] * lx[None, :])
    E, A = _nnls2(*_moments(X, L, W))
    r = E[:, None] + A[:, None] * X - L
    return (W * r * r).sum(-1), E, A


def _golden(f, lo, hi, iters):
    """Vectorised golden-section minimisation of f: (B,) → (B,) on per-row brackets [lo, hi]."""
    g = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = lo.astype(np.float64).copy(), hi.astype(np.float64).copy()
    x1, x2 = b - g * (b - a), a + g * (b - a)
    f1, f2 = f(x1), f(x2)
    for _ in range(iters):
        left = f1 <= f2                         # the minimum lies in [a, x2]
        a = np.where(left, a, x1)
        b = np.where(left, x2, b)
        xn = np.where(left, b - g * (b - a), a + g * (b - a))
        fn = f(xn)
        x1, f1, x2, f2 = (np.where(left, xn, x2), np.where(left, fn, f2),
                          np.where(left, x1, xn), np.where(left, f1, fn))
    return 0.5 * (a + b)


# ----------------------------------------------------------------------------------------------------------------
# Batched refits for the bootstrap


def _batch_terms(theta, lx, y, onehot, n_groups):
    """Residuals and Jacobian of log L̂ for a batch. theta (B, 2G+1) centred; y (B, n); onehot (n, G)."""
    e = theta[:, :n_groups] @ onehot.T                     # (B, n)
    a = theta[:, n_groups:2 * n_groups] @ onehot.T
    u = a + theta[:, -1:] * lx[None, :]
    yhat = np.logaddexp(e, u)
    s_e, s_u = np.exp(e - yhat), np.exp(u - yhat)
    jac = np.concatenate([s_e[..., None] * onehot[None], s_u[..., None] * onehot[None],
                          (s_u * lx[None, :])[..., None]], axis=-1)   # (B, n, 2G+1)
    return yhat - y, jac


def lse_refit_batch(logx, losses, weights, starts, *, group_ids=None, n_groups=1, delta=DELTA, iters=300):
    """Minimises the same LSE-Huber objective as `lse_fit` for a batch of data sets on one design.

    A vectorised Levenberg–Marquardt/IRLS iteration (Huber curvature weights min(1, δ/|r|), steps accepted only when
    the objective decreases), used to make 1000-resample bootstraps cheap; scipy's per-call overhead would dominate.
    The caller checks `converged` (projected gradient of the 1/δ-scaled objective) and falls back to `lse_fit`.

    Args:
      logx: (n,); losses, weights: (B, n); starts: (B, 2G+1) in original coordinates [e_g, a_g, α].
    Returns:
      theta (B, 2G+1) original coordinates, objective (B,) unscaled, grad_norm (B,), converged (B,) bool.
    """
    logx = np.asarray(logx, np.float64)
    c = float(logx.max())
    lx = logx - c
    y = np.log(np.asarray(losses, np.float64))
    w = np.asarray(weights, np.float64)
    gid = np.zeros(lx.shape, np.int64) if group_ids is None else np.asarray(group_ids, np.int64)
    onehot = np.eye(n_groups)[gid]
    theta = np.array(starts, np.float64, copy=True)
    theta[:, n_groups:2 * n_groups] += theta[:, -1:] * c
    lo = np.full(theta.shape[1], -np.inf)
    hi = np.full(theta.shape[1], np.inf)
    lo[-1], hi[-1] = ALPHA_BOUNDS

    def objective(th):
        r, _ = _batch_terms(th, lx, y, onehot, n_groups)
        return (w * huber(r, delta)).sum(-1) / delta

    f = objective(theta)
    lam = np.full(theta.shape[0], 1e-3)
    stalled = 0
    eye = np.eye(theta.shape[1])
    for _ in range(iters):
        r, jac = _batch_terms(theta, lx, y, onehot, n_groups)
        psi = np.clip(r, -delta, delta) / delta
        omega = np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300)) / delta
        g = np.einsum("bn,bnk->bk", w * psi, jac)
        if np.all(np.abs(np.where(((theta <= lo) & (g > 0)) | ((theta >= hi) & (g < 0)), 0.0, g)).max(-1)
                  < 1e-7 * np.maximum(1.0, w.sum(-1))) or stalled >= 5:
            break          # all converged (10x below the acceptance test) or no step helped any refit 5 times
        h = np.einsum("bn,bnk,bnl->bkl", w * omega, jac, jac)
        damp = lam[:, None, None] * (np.einsum("bkk->bk", h)[:, :, None] * eye + 1e-12 * eye)
        try:
            step = -np.linalg.solve(h + damp, g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = -g * 1e-3
        cand = np.clip(theta + step, lo, hi)
        fc = objective(cand)
        better = np.isfinite(fc) & (fc < f)
        stalled = 0 if better.any() else stalled + 1
        theta = np.where(better[:, None], cand, theta)
        f = np.where(better, fc, f)
        lam = np.where(better, np.maximum(lam / 3.0, 1e-12), np.minimum(lam * 4.0, 1e12))
    r, jac = _batch_terms(theta, lx, y, onehot, n_groups)
    g = np.einsum("bn,bnk->bk", w * np.clip(r, -delta, delta) / delta, jac)
    at_lo, at_hi = theta <= lo + 1e-12, theta >= hi - 1e-12
    g = np.where((at_lo & (g > 0)) | (at_hi & (g < 0)), 0.0, g)
    gn = np.abs(g).max(-1)
    theta[:, n_groups:2 * n_groups] -= theta[:, -1:] * c
    converged = np.isfinite(f) & (gn < 1e-6 * np.maximum(1.0, w.sum(-1)))
    return theta, f * delta, gn, converged
