"""Bootstrap uncertainty for L = E + A·p^α (docs/scaling.md).

Every scheme is expressed on the fixed design of the original points as (losses, case weights) per resample, so both
estimators refit all resamples in a vectorised way:
- "residual" (one run per p): losses L*_i = exp(log L̂_i + r*_i), r* drawn with replacement from the centred
  log-residuals inflated by √(n/(n−k)), k = 3; weights 1.
- "stratified" (≥ 2 runs, e.g. seeds, at every p): multinomial counts within each patch size; every p stays present.
- "case": multinomial counts over all runs; resamples with < 3 distinct p are counted as degenerate and dropped.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pixeltok.scaling import estimators

METHODS = ("auto", "residual", "stratified", "case")


def choose_method(patch_sizes: np.ndarray, method: str = "auto") -> str:
    """"auto": stratified when every p has ≥ 2 runs, case when ≥ 8 distinct p (enough to resample), else residual."""
    if method not in METHODS:
        raise ValueError(f"bootstrap method {method!r} is not one of {METHODS}")
    if method != "auto":
        return method
    _, counts = np.unique(patch_sizes, return_counts=True)
    if counts.min() >= 2:
        return "stratified"
    return "case" if len(counts) >= 8 else "residual"


def residual_pool(log_residuals: np.ndarray, k: int = 3) -> np.ndarray:
    """Centred log residuals inflated by √(n/(n−k)) (residuals of a k-parameter fit underestimate the noise)."""
    r = np.asarray(log_residuals, np.float64)
    n = r.size
    return (r - r.mean()) * np.sqrt(n / max(n - k, 1))


def draw(patch_sizes, losses, method, n_bootstrap, rng, *, fitted_log=None, pool=None):
    """Draws resamples. Returns (losses (B, n), weights (B, n))."""
    p = np.asarray(patch_sizes, np.float64)
    L = np.asarray(losses, np.float64)
    n = L.size
    if method == "residual":
        r = rng.choice(pool, size=(n_bootstrap, n), replace=True)
        return np.exp(fitted_log[None, :] + r), np.ones((n_bootstrap, n))
    W = np.zeros((n_bootstrap, n))
    if method == "stratified":
        for pv in np.unique(p):
            idx = np.flatnonzero(p == pv)
            pick = idx[rng.integers(0, idx.size, size=(n_bootstrap, idx.size))]
            np.add.at(W, (np.arange(n_bootstrap)[:, None], pick), 1.0)
    elif method == "case":
        pick = rng.integers(0, n, size=(n_bootstrap, n))
        np.add.at(W, (np.arange(n_bootstrap)[:, None], pick), 1.0)
    else:
        raise ValueError(f"unknown bootstrap method {method!r}")
    return np.broadcast_to(L, W.shape).copy(), W


@dataclasses.dataclass
class BootstrapResult:
    method: str
    n_bootstrap: int
    seed: int
    params: np.ndarray          # (m, 3) successful primary (LSE-Huber) refits: E, A, alpha
    varpro_params: np.ndarray   # (m', 3) VarPro refits of the same resamples
    n_degenerate: int           # resamples with < 3 distinct p (case bootstrap)
    n_failed: int               # primary refits that did not converge even after the scipy fallback
    noise_pool: np.ndarray      # log residual pool (for prediction intervals that include run-to-run noise)

    @property
    def n_ok(self) -> int:
        return int(self.params.shape[0])


def run(patch_sizes, losses, *, theta_full, fitted_log, log_residuals, method, n_bootstrap, seed,
        delta=estimators.DELTA) -> BootstrapResult:
    """Resamples and refits both estimators.

    Args:
      patch_sizes, losses: (n,) the data.
      theta_full: [e, a, α] of the primary fit on all data (a start for every refit).
      fitted_log: (n,) log L̂ of the primary fit (centre of the residual bootstrap).
      log_residuals: (n,) log residuals used for the residual pool (the least-squares VarPro fit's; see fit.py).
    """
    p = np.asarray(patch_sizes, np.float64)
    L = np.asarray(losses, np.float64)
    logx = np.log(p)
    rng = np.random.default_rng(seed)
    pool = residual_pool(log_residuals)
    if n_bootstrap <= 0:
        empty = np.zeros((0, 3))
        return BootstrapResult(method, 0, seed, empty, empty, 0, 0, pool)
    Ls, Ws = draw(p, L, method, n_bootstrap, rng, fitted_log=fitted_log, pool=pool)
    distinct = np.array([np.unique(p[w > 0]).size for w in Ws])
    ok = distinct >= 3
    n_deg = int((~ok).sum())
    Ls, Ws = Ls[ok], Ws[ok]
    vp = estimators.varpro_fit(logx, Ls, Ws)
    varpro_params = np.stack([vp.E, vp.A, vp.alpha], axis=1)
    lmin = Ls.min(-1)
    start_vp = np.stack([np.log(np.maximum(vp.E, 1e-6 * lmin)), np.log(np.maximum(vp.A, 1e-12)), vp.alpha], axis=1)
    start_full = np.broadcast_to(np.asarray(theta_full, np.float64), start_vp.shape)
    best_theta, best_f, best_conv = None, None, None
    for starts in (start_vp, start_full):
        th, f, _, conv = estimators.lse_refit_batch(logx, Ls, Ws, starts, delta=delta)
        f = np.where(conv, f, np.inf)
        if best_theta is None:
            best_theta, best_f, best_conv = th, f, conv
        else:
            take = f < best_f
            best_theta = np.where(take[:, None], th, best_theta)
            best_f = np.where(take, f, best_f)
            best_conv = best_conv | conv
    n_failed = 0
    for i in np.flatnonzero(~best_conv):            # rare: fall back to scipy L-BFGS-B from both starts
        res = estimators.lse_fit(logx, Ls[i], weights=Ws[i], starts=[start_vp[i], start_full[i]], delta=delta)
        if res.converged:
            best_theta[i] = [res.e[0], res.a[0], res.alpha]
            best_conv[i] = True
        else:
            n_failed += 1
    th = best_theta[best_conv]
    params = np.stack([np.exp(th[:, 0]), np.exp(th[:, 1]), th[:, 2]], axis=1)
    return BootstrapResult(method, int(n_bootstrap), int(seed), params, varpro_params, n_deg, n_failed, pool)


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """Two-sided percentile interval of a 1-D sample (NaNs if empty)."""
    if samples.size == 0:
        return (float("nan"), float("nan"))
    q = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(samples, [q, 100.0 - q])
    return (float(lo), float(hi))
