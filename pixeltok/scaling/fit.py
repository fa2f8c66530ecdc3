"""`fit_power_law`: L(p) = E + A·p^α with bootstrap intervals, cross-check, comparison and held-out validation.

Method: `docs/scaling.md`. Primary estimator LSE-Huber (δ = 1e-3) by L-BFGS-B from a grid of starts;
cross-check by variable projection; percentile bootstrap (residual / stratified / case); AIC/BIC/AICc against the
pure power law and the log-linear law; the smallest patch size held out and predicted. Everything float64, unrounded.
"""

from __future__ import annotations

import dataclasses
import platform
from typing import Sequence

import numpy as np
import scipy

from pixeltok.scaling import bootstrap as boot
from pixeltok.scaling import compare as cmp
from pixeltok.scaling import estimators

LAW = "E + A * p**alpha"
N_PARAMS = 3
# α interval wider than α itself, A spanning > 100×, failed refits > 5 %: flagged as warnings.
WIDE_ALPHA_REL = 1.0
WIDE_A_RATIO = 100.0
MAX_FAILED_FRAC = 0.05


def validate_inputs(patch_sizes, losses, run_names=None, *, min_distinct=N_PARAMS):
    """Checks and converts inputs; raises ValueError naming the offending run.

    Returns (p (n,) float64, L (n,) float64, names list[str]).
    """
    p = np.asarray(patch_sizes, np.float64).ravel()
    L = np.asarray(losses, np.float64).ravel()
    if p.shape != L.shape:
        raise ValueError(f"patch_sizes ({p.size}) and losses ({L.size}) must have the same length")
    if run_names is None:
        names = [f"point {i} (p={p[i]:g})" for i in range(p.size)]
    else:
        names = [str(r) for r in run_names]
        if len(names) != p.size:
            raise ValueError(f"run_names has {len(names)} entries for {p.size} points")
    for i in range(p.size):
        if not np.isfinite(p[i]) or p[i] <= 0:
            raise ValueError(f"run {names[i]}: patch size {p[i]!r} is not a positive finite number")
        if not np.isfinite(L[i]):
            raise ValueError(f"run {names[i]}: loss is non-finite ({L[i]!r}); drop the run or fix its metrics")
        if L[i] <= 0:
            raise ValueError(f"run {names[i]}: loss {L[i]!r} must be > 0 for a log-space fit")
    distinct = np.unique(p)
    if distinct.size < min_distinct:
        raise ValueError(f"need >= {min_distinct} distinct patch sizes to fit {LAW} ({N_PARAMS} parameters); got "
                         f"{distinct.tolist()} from runs {names}")
    return p, L, names


def _interval_dict(samples: np.ndarray, level: float) -> dict:
    keys = ("E", "A", "alpha")
    return {k: boot.percentile_interval(samples[:, i], level) for i, k in enumerate(keys)}


def _clean(obj):
    """JSON-safe copy: numpy → python, tuples → lists, non-finite floats → None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def versions() -> dict:
    import pixeltok
    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "pixeltok": pixeltok.__version__}


@dataclasses.dataclass
class FitResult:
    """A fitted L(p) = E + A·p^α. Floats are unrounded; intervals are bootstrap percentiles."""
    E: float
    A: float
    alpha: float
    ci: dict                    # 95 %: {"E": (lo, hi), "A": (lo, hi), "alpha": (lo, hi)}
    ci80: dict
    patch_sizes: np.ndarray     # inputs, (n,)
    losses: np.ndarray
    run_names: list
    seeds: list | None
    fit_info: dict              # objective, grad_norm, n_starts, n_converged, start_spread, at_bound, ...
    varpro: dict                # the cross-check estimator and its agreement
    bootstrap: boot.BootstrapResult
    residuals: np.ndarray       # log L − log L̂, (n,)
    residuals_linear: np.ndarray
    r2: float                   # in log space
    r2_linear: float
    aic: float                  # main law, Gaussian on log L (from `compare`)
    bic: float
    aicc: float
    compare: dict | None
    heldout: dict | None
    tokens: dict | None
    profile_E: list | None
    warnings: list
    notes: list
    seed: int
    loss_name: str = "loss"
    delta: float = estimators.DELTA

    def predict(self, p) -> np.ndarray:
        """E + A·p^α at patch sizes p (array-like) from the unrounded parameters."""
        p = np.asarray(p, np.float64)
        return self.E + self.A * p ** self.alpha

    def _pred_samples(self, p, include_noise, n_runs=1):
        p = np.atleast_1d(np.asarray(p, np.float64))
        s = self.bootstrap.params
        pred = s[:, :1] + s[:, 1:2] * p[None, :] ** s[:, 2:3]
        if include_noise and self.bootstrap.noise_pool.size:
            rng = np.random.default_rng(self.seed + 1)
            noise = rng.choice(self.bootstrap.noise_pool, size=(n_runs,) + pred.shape).mean(axis=0)
            pred = pred * np.exp(noise)
        return pred

    def predict_interval(self, p, level: float = 0.95, include_noise: bool = False, n_runs: int = 1):
        """Bootstrap percentile interval of the prediction at p: (lo (m,), hi (m,)) arrays.

        include_noise: also add resampled run-to-run log residuals, averaged over `n_runs` runs (an interval for the
        observed mean of n_runs new runs rather than for the mean curve).
        """
        pred = self._pred_samples(p, include_noise, n_runs)
        if pred.shape[0] == 0:
            nan = np.full(pred.shape[1], np.nan)
            return nan, nan.copy()
        q = 100.0 * (1.0 - level) / 2.0
        lo, hi = np.percentile(pred, [q, 100.0 - q], axis=0)
        return lo, hi

    @property
    def alpha_tokens(self) -> float:
        """The exponent in tokens T = (R/p)²: α_T = α/2."""
        return self.alpha / 2.0

    @property
    def dof(self) -> int:
        return int(np.unique(self.patch_sizes).size - N_PARAMS)

    def to_dict(self) -> dict:
        """JSON-serialisable, unrounded record of the fit (docs/scaling.md), inputs included."""
        ps = np.unique(self.patch_sizes)
        lo95, hi95 = self.predict_interval(ps, 0.95)
        lo80, hi80 = self.predict_interval(ps, 0.80)
        b = self.bootstrap
        ci = {"level": 0.95, "method": b.method, "n_bootstrap": b.n_bootstrap, "n_ok": b.n_ok,
              "n_failed": b.n_failed, "n_degenerate": b.n_degenerate, "seed": b.seed, **self.ci,
              "ci80": self.ci80}
        d = {
            "law": LAW,
            "loss": self.loss_name,
            "inputs": {"patch_sizes": self.patch_sizes, "losses": self.losses, "run_names": self.run_names,
                       "seeds": self.seeds},
            "n_points": int(self.patch_sizes.size), "n_patch_sizes": int(ps.size), "dof": self.dof,
            "fit": {"E": self.E, "A": self.A, "alpha": self.alpha, "alpha_tokens": self.alpha_tokens,
                    "method": "lse_huber_lbfgs", "delta": self.delta, **self.fit_info},
            "varpro": self.varpro,
            "ci": ci,
            "ci80": self.ci80,
            "prediction": {"patch_sizes": ps, "predicted": self.predict(ps), "ci95": np.stack([lo95, hi95], 1),
                           "ci80": np.stack([lo80, hi80], 1)},
            "goodness": {"r2_log": self.r2, "r2": self.r2_linear, "residuals_log": self.residuals,
                         "residuals": self.residuals_linear,
                         "rmse_log": float(np.sqrt(np.mean(self.residuals ** 2))),
                         "rmse": float(np.sqrt(np.mean(self.residuals_linear ** 2))),
                         "max_abs_residual_log": float(np.max(np.abs(self.residuals))),
                         "fitted": self.predict(self.patch_sizes)},
            "aic": self.aic, "bic": self.bic, "aicc": self.aicc,
            "compare": self.compare,
            "heldout": self.heldout,
            "tokens": self.tokens,
            "profile_E": self.profile_E,
            "warnings": self.warnings,
            "notes": self.notes,
            "versions": versions(),
            "seed": self.seed,
        }
        return _clean(d)


@estimators.single_blas_thread
def profile_over_E(patch_sizes, losses, E_hat: float, *, delta=estimators.DELTA, theta_hat=None) -> list:
    """Huber objective minimised over (A, α) with E fixed on a grid in [0, min L): [[E, objective, A, α], ...].

    A flat profile down to E = 0 or up to min L means E is not identified by the data (docs/scaling.md).
    """
    import scipy.optimize
    p = np.asarray(patch_sizes, np.float64)
    L = np.asarray(losses, np.float64)
    lx = np.log(p) - np.log(p).max()
    y = np.log(L)
    w = np.ones_like(L)
    gid = np.zeros(L.shape, np.int64)
    lmin = float(L.min())
    fracs = np.concatenate([np.linspace(0.0, 0.9, 10), [0.95, 0.97, 0.98, 0.99, 0.995, 0.999]])
    grid = np.unique(np.concatenate([fracs * lmin, [min(max(E_hat, 0.0), lmin * 0.9999)]]))
    out = []
    start = None
    for E in grid:
        e = np.log(E) if E > 0 else np.log(lmin) - 40.0

        def f2(th, e=e):
            f, g = estimators._objective(np.array([e, th[0], th[1]]), lx, y, w, gid, 1, delta, "huber")
            return f, g[1:]

        # Start from a log-log regression of L − E (the exact answer when the data follow the law with this E).
        d = np.maximum(L - E, 1e-6 * lmin)
        al0, a0 = np.polyfit(lx, np.log(d), 1)
        cands = [np.array([a0, float(np.clip(al0, 0.0, 10.0))])] + ([start] if start is not None else [])
        best = None
        for s0 in cands:
            res = scipy.optimize.minimize(f2, s0, jac=True, method="L-BFGS-B",
                                          bounds=[(np.log(L.max()) - 60, np.log(L.max()) + 5), (0.0, 10.0)],
                                          options=estimators.LBFGS_OPTIONS)
            if best is None or res.fun < best.fun:
                best = res
        start = best.x
        A = float(np.exp(best.x[0] - best.x[1] * np.log(p).max()))
        out.append([float(E), float(best.fun * delta), A, float(best.x[1])])
    return out


def _heldout(p, L, names, seeds, *, n_bootstrap, seed, bootstrap, delta) -> dict:
    """Fits without the smallest patch size and predicts it (docs/scaling.md, the headline number)."""
    pmin = float(p.min())
    keep = p != pmin
    if np.unique(p[keep]).size < N_PARAMS:
        return {"p": pmin, "skipped": f"needs >= {N_PARAMS + 1} distinct patch sizes to hold one out"}
    sub = fit_power_law(p[keep], L[keep], n_bootstrap=n_bootstrap, seed=seed,
                        run_names=[n for n, k in zip(names, keep) if k],
                        seeds=None if seeds is None else [s for s, k in zip(seeds, keep) if k],
                        bootstrap=bootstrap, delta=delta, heldout=False, compare=False, profile=False)
    pred = float(sub.predict(pmin))
    lo, hi = (float(v[0]) for v in sub.predict_interval(pmin, 0.95))
    lo8, hi8 = (float(v[0]) for v in sub.predict_interval(pmin, 0.80))
    obs = L[~keep]
    nlo, nhi = (float(v[0]) for v in sub.predict_interval(pmin, 0.95, include_noise=True, n_runs=obs.size))
    observed = float(obs.mean())
    vp = sub.varpro
    return {
        "p": pmin, "fit_patch_sizes": np.unique(p[keep]).tolist(), "predicted": pred, "ci": [lo, hi],
        "ci80": [lo8, hi8], "ci_with_noise": [nlo, nhi], "observed": observed, "observed_runs": obs.tolist(),
        "pred_minus_obs": pred - observed, "within_ci": bool(lo <= observed <= hi),
        "within_ci_with_noise": bool(nlo <= observed <= nhi),
        "varpro_predicted": float(vp["E"] + vp["A"] * pmin ** vp["alpha"]),
        "fit": {"E": sub.E, "A": sub.A, "alpha": sub.alpha, "ci": sub.ci},
        "warnings": sub.warnings,
    }


@estimators.single_blas_thread
def fit_tokens(patch_sizes, losses, image_size: float, *, alpha_p: float | None = None, A_p: float | None = None,
               delta=estimators.DELTA) -> dict:
    """Fits L(T) = E + A′·T^(−α_T) in tokens T = (R/p)² as a separate optimisation; checks α_T = α_p/2.

    The token law is the patch law re-expressed (A′ = A·R^α), so disagreement beyond optimiser tolerance is a bug.
    """
    p = np.asarray(patch_sizes, np.float64)
    L = np.asarray(losses, np.float64)
    T = (float(image_size) / p) ** 2
    logx = -np.log(T)                               # x = 1/T: L = E + A′ x^α_T with α_T ≥ 0
    vp = estimators.varpro_fit(logx, L)
    lf = estimators.lse_fit(logx, L, max_starts=24,
                            extra_starts=[[np.log(max(vp.E, 1e-6 * L.min())), np.log(max(vp.A, 1e-300)), vp.alpha]])
    out = {"image_size": float(image_size), "tokens": T.tolist(), "law": "E + A_T * T**(-alpha_T)",
           "E": float(lf.E[0]), "A_T": float(lf.A[0]), "alpha_T": lf.alpha, "objective": lf.objective,
           "converged": lf.converged}
    if alpha_p is not None:
        out["alpha_p_over_2"] = alpha_p / 2.0
        out["consistent"] = bool(abs(lf.alpha - alpha_p / 2.0) <= 1e-3 * max(1.0, alpha_p))
        if A_p is not None:
            out["A_p_times_R_alpha"] = A_p * float(image_size) ** alpha_p
    return out


@estimators.single_blas_thread
def fit_power_law(patch_sizes: Sequence[float], losses: Sequence[float], n_bootstrap: int = 1000, seed: int = 0, *,
                  run_names: Sequence[str] | None = None, seeds: Sequence[int] | None = None, bootstrap: str = "auto",
                  delta: float = estimators.DELTA, heldout: bool | str = "auto", image_size: float | None = None,
                  compare: bool = True, profile: bool = True, max_starts: int = 24,
                  loss_name: str = "loss") -> FitResult:
    """Fits L(p) = E + A·p^α (docs/scaling.md): LSE-Huber L-BFGS, VarPro cross-check, bootstrap intervals.

    Args:
      patch_sizes, losses: (n,) one entry per run; repeated patch sizes (seeds) allowed.
      n_bootstrap: resamples (0 disables the bootstrap; intervals are then NaN).
      seed: seeds the bootstrap RNG.
      run_names: names used in errors and warnings; seeds: training seeds (recorded).
      bootstrap: "auto" | "residual" | "stratified" | "case" (bootstrap.choose_method).
      heldout: "auto" (when >= 4 distinct p), True or False: refit without the smallest p and predict it.
      image_size: when given, also fit in tokens T = (R/p)² and check α_T = α/2.
      compare: AIC/BIC/AICc against the pure power law and the log-linear law.
      profile: profile the objective over E (identifiability).
      max_starts: L-BFGS runs from this many of the grid starts with the lowest initial objective.

    Raises:
      ValueError: non-finite or non-positive losses, bad patch sizes, < 3 distinct patch sizes (names the runs).
      RuntimeError: L-BFGS did not converge from any start.
    """
    p, L, names = validate_inputs(patch_sizes, losses, run_names)
    seeds = None if seeds is None else [int(s) for s in seeds]
    logx = np.log(p)
    warnings: list[str] = []
    notes: list[str] = []

    # --- cross-check first: it is global in α (dense profile) and gives one more start for L-BFGS.
    vp = estimators.varpro_fit(logx, L)
    vp_start = [np.log(max(vp.E, 1e-6 * L.min())), np.log(max(vp.A, 1e-300)), vp.alpha]
    lf = estimators.lse_fit(logx, L, extra_starts=[vp_start], delta=delta, max_starts=max_starts)
    if lf.n_converged == 0:
        raise RuntimeError(f"LSE-Huber L-BFGS did not converge from any of {lf.n_starts} starts "
                           f"(best: {lf.message}, |grad| {lf.grad_norm:.3g}); runs {names}")
    E, A, alpha = float(lf.E[0]), float(lf.A[0]), float(lf.alpha)
    fitted_log = estimators.lse_log_predict(lf.e[0], lf.a[0], alpha, logx)
    resid = np.log(L) - fitted_log
    resid_lin = L - np.exp(fitted_log)
    y = np.log(L)
    tss = float(np.sum((y - y.mean()) ** 2))
    r2 = float(1 - np.sum(resid ** 2) / tss) if tss > 0 else float("nan")
    tss_lin = float(np.sum((L - L.mean()) ** 2))
    r2_lin = float(1 - np.sum(resid_lin ** 2) / tss_lin) if tss_lin > 0 else float("nan")

    # --- bootstrap. Residual pool from the least-squares (VarPro) fit: the Huber fit with δ = 1e-3 behaves like L1
    # and interpolates ~3 of 5 points, so its own residuals would understate the noise.
    method = boot.choose_method(p, bootstrap)
    vp_log_resid = np.log(L) - np.log(vp.E + vp.A * p ** vp.alpha)
    b = boot.run(p, L, theta_full=[lf.e[0], lf.a[0], alpha], fitted_log=fitted_log, log_residuals=vp_log_resid,
                 method=method, n_bootstrap=n_bootstrap, seed=seed, delta=delta)
    ci = _interval_dict(b.params, 0.95)
    ci80 = _interval_dict(b.params, 0.80)

    # --- VarPro record and agreement (within the primary's 95 % interval; tight tolerance for noise-free data).
    vp_ci = _interval_dict(b.varpro_params, 0.95) if b.varpro_params.size else None
    disagree = []
    for k, v in (("E", vp.E), ("A", vp.A), ("alpha", vp.alpha)):
        ref = {"E": E, "A": A, "alpha": alpha}[k]
        lo, hi = ci[k]
        close = abs(v - ref) <= 1e-4 * max(abs(ref), 1e-12) + 1e-9
        inside = np.isfinite(lo) and lo - 1e-12 <= v <= hi + 1e-12
        if not (close or inside):
            disagree.append(k)
    prof = vp.profile
    step = max(1, prof.shape[0] // 200)
    varpro = {"E": vp.E, "A": vp.A, "alpha": vp.alpha, "rss_relative": vp.rss, "weights": "1/L^2",
              "at_grid_edge": vp.at_edge, "agree": not disagree, "disagree_on": disagree, "ci": vp_ci,
              "profile": prof[::step].tolist()}
    if disagree:
        warnings.append(f"estimators disagree: VarPro {', '.join(disagree)} outside the LSE-Huber 95% interval "
                        f"(LSE-Huber E={E:.6g} A={A:.6g} alpha={alpha:.6g}; VarPro E={vp.E:.6g} A={vp.A:.6g} "
                        f"alpha={vp.alpha:.6g})")

    fit_info = {"e": float(lf.e[0]), "a": float(lf.a[0]), "objective": lf.objective, "grad_norm": lf.grad_norm,
                "converged": lf.converged, "n_starts": lf.n_starts, "n_converged": lf.n_converged,
                "start_spread": lf.start_spread, "at_bound": lf.at_bound, "message": lf.message}

    # --- warnings about identifiability and interval width.
    lmin = float(L.min())
    rmse_lin = float(np.sqrt(np.mean(resid_lin ** 2)))
    if "e[0]" in lf.at_bound:
        warnings.append("E at its lower bound (E -> 0): the data look like a pure power law; E not identified")
    if alpha < 1e-3 or alpha > estimators.ALPHA_BOUNDS[1] - 1e-2:
        warnings.append(f"alpha = {alpha:.4g} at the edge of [0, {estimators.ALPHA_BOUNDS[1]}]: loss does not "
                        "decrease like a power of p; alpha and A are degenerate")
    if lf.start_spread and lf.start_spread.get("alpha", 0.0) > 1e-3:
        warnings.append(f"best L-BFGS starts disagree on alpha by {lf.start_spread['alpha']:.3g}: flat objective")
    if b.n_bootstrap > 0:
        if b.n_ok == 0:
            warnings.append("no bootstrap refit succeeded; intervals are undefined")
        else:
            elo, ehi = ci["E"]
            if elo <= 0.01 * lmin:
                warnings.append(f"E not identified: its 95% interval [{elo:.4g}, {ehi:.4g}] reaches 0")
            if ehi >= lmin - 2.0 * rmse_lin:
                warnings.append(f"E not identified from above: its 95% interval [{elo:.4g}, {ehi:.4g}] reaches the "
                                f"smallest loss {lmin:.4g}")
            alo, ahi = ci["alpha"]
            if ahi - alo > WIDE_ALPHA_REL * abs(alpha):
                warnings.append(f"alpha poorly determined: 95% interval [{alo:.3g}, {ahi:.3g}] is wider than "
                                f"alpha = {alpha:.3g}")
            Alo, Ahi = ci["A"]
            if Alo <= 0 or Ahi / Alo > WIDE_A_RATIO:
                warnings.append(f"A poorly determined: 95% interval [{Alo:.3g}, {Ahi:.3g}] spans > "
                                f"{WIDE_A_RATIO:.0f}x")
        bad = b.n_failed + b.n_degenerate
        if bad > MAX_FAILED_FRAC * b.n_bootstrap:
            warnings.append(f"{b.n_failed} failed and {b.n_degenerate} degenerate bootstrap refits out of "
                            f"{b.n_bootstrap}")
    else:
        warnings.append("n_bootstrap = 0: no intervals")
    dof = int(np.unique(p).size - N_PARAMS)
    notes.append(f"{N_PARAMS}-parameter fit to {np.unique(p).size} patch sizes ({p.size} runs): {dof} degrees of "
                 f"freedom; intervals are {method}-bootstrap percentiles from {b.n_ok} refits and are approximate")

    comparison = cmp.compare_models(p, L, main_starts=[[lf.e[0], lf.a[0], alpha], vp_start]) if compare else None
    info = comparison["main"] if comparison else cmp.information_criteria(float(np.sum(resid ** 2)), p.size, 3)

    tokens = None
    if image_size is not None:
        tokens = fit_tokens(p, L, image_size, alpha_p=alpha, A_p=A, delta=delta)
        if not tokens["consistent"]:
            warnings.append(f"token fit alpha_T = {tokens['alpha_T']:.6g} != alpha/2 = {alpha / 2:.6g}")

    prof_E = profile_over_E(p, L, E, delta=delta) if profile else None

    if heldout == "auto":
        heldout = np.unique(p).size >= N_PARAMS + 1
    held = None
    if heldout:
        held = _heldout(p, L, names, seeds, n_bootstrap=n_bootstrap, seed=seed, bootstrap=bootstrap, delta=delta)

    return FitResult(E=E, A=A, alpha=alpha, ci=ci, ci80=ci80, patch_sizes=p, losses=L, run_names=names, seeds=seeds,
                     fit_info=fit_info, varpro=varpro, bootstrap=b, residuals=resid, residuals_linear=resid_lin,
                     r2=r2, r2_linear=r2_lin, aic=info["aic"], bic=info["bic"], aicc=info["aicc"],
                     compare=comparison, heldout=held, tokens=tokens, profile_E=prof_E, warnings=warnings,
                     notes=notes, seed=int(seed), loss_name=loss_name, delta=delta)
