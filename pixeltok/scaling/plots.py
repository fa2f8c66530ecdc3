"""Figures for scaling fits. Object-oriented Matplotlib (Figure + Agg canvas): no pyplot state, no display needed.

Each function returns the Figure and saves it when `path` is given. `groups` items are dicts with keys
"label", "patch_sizes", "losses" and "fit" (a FitResult or None when the group could not be fitted).
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _new(ncols: int = 1, width: float = 5.5, height: float = 4.2):
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path):
    if path:
        fig.savefig(path, dpi=110)
    return fig


def plot_loss_vs_patch(groups, path: str | None = None):
    """Left: log–log (L − Ê) vs p with fit and 95 % band (the paper's Fig. 1 view). Right: L vs p (log x), the
    held-out smallest p: the prediction from the others with its 95 % interval against the observed loss."""
    fig, (ax0, ax1) = _new(2)
    for i, g in enumerate(groups):
        col = f"C{i % 10}"
        p, L, fit = np.asarray(g["patch_sizes"], float), np.asarray(g["losses"], float), g.get("fit")
        if fit is None:
            ax1.plot(p, L, "x", color=col, label=f"{g['label']} (no fit)")
            continue
        grid = np.geomspace(p.min() / 1.3, p.max() * 1.3, 200)
        lo, hi = fit.predict_interval(grid, 0.95)
        ax1.fill_between(grid, lo, hi, color=col, alpha=0.2, lw=0)
        ax1.plot(grid, fit.predict(grid), "-", color=col,
                 label=f"{g['label']}: α={fit.alpha:.3g} [{fit.ci['alpha'][0]:.2g}, {fit.ci['alpha'][1]:.2g}]")
        ax1.plot(p, L, "o", color=col, ms=4)
        excess = L - fit.E
        pos = excess > 0
        ax0.plot(p[pos], excess[pos], "o", color=col, ms=4)
        ax0.plot(grid, fit.A * grid ** fit.alpha, "-", color=col, label=g["label"])
        ax0.fill_between(grid, np.maximum(lo - fit.E, 1e-12), np.maximum(hi - fit.E, 1e-12), color=col, alpha=0.2,
                         lw=0)
        held = fit.heldout
        if held and "predicted" in held:
            ax1.errorbar([held["p"]], [held["predicted"]], yerr=[[held["predicted"] - held["ci"][0]],
                                                                 [held["ci"][1] - held["predicted"]]],
                         fmt="s", mfc="none", color=col, capsize=4,
                         label=f"held-out p={held['p']:g}: predicted (95%)" if i == 0 else None)
            ax1.plot([held["p"]], [held["observed"]], "*", color=col, ms=9, mec="k", alpha=0.7,
                     label="held-out: observed" if i == 0 else None)
    for ax in (ax0, ax1):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("patch size p")
        ax.grid(True, which="both", alpha=0.3)
    ax0.set_yscale("log")
    ax0.set_ylabel("L − Ê (fitted E subtracted)")
    ax0.set_title("log–log: L − E = A·p^α")
    ax1.set_ylabel("eval loss L")
    ax1.set_title("L = E + A·p^α, 95% bootstrap band")
    ax0.legend(fontsize=7)
    ax1.legend(fontsize=7)
    return _save(fig, path)


def plot_residuals(groups, path: str | None = None):
    """Log residuals log L − log L̂ against p for every fitted group."""
    fig, (ax,) = _new(1)
    for i, g in enumerate(groups):
        fit = g.get("fit")
        if fit is None:
            continue
        jitter = 1.0 + 0.02 * (i - len(groups) / 2)
        ax.plot(fit.patch_sizes * jitter, fit.residuals, "o", color=f"C{i % 10}",
                label=f"{g['label']} (R²_log={fit.r2:.4f})")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("patch size p")
    ax.set_ylabel("log L − log L̂")
    ax.set_title("residuals of E + A·p^α")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_frontier(curves, frontiers: dict, path: str | None = None):
    """Eval loss vs cumulative train FLOPs for every run (colour = patch size), each group's lower envelope."""
    fig, (ax,) = _new(1, width=7.0, height=4.8)
    ps = sorted({float(c["patch_size"]) for c in curves})
    styles = ["-", "--", ":", "-."]
    group_names = sorted({c.get("group", "") for c in curves})
    for c in curves:
        if not len(c["flops"]):
            continue
        col = f"C{ps.index(float(c['patch_size'])) % 10}"
        ls = styles[group_names.index(c.get("group", "")) % len(styles)]
        ax.plot(c["flops"], c["loss"], ls, color=col, lw=1, alpha=0.6)
    for i, p in enumerate(ps):
        ax.plot([], [], "-", color=f"C{i % 10}", label=f"p={p:g}")
    for j, (name, fr) in enumerate(frontiers.items()):
        ax.step(fr["budgets"], fr["envelope"], where="post", color="k", ls=styles[j % len(styles)], lw=2,
                label=f"envelope {name}")
    if not frontiers:
        ax.text(0.5, 0.5, "no eval rows with FLOPs", transform=ax.transAxes, ha="center")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative training FLOPs")
    ax.set_ylabel("eval loss")
    ax.set_title("compute frontier (line style = group)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_compute_frontier(runs, result: dict, path: str | None = None):
    """Left: every run's eval curve vs cumulative train FLOPs (colour = patch size, line style = architecture),
    each lineage's annealed end points (dots), and per group the lower envelope of the lineages (black). Right:
    the compute-optimal patch size p*(C) of the winning joint law with its 95 % bootstrap band, and the best
    measured patch size at each budget (markers)."""
    from pixeltok.scaling import compute
    metric = result["metric"]
    fig, (ax0, ax1) = _new(2, width=6.5, height=4.8)
    ps = sorted({float(r.patch_size) for r in runs})
    archs = sorted({r.arch for r in runs})
    styles = ["-", "--", ":", "-."]
    for r in runs:
        x, y = r.curve(metric)
        if not x:
            continue
        ax0.plot(x, y, styles[archs.index(r.arch) % 4], color=f"C{ps.index(float(r.patch_size)) % 10}", lw=0.8,
                 alpha=0.45)
    for i, p in enumerate(ps):
        ax0.plot([], [], "-", color=f"C{i % 10}", label=f"p={p:g}")
    for j, a in enumerate(archs):
        ax0.plot([], [], styles[j % 4], color="0.3", label=a)
    for gi, (label, g) in enumerate(result["groups"].items()):
        arch = g["lineages"][0]["arch"] if g["lineages"] else ""
        ls = styles[archs.index(arch) % 4] if arch in archs else "-"
        lo = min(min(ln["flops"]) for ln in g["lineages"])
        hi = max(max(ln["flops"]) for ln in g["lineages"])
        grid = np.geomspace(lo, hi, 200)
        vals = []
        for ln in g["lineages"]:
            if ln["source"] == "annealed":
                ax0.plot(ln["flops"], ln["values"], "o", ms=2.5,
                         color=f"C{ps.index(float(ln['patch_size'])) % 10}" if float(ln["patch_size"]) in ps
                         else "k")
            vals.append(compute.interpolate_loglog(ln["flops"], ln["values"], grid))
        env = np.nanmin(np.where(np.isfinite(vals), vals, np.inf), axis=0) if vals else grid * np.nan
        env = np.where(np.isfinite(env), env, np.nan)
        ax0.plot(grid, env, ls, color="k", lw=2, label=f"envelope {arch}")
        co = g.get("compute_optimal") or []
        if co:
            f = np.array([c["flops"] for c in co])
            pstar = np.array([c["patch_size"] for c in co])
            ax1.plot(f, pstar, ls, color=f"C{gi % 10}", marker="s", ms=3,
                     label=f"p*(C) {label} [{g['winner']} law]")
            if all(c["ci"] for c in co):
                ax1.fill_between(f, [c["ci"][0] for c in co], [c["ci"][1] for c in co], color=f"C{gi % 10}",
                                 alpha=0.2, lw=0)
            obs = [(c["flops"], c["observed_best_patch_size"]) for c in co if c["observed_best_patch_size"]]
            if obs:
                ax1.plot(*zip(*obs), "x", color=f"C{gi % 10}", ms=7, label=f"best measured p ({arch})")
    ax0.set_xscale("log")
    ax0.set_yscale("log")
    ax0.set_xlabel("cumulative training FLOPs")
    ax0.set_ylabel(f"eval {metric}")
    ax0.set_title("learning curves (colour = p, style = architecture)")
    ax0.grid(True, which="both", alpha=0.3)
    ax0.legend(fontsize=6, ncol=2)
    ax1.set_xscale("log")
    ax1.set_yscale("log", base=2)
    ax1.set_xlabel("training FLOPs budget C")
    ax1.set_ylabel("compute-optimal patch size p*")
    ax1.set_title(f"p*(C) from the joint law ({metric}), 95% bootstrap band")
    ax1.grid(True, which="both", alpha=0.3)
    if result["groups"]:
        ax1.legend(fontsize=6)
    return _save(fig, path)
