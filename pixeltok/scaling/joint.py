"""Joint fit over model sizes: a shared patch exponent α with per-size E_s, A_s.

L_s(p) = E_s + A_s·p^α. With two model sizes the 5-parameter law E + A·N^(−a) + B·p^b of docs/scaling.md is not
identifiable (E + A·N^(−a) takes two values with three parameters), so the shared-α form is what two or more sizes
can pin down; comparing α_joint with the per-size α tests whether the patch exponent depends on model size.
Same estimator (LSE-Huber, L-BFGS) and bootstrap schemes as `fit_power_law`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from pixeltok.scaling import bootstrap as boot
from pixeltok.scaling import estimators
from pixeltok.scaling.fit import _clean, validate_inputs, versions


@dataclasses.dataclass
class JointFitResult:
    alpha: float
    ci: dict                    # {"alpha": (lo, hi), "E[size]": ..., "A[size]": ...} 95 %
    ci80: dict
    sizes: list                 # size labels in parameter order
    E: dict                     # size → E_s
    A: dict                     # size → A_s
    inputs: dict
    fit_info: dict
    bootstrap: dict
    warnings: list

    def predict(self, p, size) -> np.ndarray:
        p = np.asarray(p, np.float64)
        return self.E[size] + self.A[size] * p ** self.alpha

    def to_dict(self) -> dict:
        return _clean({"law": "E_s + A_s * p**alpha (alpha shared across model sizes)", "alpha": self.alpha,
                       "alpha_tokens": self.alpha / 2, "E": self.E, "A": self.A, "sizes": self.sizes,
                       "ci": {"level": 0.95, **self.ci}, "ci80": self.ci80, "inputs": self.inputs,
                       "fit": self.fit_info, "bootstrap": self.bootstrap, "warnings": self.warnings,
                       "versions": versions()})


def _joint_varpro_alpha(logx, L, gid, n_groups) -> float:
    """Shared α minimising the summed per-size VarPro objective (dense grid + golden section)."""
    grid = estimators.VARPRO_ALPHA_GRID
    total = np.zeros(grid.size)
    for g in range(n_groups):
        m = gid == g
        total += estimators.varpro_fit(logx[m], L[m], alpha_grid=grid).profile[:, 1]
    k = int(np.argmin(total))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]

    def f(al):
        out = np.zeros_like(al)
        for g in range(n_groups):
            m = gid == g
            lx = logx[m] - logx[m].max()
            out += estimators._varpro_rss(al, lx, L[m][None], 1.0 / L[m][None] ** 2)[0]
        return out

    return float(estimators._golden(f, np.array([lo]), np.array([hi]), 60)[0])


@estimators.single_blas_thread
def fit_joint(patch_sizes: Sequence[float], losses: Sequence[float], sizes: Sequence, n_bootstrap: int = 1000,
              seed: int = 0, *, run_names: Sequence[str] | None = None, bootstrap: str = "auto",
              delta: float = estimators.DELTA) -> JointFitResult:
    """Fits L = E_s + A_s·p^α with α shared over model sizes `sizes` (one label per run).

    Raises ValueError when fewer than 2 sizes, a size with < 2 distinct patch sizes, or too few points.
    """
    p, L, names = validate_inputs(patch_sizes, losses, run_names, min_distinct=2)
    labels = [str(s) for s in sizes]
    if len(labels) != p.size:
        raise ValueError(f"sizes has {len(labels)} entries for {p.size} runs")
    uniq = list(dict.fromkeys(labels))
    if len(uniq) < 2:
        raise ValueError(f"a joint fit needs >= 2 model sizes, got {uniq}")
    gid = np.array([uniq.index(s) for s in labels])
    G = len(uniq)
    for g, s in enumerate(uniq):
        if np.unique(p[gid == g]).size < 2:
            raise ValueError(f"model size {s}: needs >= 2 distinct patch sizes for its own E, A; runs "
                             f"{[n for n, k in zip(names, gid == g) if k]}")
    cells = np.unique(np.stack([gid, p], 1), axis=0).shape[0]
    if cells < 2 * G + 2:
        raise ValueError(f"{cells} distinct (size, patch) points cannot fit {2 * G + 1} parameters with a residual")
    logx = np.log(p)
    al0 = _joint_varpro_alpha(logx, L, gid, G)
    start = []
    for g in range(G):
        m = gid == g
        E0, A0 = estimators._nnls2_single(p[m] ** al0, L[m], 1.0 / L[m] ** 2)
        start.append((np.log(max(E0, 1e-6 * L[m].min())), np.log(max(A0, 1e-300))))
    s0 = [s[0] for s in start] + [s[1] for s in start] + [al0]
    lf = estimators.lse_fit(logx, L, group_ids=gid, n_groups=G, extra_starts=[s0], delta=delta, max_starts=24)
    if lf.n_converged == 0:
        raise RuntimeError(f"joint LSE-Huber fit did not converge from any of {lf.n_starts} starts")
    theta = np.concatenate([lf.e, lf.a, [lf.alpha]])
    fitted_log = np.logaddexp(lf.e[gid], lf.a[gid] + lf.alpha * logx)
    resid = np.log(L) - fitted_log
    cell_id = gid * 1000.0 + np.log2(p)                  # strata for the stratified bootstrap
    method = boot.choose_method(cell_id, bootstrap)
    rng = np.random.default_rng(seed)
    pool = boot.residual_pool(resid, k=2 * G + 1)
    if n_bootstrap > 0:
        Ls, Ws = boot.draw(cell_id, L, method, n_bootstrap, rng, fitted_log=fitted_log, pool=pool)
        th, _, _, conv = estimators.lse_refit_batch(logx, Ls, Ws, np.tile(theta, (n_bootstrap, 1)), group_ids=gid,
                                                    n_groups=G, delta=delta)
        samples = th[conv]
    else:
        samples, conv = np.zeros((0, theta.size)), np.zeros(0, bool)
    ci, ci80 = {}, {}
    cols = [("alpha", 2 * G, False)] + [(f"E[{s}]", g, True) for g, s in enumerate(uniq)] + \
        [(f"A[{s}]", G + g, True) for g, s in enumerate(uniq)]
    for key, j, is_log in cols:
        col = np.exp(samples[:, j]) if is_log else samples[:, j]
        ci[key] = boot.percentile_interval(col, 0.95)
        ci80[key] = boot.percentile_interval(col, 0.80)
    warnings = []
    n_failed = int((~conv).sum())
    if n_failed > 0.05 * max(n_bootstrap, 1):
        warnings.append(f"{n_failed} of {n_bootstrap} joint bootstrap refits did not converge")
    lo, hi = ci["alpha"]
    if np.isfinite(lo) and hi - lo > abs(lf.alpha):
        warnings.append(f"shared alpha poorly determined: 95% interval [{lo:.3g}, {hi:.3g}]")
    return JointFitResult(
        alpha=lf.alpha, ci=ci, ci80=ci80, sizes=uniq, E={s: float(lf.E[g]) for g, s in enumerate(uniq)},
        A={s: float(lf.A[g]) for g, s in enumerate(uniq)},
        inputs={"patch_sizes": p, "losses": L, "sizes": labels, "run_names": names},
        fit_info={"objective": lf.objective, "grad_norm": lf.grad_norm, "n_starts": lf.n_starts,
                  "n_converged": lf.n_converged, "at_bound": lf.at_bound, "varpro_alpha": al0, "delta": delta},
        bootstrap={"method": method, "n_bootstrap": int(n_bootstrap), "n_ok": int(samples.shape[0]),
                   "n_failed": n_failed, "seed": int(seed)},
        warnings=warnings)
