"""Patch size on the compute frontier: learning curves at common FLOP budgets, per-budget L(p) fits, joint laws
L(p, C), the compute-optimal patch size p*(C) with bootstrap intervals, and a held-out check at the largest budget.

Method (docs/scaling.md):
- **Lineages.** Runs of one group (architecture, model size, resolution, data set) with the same patch size and seed
  form a lineage. A lineage of >= 2 runs (cosine runs of several lengths, or a WSD long run and its cooldown
  branches) contributes the *final* eval of every run: each point is a properly annealed loss at that run's total
  training FLOPs. A lineage of one run contributes its whole eval curve (the learning curve; with a cosine schedule
  the intermediate points are not annealed, which the report states).
- **Budgets.** Each lineage's curve is interpolated at common FLOP budgets, linearly in (log C, log L), and only
  inside its measured range (no extrapolation); at each budget L(p) = E + A·p^α is fitted with the bootstrap of
  `fit_power_law` (stratified over seeds when every p has >= 2).
- **Joint laws** on the lineage points themselves (least squares on log L, the Gaussian likelihood AIC/BIC assume):
    additive:  L = E + A·p^α + B·C^(−β)                  (5 params; no interaction: p* sits at an end of the range)
    images:    L = E + A·p^α + B·(C / F(p))^(−β)          (5; F(p) = training FLOPs per image, so C/F = images seen)
    gamma:     L = E + A·p^α + B·(C·p^γ)^(−β)             (6; compute per image ∝ p^(−γ) fitted instead of measured)
  compared by AIC/BIC on all points and by the held-out error at the largest budget (fit on budgets <= C_max/2,
  predict every patch size at C_max). The family with the lowest held-out RMS log error wins (AIC decides ties).
- **p*(C)** = argmin over p in [min p, max p] (a dense log grid; never outside the measured patch sizes) of the
  winning law at C; its interval is the percentile interval of p* over bootstrap refits (lineages resampled within
  each patch size when every p has >= 2 seeds, else residuals resampled).
Everything float64; intervals are percentile intervals with their method and resample count recorded.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import scipy.optimize

from pixeltok.scaling import io
from pixeltok.scaling.estimators import single_blas_thread
from pixeltok.scaling.fit import fit_power_law

FAMILIES = ("additive", "images", "gamma")
LAWS = {"additive": "E + A*p**alpha + B*C**(-beta)",
        "images": "E + A*p**alpha + B*(C/F(p))**(-beta)",
        "gamma": "E + A*p**alpha + B*(C*p**gamma)**(-beta)"}
PARAM_NAMES = {"additive": ("E", "A", "alpha", "B", "beta"), "images": ("E", "A", "alpha", "B", "beta"),
               "gamma": ("E", "A", "alpha", "B", "beta", "gamma")}
_P_GRID = 401                     # log-spaced patch sizes for argmin_p
_BOUNDS = {"e": (-50.0, 10.0), "a": (-50.0, 10.0), "alpha": (0.0, 6.0), "b": (-50.0, 10.0), "beta": (0.0, 3.0),
           "gamma": (-2.0, 6.0)}


# ================================================================================================ lineages, budgets
@dataclasses.dataclass
class Lineage:
    """One (group, patch size, seed): its points (flops ascending) and where they came from."""
    group: str
    arch: str
    patch_size: float
    seed: object
    flops: np.ndarray             # (k,) cumulative training FLOPs
    values: np.ndarray            # (k,) the fitted metric at those FLOPs
    flops_per_image: float | None
    image_size: float | None
    source: str                   # "annealed" (final evals of >= 2 runs) | "evals" (one run's eval curve)
    runs: list

    def at(self, budgets) -> np.ndarray:
        """Log-log interpolation at `budgets`; NaN outside [first, last] point (no extrapolation)."""
        return interpolate_loglog(self.flops, self.values, budgets)


# Runs whose FLOPs agree within this factor are at the same budget (default_budgets, interpolate_loglog).
BUDGET_MATCH = 1.01


def interpolate_loglog(flops, values, budgets) -> np.ndarray:
    """Linear interpolation of log(values) in log(flops) at `budgets`; NaN outside the measured range.

    A budget within BUDGET_MATCH (1 %, relative) of an end point counts as that end point: an iso-FLOP design rounds
    every run to whole steps, so its runs sit up to 1/(2n) off the nominal budget (<= 1 % at n >= 50 steps), and the
    budgets (`default_budgets`) merge FLOPs within the same 1 %."""
    f = np.asarray(flops, np.float64)
    v = np.asarray(values, np.float64)
    b = np.atleast_1d(np.asarray(budgets, np.float64))
    order = np.argsort(f, kind="stable")
    f, v = f[order], v[order]
    ok = np.isfinite(f) & np.isfinite(v) & (f > 0) & (v > 0)
    f, v = f[ok], v[ok]
    out = np.full(b.shape, np.nan)
    if f.size == 0:
        return out
    lf, lv, lb = np.log(f), np.log(v), np.log(b)
    tol = math.log(BUDGET_MATCH)
    inside = (lb >= lf[0] - tol) & (lb <= lf[-1] + tol)
    if f.size == 1:
        out[inside] = v[0]
        return out
    out[inside] = np.exp(np.interp(np.clip(lb[inside], lf[0], lf[-1]), lf, lv))
    return out


def _run_final(run: io.Run, metric: str) -> tuple[float, float] | None:
    """(FLOPs, value) of the run's final eval, or None when the run has not reached its `total_steps` (an
    unfinished cooldown branch's last eval is not an annealed loss)."""
    xs, ys = run.curve(metric)
    if not xs:
        return None
    i = int(np.argmax(xs))
    total = run.config.get("total_steps")
    steps = [r.get("step") for r in run.evals if isinstance(r.get("flops"), (int, float))]
    if isinstance(total, int) and total > 0 and steps and max(s for s in steps if s is not None) < total:
        return None
    return xs[i], ys[i]


def build_lineages(runs: Sequence[io.Run], metric: str = "loss", unfinished: list | None = None) -> list[Lineage]:
    """Groups runs into lineages (see module doc). Runs without eval rows carrying FLOPs are left out, and so are
    unfinished runs of multi-run lineages (their names are appended to `unfinished` when given)."""
    unfinished = [] if unfinished is None else unfinished
    by: dict = {}
    for run in runs:
        key = io.group_key(run, metric)
        by.setdefault((io.group_label(key), run.arch, run.patch_size, str(run.seed)), []).append(run)
    out = []
    for (label, arch, p, seed), rs in sorted(by.items(), key=lambda kv: (kv[0][0], -kv[0][2], kv[0][3])):
        fpi = next((r.train_flops_per_image for r in rs if r.train_flops_per_image), None)
        if len(rs) >= 2:
            pts = [pt for pt in (_run_final(r, metric) for r in rs) if pt is not None]
            source = "annealed"
            if len(pts) < len(rs):
                unfinished.extend(r.name for r in rs if _run_final(r, metric) is None)
        else:
            x, y = rs[0].curve(metric)
            pts = list(zip(x, y))
            source = "evals"
        pts = sorted({round(f, 6): (f, v) for f, v in pts}.values())    # a repeated budget counts once
        if not pts:
            continue
        out.append(Lineage(label, arch, float(p), rs[0].seed, np.array([q[0] for q in pts]),
                           np.array([q[1] for q in pts]), fpi, rs[0].image_size, source, [r.name for r in rs]))
    return out


def default_budgets(lineages: Sequence[Lineage], max_budgets: int = 16) -> np.ndarray:
    """Common budgets: the distinct annealed FLOPs (merged within 1 %) when there are few, else a log grid over
    the covered range (12 points)."""
    f = np.unique(np.concatenate([ln.flops for ln in lineages]))
    merged = []
    for x in f:
        if not merged or x > merged[-1] * BUDGET_MATCH:
            merged.append(float(x))
    if len(merged) <= max_budgets:
        return np.array(merged)
    return np.geomspace(f.min(), f.max(), 12)


# ================================================================================================ joint laws
def _design(family, p, C, F, p_ref, c0):
    lp = np.log(p) - np.log(p_ref)
    lc = np.log(C) - (np.log(F) if family == "images" else 0.0) - c0
    return lp, lc


def _terms(theta, family, lp, lc):
    e, a, alpha, b, beta = theta[:5]
    gamma = theta[5] if family == "gamma" else 0.0
    x = lc + gamma * lp
    return e + 0.0 * lp, a + alpha * lp, b - beta * x, x


def _log_pred(theta, family, lp, lc):
    t1, t2, t3, _ = _terms(theta, family, lp, lc)
    return np.logaddexp(np.logaddexp(t1, t2), t3)


def _residual_jac(theta, family, lp, lc, y, sw):
    t1, t2, t3, x = _terms(theta, family, lp, lc)
    yhat = np.logaddexp(np.logaddexp(t1, t2), t3)
    w1, w2, w3 = np.exp(t1 - yhat), np.exp(t2 - yhat), np.exp(t3 - yhat)
    cols = [w1, w2, w2 * lp, w3, -w3 * x]
    if family == "gamma":
        cols.append(-w3 * theta[4] * lp)
    return (yhat - y) * sw, np.stack(cols, 1) * sw[:, None]


def _bounds(family):
    names = ("e", "a", "alpha", "b", "beta") + (("gamma",) if family == "gamma" else ())
    return np.array([_BOUNDS[n][0] for n in names]), np.array([_BOUNDS[n][1] for n in names])


def _starts(family, lp, lc, L, w, n_keep=6):
    """VarPro-style starts: for each exponent triple on a grid, (E, A, B) >= 0 by weighted NNLS (weights 1/L²);
    the `n_keep` triples with the lowest relative residual."""
    alphas, betas = (0.25, 0.5, 1.0, 2.0), (0.1, 0.25, 0.5, 1.0)
    gammas = (0.0, 1.0, 2.0, 3.0) if family == "gamma" else (0.0,)
    sw = np.sqrt(w) / L
    cands = []
    for al in alphas:
        for be in betas:
            for ga in gammas:
                X = np.stack([np.ones_like(lp), np.exp(al * lp), np.exp(-be * (lc + ga * lp))], 1)
                coef, rn = scipy.optimize.nnls(X * sw[:, None], L * sw)
                th = [math.log(max(c, 1e-8 * L.min())) for c in coef]
                cands.append((rn, [th[0], th[1], al, th[2], be] + ([ga] if family == "gamma" else [])))
    cands.sort(key=lambda c: c[0])
    return [np.array(c[1]) for c in cands[:n_keep]]


def _lsq(theta0, family, lp, lc, y, w):
    lo, hi = _bounds(family)
    sw = np.sqrt(w)
    res = scipy.optimize.least_squares(lambda th: _residual_jac(th, family, lp, lc, y, sw)[0],
                                       np.clip(theta0, lo + 1e-9, hi - 1e-9),
                                       jac=lambda th: _residual_jac(th, family, lp, lc, y, sw)[1],
                                       bounds=(lo, hi), method="trf", x_scale="jac", xtol=1e-12, ftol=1e-12,
                                       gtol=1e-12, max_nfev=2000)
    return res.x, float(np.sum(res.fun ** 2)), bool(res.status > 0)


@dataclasses.dataclass
class JointLaw:
    """A fitted L(p, C) of one family; theta in centred log coordinates [e, a, α, b, β(, γ)]."""
    family: str
    theta: np.ndarray
    p_ref: float
    c0: float
    log_F: tuple                  # (log p knots, log F knots): measured training FLOPs per image
    rss_log: float
    n: int
    converged: bool
    samples: np.ndarray           # (m, k) bootstrap refits
    boot_method: str
    n_bootstrap: int
    n_failed: int
    F_poly: tuple | None = None   # (R, (f0, f1, f2)): F(p) = f0 + f1 T + f2 T², T = (R/p)², through the knots

    @property
    def k(self) -> int:
        return self.theta.size

    def F(self, p) -> np.ndarray:
        """Training FLOPs per image at (continuous) p: the token polynomial when it fits the measured values (every
        model here costs a constant + linear + quadratic (attention) amount in tokens), else log-log interpolation."""
        p = np.asarray(p, np.float64)
        if self.F_poly is not None:
            R, (f0, f1, f2) = self.F_poly
            T = (R / p) ** 2
            return f0 + f1 * T + f2 * T * T
        lpk, lfk = self.log_F
        if lpk.size == 0:                         # no FLOPs per image recorded: only "images" needs them
            return np.ones(np.shape(p))
        return np.exp(np.interp(np.log(p), lpk, lfk))

    def predict(self, p, C, theta=None) -> np.ndarray:
        """L at (p, C) (broadcast) from theta (default: the fit)."""
        th = self.theta if theta is None else theta
        p, C = np.broadcast_arrays(np.asarray(p, np.float64), np.asarray(C, np.float64))
        lp, lc = _design(self.family, p, C, self.F(p), self.p_ref, self.c0)
        return np.exp(_log_pred(th, self.family, lp, lc))

    def params(self, theta=None) -> dict:
        th = self.theta if theta is None else theta
        e, a, alpha, b, beta = th[:5]
        out = {"E": math.exp(e), "A": math.exp(a - alpha * math.log(self.p_ref)), "alpha": alpha,
               "B": math.exp(b + beta * self.c0), "beta": beta}
        if self.family == "gamma":
            out["gamma"] = th[5]
            out["B"] = math.exp(b + beta * self.c0 + beta * th[5] * math.log(self.p_ref))
        return out

    def p_star(self, budgets, p_range, theta=None) -> np.ndarray:
        """argmin over p in p_range (log grid) of the law at each budget: (m,)."""
        grid = np.geomspace(p_range[0], p_range[1], _P_GRID)
        L = self.predict(grid[None, :], np.asarray(budgets, np.float64)[:, None], theta)
        i = np.argmin(L, axis=1)
        # Sub-grid refinement: the vertex of the parabola through the grid minimum and its neighbours (in log p),
        # so p* (and its bootstrap interval) is not quantised to the grid spacing.
        j = np.clip(i, 1, grid.size - 2)
        rows = np.arange(L.shape[0])
        y0, y1, y2 = L[rows, j - 1], L[rows, j], L[rows, j + 1]
        h = np.log(grid[1] / grid[0])
        den = y0 - 2 * y1 + y2
        off = np.where(den > 0, 0.5 * h * (y0 - y2) / np.where(den > 0, den, 1.0), 0.0)
        interior = (i > 0) & (i < grid.size - 1)
        return np.where(interior, np.exp(np.log(grid[j]) + np.clip(off, -h, h)), grid[i])

    def info(self) -> dict:
        n, k = self.n, self.k
        ll = n * math.log(max(self.rss_log, 1e-300) / n)
        return {"family": self.family, "law": LAWS[self.family], "k": k, "n": n, "rss_log": self.rss_log,
                "rmse_log": math.sqrt(self.rss_log / n), "aic": ll + 2 * k, "bic": ll + k * math.log(n),
                "converged": self.converged, "params": self.params(),
                "ci": self.param_ci(), "bootstrap": {"method": self.boot_method, "n_bootstrap": self.n_bootstrap,
                                                     "n_ok": int(self.samples.shape[0]), "n_failed": self.n_failed}}

    def param_ci(self, level: float = 0.95) -> dict:
        if not self.samples.shape[0]:
            return {}
        vals = [self.params(th) for th in self.samples]
        q = 100 * (1 - level) / 2
        return {key: [float(np.percentile([v[key] for v in vals], q)), float(np.percentile([v[key] for v in vals],
                                                                                             100 - q))]
                for key in vals[0]}

    def interval(self, fn, level: float = 0.95):
        """Percentile interval of fn(theta) over the bootstrap samples (fn returns an array)."""
        if not self.samples.shape[0]:
            return None
        vals = np.stack([fn(th) for th in self.samples])
        q = 100 * (1 - level) / 2
        return np.percentile(vals, q, axis=0), np.percentile(vals, 100 - q, axis=0)


def _points(lineages):
    p = np.concatenate([np.full(ln.flops.size, ln.patch_size) for ln in lineages])
    C = np.concatenate([ln.flops for ln in lineages])
    L = np.concatenate([ln.values for ln in lineages])
    F = np.concatenate([np.full(ln.flops.size, ln.flops_per_image or np.nan) for ln in lineages])
    lid = np.concatenate([np.full(ln.flops.size, i) for i, ln in enumerate(lineages)])
    return p, C, L, F, lid


def _F_poly(lineages, log_F):
    """(R, coefficients) of F = f0 + f1 T + f2 T² (T = (R/p)², non-negative least squares, relative error) when it
    reproduces every measured F within 1 %; None otherwise (or without an image size)."""
    R = next((ln.image_size for ln in lineages if ln.image_size), None)
    lpk, lfk = log_F
    if R is None or lpk.size < 2:
        return None
    T = (R / np.exp(lpk)) ** 2
    Fk = np.exp(lfk)
    X = np.stack([np.ones_like(T), T, T * T], 1) / Fk[:, None]
    coef, _ = scipy.optimize.nnls(X, np.ones_like(T))
    fit = np.stack([np.ones_like(T), T, T * T], 1) @ coef
    return (float(R), tuple(float(c) for c in coef)) if np.all(np.abs(fit / Fk - 1) < 0.01) else None


def _log_F_knots(lineages):
    by = {}
    for ln in lineages:
        if ln.flops_per_image:
            by.setdefault(ln.patch_size, []).append(ln.flops_per_image)
    ps = sorted(by)
    return (np.log(np.array(ps, np.float64)), np.log(np.array([np.mean(by[q]) for q in ps], np.float64)))


@single_blas_thread
def fit_joint_compute(lineages: Sequence[Lineage], family: str, *, n_bootstrap: int = 200, seed: int = 0,
                      max_flops: float | None = None) -> JointLaw:
    """Fits one joint family to the lineages' points (those with flops <= max_flops when given), with bootstrap.

    Bootstrap: "stratified" (lineages resampled with replacement within each patch size) when every patch size has
    >= 2 lineages, else "residual" (log residuals resampled onto the fitted values).
    Raises ValueError for an unknown family, missing F(p) for "images", or too few points / patch sizes.
    """
    if family not in FAMILIES:
        raise ValueError(f"joint family {family!r} is not one of {FAMILIES}")
    p, C, L, F, lid = _points(lineages)
    keep = np.ones(p.shape, bool) if max_flops is None else C <= max_flops * (1 + 1e-9)
    p, C, L, F, lid = p[keep], C[keep], L[keep], F[keep], lid[keep]
    k = len(PARAM_NAMES[family])
    if np.unique(p).size < 3 or p.size < k + 2:
        raise ValueError(f"joint {family} law needs >= 3 patch sizes and >= {k + 2} points; got "
                         f"{np.unique(p).tolist()} and {p.size} points")
    if family == "images" and not np.all(np.isfinite(F)):
        raise ValueError("joint 'images' law needs train_flops_per_image in every run's config.json")
    p_ref = float(p.max())
    lpk, lfk = _log_F_knots(lineages)
    Fi = F if family == "images" else np.ones_like(C)
    c0 = float(np.mean(np.log(C) - np.log(Fi)))
    lp, lc = _design(family, p, C, Fi, p_ref, c0)
    y = np.log(L)
    w = np.ones_like(y)
    best = None
    for s in _starts(family, lp, lc, L, w):
        th, rss, ok = _lsq(s, family, lp, lc, y, w)
        if best is None or rss < best[1]:
            best = (th, rss, ok)
    theta, rss, ok = best
    # --- bootstrap
    rng = np.random.default_rng(seed)
    lids = np.unique(lid)
    p_of = {i: p[lid == i][0] for i in lids}
    strata = {}
    for i in lids:
        strata.setdefault(p_of[i], []).append(i)
    method = "stratified" if min(len(v) for v in strata.values()) >= 2 else "residual"
    resid = y - _log_pred(theta, family, lp, lc)
    pool = (resid - resid.mean()) * math.sqrt(y.size / max(y.size - k, 1))
    samples, failed = [], 0
    for _ in range(max(int(n_bootstrap), 0)):
        if method == "stratified":
            wb = np.zeros_like(y)
            for ids in strata.values():
                for i in rng.choice(ids, size=len(ids), replace=True):
                    wb[lid == i] += 1.0
            yb = y
        else:
            wb = w
            yb = y - resid + rng.choice(pool, size=y.size, replace=True)
        th, _, okb = _lsq(theta, family, lp, lc, yb, wb)
        if okb and np.all(np.isfinite(th)):
            samples.append(th)
        else:
            failed += 1
    samples = np.array(samples) if samples else np.zeros((0, k))
    return JointLaw(family, theta, p_ref, c0, (lpk, lfk), rss, int(y.size), ok, samples, method,
                    int(n_bootstrap), failed, _F_poly(lineages, (lpk, lfk)))


# ================================================================================================ the analysis
def _per_budget(lineages, budgets, *, n_bootstrap, seed):
    rows = []
    for C in budgets:
        vals = [(ln, float(ln.at(C)[0])) for ln in lineages]
        vals = [(ln, v) for ln, v in vals if np.isfinite(v)]
        by_p: dict = {}
        for ln, v in vals:
            by_p.setdefault(ln.patch_size, []).append(v)
        mean_by_p = {q: float(np.mean(v)) for q, v in by_p.items()}
        row = {"flops": float(C), "n_lineages": len(vals), "patch_sizes": sorted(by_p, reverse=True),
               "mean_by_patch": {f"{q:g}": m for q, m in sorted(mean_by_p.items(), reverse=True)},
               "observed_best_patch_size": min(mean_by_p, key=mean_by_p.get) if mean_by_p else None}
        if len(by_p) >= 3:
            try:
                f = fit_power_law([ln.patch_size for ln, _ in vals], [v for _, v in vals], n_bootstrap=n_bootstrap,
                                  seed=seed, run_names=[f"{ln.arch}_p{ln.patch_size:g}_s{ln.seed}" for ln, _ in vals],
                                  heldout=False, compare=False, profile=False, max_starts=12)
                row["fit"] = {"E": f.E, "A": f.A, "alpha": f.alpha, "ci": f.ci, "ci80": f.ci80,
                              "bootstrap": f.bootstrap.method, "n_bootstrap": f.bootstrap.n_bootstrap,
                              "warnings": f.warnings}
            except (ValueError, RuntimeError) as e:
                row["skipped"] = str(e)
        else:
            row["skipped"] = f"only {len(by_p)} patch size(s) cover this budget (need >= 3)"
        rows.append(row)
    return rows


def _heldout(lineages, budgets, families, *, n_bootstrap, seed, factor=1.5):
    """Fit every family on points with flops <= C_max / factor, predict each patch size at C_max (the largest
    budget covered by >= 3 patch sizes), compare with the observed mean over that patch size's lineages."""
    covered = [C for C in budgets if len({ln.patch_size for ln in lineages if np.isfinite(ln.at(C)[0])}) >= 3]
    if not covered:
        return {"skipped": "no budget is covered by >= 3 patch sizes"}
    c_max = float(max(covered))
    obs: dict = {}
    for ln in lineages:
        v = float(ln.at(c_max)[0])
        if np.isfinite(v):
            obs.setdefault(ln.patch_size, []).append(v)
    out = {"flops": c_max, "fit_max_flops": c_max / factor, "families": {}}
    for fam in families:
        try:
            law = fit_joint_compute(lineages, fam, n_bootstrap=n_bootstrap, seed=seed, max_flops=c_max / factor)
        except ValueError as e:
            out["families"][fam] = {"skipped": str(e)}
            continue
        ps = sorted(obs, reverse=True)
        pred = law.predict(np.array(ps), c_max)
        iv = law.interval(lambda th: law.predict(np.array(ps), c_max, th))
        rows = []
        for i, q in enumerate(ps):
            o = float(np.mean(obs[q]))
            lo, hi = (float(iv[0][i]), float(iv[1][i])) if iv else (float("nan"), float("nan"))
            rows.append({"patch_size": q, "predicted": float(pred[i]), "ci": [lo, hi], "observed": o,
                         "observed_runs": obs[q], "pred_minus_obs": float(pred[i]) - o,
                         "within_ci": bool(lo <= o <= hi)})
        err = np.array([math.log(r["predicted"] / r["observed"]) for r in rows])
        p_obs = min(obs, key=lambda q: np.mean(obs[q]))
        p_pred = float(law.p_star([c_max], (min(obs), max(obs)))[0])
        out["families"][fam] = {"rows": rows, "rmse_log": float(np.sqrt(np.mean(err ** 2))),
                                "max_abs_log_error": float(np.max(np.abs(err))),
                                "n_within_ci": int(sum(r["within_ci"] for r in rows)), "n": len(rows),
                                "observed_best_patch_size": p_obs, "predicted_p_star": p_pred,
                                "n_fit_points": law.n}
    return out


def analyze_compute(runs: Sequence[io.Run], *, metric: str = "loss", n_bootstrap: int = 200, seed: int = 0,
                    budgets: Sequence[float] | None = None, families: Sequence[str] = FAMILIES,
                    per_budget_bootstrap: int | None = None) -> dict:
    """The compute-frontier analysis per group (see module doc). Returns {"groups": {label: {...}}, "metric"}.

    Per group: "lineages", "budgets", "per_budget" (L(p) fit per budget), "joint" (family -> fit info),
    "heldout" (the largest-budget check per family), "winner" (+ "margin"), "compute_optimal"
    ([{"flops", "patch_size", "ci", "observed_best_patch_size"}] in increasing flops), "warnings".
    """
    unfinished: list = []
    lineages = build_lineages(runs, metric, unfinished)
    if not lineages:
        raise ValueError(f"no run has eval rows with 'flops' and {metric!r}; cannot analyse the compute frontier")
    out = {}
    for label in sorted({ln.group for ln in lineages}):
        lns = [ln for ln in lineages if ln.group == label]
        warnings = [f"left out (not finished: last eval before total_steps): {', '.join(sorted(unfinished))}"] \
            if unfinished else []
        b = np.asarray(budgets if budgets is not None else default_budgets(lns), np.float64)
        for ln in lns:
            if ln.source == "annealed" and ln.values.size >= 2:
                rise = np.flatnonzero(np.diff(ln.values) > 0.01 * ln.values[:-1])
                if rise.size:
                    i = int(rise[0])
                    warnings.append(f"{ln.arch} p={ln.patch_size:g} seed {ln.seed}: the annealed {metric} rises "
                                    f"from {ln.values[i]:.4g} at {ln.flops[i]:.3g} FLOPs to {ln.values[i + 1]:.4g} at "
                                    f"{ln.flops[i + 1]:.3g} (> 1 %): more compute made it worse (overfitting?)")
        if any(ln.source == "evals" for ln in lns):
            warnings.append("some lineages have a single run: their points are intermediate evals of one schedule, "
                            "not annealed losses at each budget")
        g = {"lineages": [{"arch": ln.arch, "patch_size": ln.patch_size, "seed": ln.seed, "source": ln.source,
                           "runs": ln.runs, "flops": ln.flops, "values": ln.values,
                           "flops_per_image": ln.flops_per_image} for ln in lns],
             "budgets": b, "warnings": warnings}
        g["per_budget"] = _per_budget(lns, b, n_bootstrap=per_budget_bootstrap or n_bootstrap, seed=seed)
        laws, joint = {}, {}
        for fam in families:
            try:
                laws[fam] = fit_joint_compute(lns, fam, n_bootstrap=n_bootstrap, seed=seed)
                joint[fam] = laws[fam].info()
            except ValueError as e:
                joint[fam] = {"skipped": str(e)}
        g["joint"] = joint
        g["heldout"] = _heldout(lns, b, list(laws), n_bootstrap=n_bootstrap, seed=seed)
        g["winner"], g["margin"] = _winner(joint, g["heldout"])
        g["compute_optimal"] = []
        if g["winner"] is not None:
            law = laws[g["winner"]]
            p_range = (min(ln.patch_size for ln in lns), max(ln.patch_size for ln in lns))
            ps = law.p_star(b, p_range)
            iv = law.interval(lambda th: law.p_star(b, p_range, th))
            obs = {row["flops"]: row["observed_best_patch_size"] for row in g["per_budget"]}
            for i, C in enumerate(b):
                g["compute_optimal"].append({"flops": float(C), "patch_size": float(ps[i]),
                                             "ci": [float(iv[0][i]), float(iv[1][i])] if iv else None,
                                             "observed_best_patch_size": obs.get(float(C))})
            g["p_range"] = list(p_range)
            g["_law"] = law
        out[label] = g
    return {"groups": out, "metric": metric, "n_bootstrap": n_bootstrap, "seed": seed}


def _winner(joint, heldout):
    """Lowest held-out RMS log error; AIC when no held-out check ran. Returns (family, margin dict)."""
    fams = [f for f, j in joint.items() if "skipped" not in j]
    if not fams:
        return None, None
    ho = heldout.get("families", {}) if isinstance(heldout, dict) else {}
    scored = [(ho[f]["rmse_log"], f) for f in fams if f in ho and "rmse_log" in ho[f]]
    aic = {f: joint[f]["aic"] for f in fams}
    if scored:
        scored.sort()
        win = scored[0][1]
        margin = {"by": "heldout_rmse_log", "winner_rmse_log": scored[0][0],
                  "runner_up": scored[1][1] if len(scored) > 1 else None,
                  "runner_up_rmse_log": scored[1][0] if len(scored) > 1 else None,
                  "delta_aic_vs_best_other": (aic[win] - min(v for f, v in aic.items() if f != win)
                                              if len(aic) > 1 else None)}
        return win, margin
    win = min(aic, key=aic.get)
    others = [v for f, v in aic.items() if f != win]
    return win, {"by": "aic", "delta_aic_vs_best_other": (aic[win] - min(others)) if others else None}
