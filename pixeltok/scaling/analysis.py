"""From run workdirs to fits: grouping, per-group and joint fits, frontier, and the output files.

Used by `python -m pixeltok.scaling` and by the notebooks (so they stay thin).
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np

from pixeltok.scaling import compute
from pixeltok.scaling import frontier as fr
from pixeltok.scaling import io
from pixeltok.scaling.fit import _clean, fit_power_law, versions
from pixeltok.scaling.joint import fit_joint


def load_runs(paths: Sequence[str], *, skip_bad: bool = False, need_metrics: bool = True):
    """Loads every run under `paths`. Returns (runs, warnings); bad runs raise unless skip_bad (then warn)."""
    runs, warnings = [], []
    for d in io.find_run_dirs(paths):
        try:
            run = io.load_run(d, need_metrics=False)     # read once; the eval rows are required below
            if need_metrics and not run.evals and os.path.isfile(os.path.join(d, "metrics.jsonl")):
                # Logging but no eval yet: a run that has just started (or died before its first eval).
                warnings.append(f"left out: run {run.name} is unfinished (no eval yet); rerun its sweep to finish it")
                continue
            if need_metrics:
                io.require_evals(run)
        except ValueError as e:
            if not skip_bad:
                raise
            warnings.append(f"skipped: {e}")
            continue
        warnings.extend(run.warnings)
        total = run.config.get("total_steps")
        last = int(run.evals[-1]["step"]) if run.evals else None
        if need_metrics and isinstance(total, int) and last is not None and last < total:
            # A run still training (or cut short) has no annealed final eval: its last row is a stable-phase
            # point, and fitted as this budget's loss it would bias every law (a partial sweep is normal).
            warnings.append(f"left out: run {run.name} is unfinished (last eval at step {last} of {total}); "
                            "rerun its sweep to finish it")
            continue
        runs.append(run)
    if not runs:
        raise ValueError(f"no usable runs in {list(paths)}")
    return runs, warnings


def evaluate_checkpoints(runs: Sequence[io.Run]) -> None:
    """Re-evaluates each run's latest checkpoint (pixeltok.evaluate.evaluate_checkpoint), in place."""
    from pixeltok.evaluate import evaluate_checkpoint   # lazy: jax/flax only when --eval is asked for
    for run in runs:
        res = evaluate_checkpoint(run.path)
        q = run.quality_metric
        run.checkpoint_eval = {"loss": float(res["loss"]), q: float(res[q]),
                               "step": int(res["step"]), "source": "checkpoint_eval"}


def _record(run: io.Run, value: float, step, metric: str) -> dict:
    row = next((r for r in run.evals if r.get("step") == step), {})
    src = run.checkpoint_eval or row
    return {"run": run.name, "path": os.path.abspath(run.path), "model_name": run.model_name, "arch": run.arch,
            "patch_size": run.patch_size, "image_size": run.image_size, "seed": run.seed,
            "tokens": run.tokens_per_image, "params": run.num_params, "params_nonemb": run.num_params_non_embedding,
            "train_flops": row.get("flops"), "step": step, metric: value, "loss": src.get("loss"),
            "task": run.task, "quality_metric": run.quality_metric, run.quality_metric: src.get(run.quality_metric),
            "loss_source": "checkpoint_eval" if run.checkpoint_eval is not None else "metrics.jsonl"}


def analyze(runs: Sequence[io.Run], *, metric: str = "loss", select: str = "final", n_bootstrap: int = 1000,
            seed: int = 0, bootstrap: str = "auto", skip_bad: bool = False, heldout=True,
            require_fit: bool = True) -> dict:
    """Groups runs (architecture, model size, resolution, data set), fits each group, the joint fit and frontier.

    Returns {"groups": [...], "joint": [...], "frontiers": {...}, "curves": [...], "warnings": [...], settings}.
    A group with < 3 distinct patch sizes gets no fit and a warning naming its runs; if no group can be fitted,
    ValueError (unless require_fit=False: then the groups come back unfitted, with their errors).
    """
    warnings: list[str] = []
    by_key: dict = {}
    for run in runs:
        value, step = run.value(metric, select)
        if not math.isfinite(value):
            msg = f"run {run.name}: {select} eval {metric} is non-finite ({value}) in {run.path}"
            if not skip_bad:
                raise ValueError(msg + " (pass --skip-bad to leave it out)")
            warnings.append("skipped: " + msg)
            continue
        by_key.setdefault(io.group_key(run, metric), []).append((run, value, step))
    groups = []
    for key, items in sorted(by_key.items(), key=lambda kv: io.group_label(kv[0])):
        items.sort(key=lambda it: (-it[0].patch_size, str(it[0].seed)))
        label = io.group_label(key)
        p = np.array([it[0].patch_size for it in items])
        L = np.array([it[1] for it in items])
        g = {"key": key, "label": label, "runs": [it[0] for it in items], "patch_sizes": p, "losses": L,
             "data": [_record(*it, metric) for it in items], "fit": None, "error": None}
        try:
            image_size = key[2]
            g["fit"] = fit_power_law(p, L, n_bootstrap=n_bootstrap, seed=seed,
                                     run_names=[it[0].name for it in items],
                                     seeds=[it[0].seed if isinstance(it[0].seed, int) else -1 for it in items],
                                     bootstrap=bootstrap, image_size=image_size, heldout="auto" if heldout else False,
                                     loss_name=f"{select}_eval_{metric}")
        except ValueError as e:
            g["error"] = str(e)
            warnings.append(f"group {label}: no fit: {e}")
        groups.append(g)
    if not any(g["fit"] is not None for g in groups):
        msg = "no group could be fitted: " + "; ".join(f"{g['label']}: {g['error']}" for g in groups)
        if require_fit:
            raise ValueError(msg)
        return {"groups": groups, "joint": [], "frontiers": {}, "curves": [], "warnings": warnings, "metric": metric,
                "select": select, "n_bootstrap": n_bootstrap, "seed": seed, "bootstrap": bootstrap, "error": msg}
    joint = _joint_fits(groups, n_bootstrap=n_bootstrap, seed=seed, bootstrap=bootstrap, warnings=warnings)
    curves, frontiers = [], {}
    for g in groups:
        gc = []
        for run in g["runs"]:
            x, y = run.curve(metric)
            gc.append({"name": run.name, "patch_size": run.patch_size, "flops": np.array(x), "loss": np.array(y),
                       "group": g["label"]})
        curves.extend(gc)
        if any(len(c["flops"]) for c in gc):
            frontiers[g["label"]] = fr.compute_frontier(gc, match=compute.BUDGET_MATCH)
    return {"groups": groups, "joint": joint, "frontiers": frontiers, "curves": curves, "warnings": warnings,
            "metric": metric, "select": select, "n_bootstrap": n_bootstrap, "seed": seed, "bootstrap": bootstrap}


def longest_runs(runs: Sequence[io.Run]) -> list[io.Run]:
    """The run with the most training FLOPs (latest eval) per (group, patch size, seed): the per-patch-size fit of
    a frontier sweep uses the largest budget of each lineage, not a mix of budgets."""
    best: dict = {}
    for run in runs:
        x, _ = run.curve("loss")
        key = (io.group_label(io.group_key(run)), run.patch_size, str(run.seed))
        f = max(x) if x else -1.0
        if key not in best or f > best[key][0]:
            best[key] = (f, run)
    return [v[1] for v in best.values()]


def analyze_frontier(runs: Sequence[io.Run], *, metrics=("loss", "error"), n_bootstrap: int = 200, seed: int = 0,
                     per_budget_bootstrap: int | None = None) -> dict:
    """pixeltok.scaling.compute.analyze_compute for each metric: {metric: result} (a metric no run logs is left
    out with its error in result["errors"])."""
    from pixeltok.scaling import compute
    out, errors = {}, {}
    for m in metrics:
        try:
            out[m] = compute.analyze_compute(runs, metric=m, n_bootstrap=n_bootstrap, seed=seed,
                                             per_budget_bootstrap=per_budget_bootstrap)
        except ValueError as e:
            errors[m] = str(e)
    if not out:
        raise ValueError("compute-frontier analysis: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    out["errors"] = errors
    return out


def _frontier_json(fa: dict, metric: str) -> dict:
    """fit.json fields of the frontier analysis: compute_optimal and the held-out table for `metric` (the fitted
    one) at top level, everything per metric under "compute_frontier"."""
    doc = {"compute_frontier": {}}
    for m, res in fa.items():
        if m == "errors":
            continue
        doc["compute_frontier"][m] = {label: {k: v for k, v in g.items() if not k.startswith("_")}
                                      for label, g in res["groups"].items()}
    main = fa.get(metric) or next(v for k, v in fa.items() if k != "errors")
    doc["compute_optimal"] = {label: g["compute_optimal"] for label, g in main["groups"].items()}
    doc["heldout_budget"] = {label: {"winner": g["winner"], "margin": g["margin"], **g["heldout"]}
                             for label, g in main["groups"].items()}
    doc["compute_frontier_errors"] = fa.get("errors", {})
    return doc


def _joint_fits(groups, *, n_bootstrap, seed, bootstrap, warnings):
    """One shared-α fit per (architecture, resolution, data set, metric) with >= 2 fitted model sizes."""
    fam: dict = {}
    for g in groups:
        if g["fit"] is not None:
            arch, _, res, dataset, _, _, metric = g["key"]
            fam.setdefault((arch, res, dataset, metric), []).append(g)
    out = []
    for (arch, res, dataset, metric), gs in fam.items():
        if len(gs) < 2:
            continue
        p = np.concatenate([g["patch_sizes"] for g in gs])
        L = np.concatenate([g["losses"] for g in gs])
        sizes = sum(([g["label"]] * len(g["losses"]) for g in gs), [])
        names = sum(([r.name for r in g["runs"]] for g in gs), [])
        try:
            j = fit_joint(p, L, sizes, n_bootstrap=n_bootstrap, seed=seed, run_names=names, bootstrap=bootstrap)
        except (ValueError, RuntimeError) as e:
            warnings.append(f"joint fit {arch}@{res}: {e}")
            continue
        d = j.to_dict()
        d["family"] = {"arch": arch, "image_size": res, "dataset": dataset, "metric": metric}
        d["per_size_alpha"] = {g["label"]: {"alpha": g["fit"].alpha, "ci": g["fit"].ci["alpha"]} for g in gs}
        out.append(d)
    return out


def to_json(analysis: dict, args: dict | None = None) -> dict:
    """The fit.json document: one entry per group (FitResult.to_dict() plus group info and the run data)."""
    groups = []
    for g in analysis["groups"]:
        arch, model, res, dataset, width, depth, metric = g["key"]
        entry = {"group": {"label": g["label"], "arch": arch, "model": model, "image_size": res, "dataset": dataset,
                           "width": width, "depth": depth, "loss": f"{analysis['select']}_eval_{metric}"},
                 "data": g["data"]}
        if g["fit"] is not None:
            entry.update(g["fit"].to_dict())
        else:
            entry["error"] = g["error"]
        groups.append(entry)
    frontiers = {k: {kk: (vv if kk != "values" else {n: v for n, v in vv.items()}) for kk, vv in f.items()}
                 for k, f in analysis["frontiers"].items()}
    return _clean({"tool": "pixeltok.scaling", "args": args or {}, "metric": analysis["metric"],
                   "select": analysis["select"], "n_bootstrap": analysis["n_bootstrap"], "seed": analysis["seed"],
                   "groups": groups, "joint": analysis["joint"], "frontier": frontiers,
                   "warnings": analysis["warnings"], "versions": versions()})


def write_outputs(analysis: dict, out_dir: str, args: dict | None = None, frontier: dict | None = None,
                  all_runs: Sequence[io.Run] | None = None) -> list[str]:
    """Writes fit.json, loss_vs_patch.png, residuals.png, frontier.png and summary.md into out_dir.

    With `frontier` (analyze_frontier's result) fit.json gains compute_optimal / heldout_budget /
    compute_frontier, frontier.png draws every run of `all_runs` with the envelope and p*(C), and summary.md the
    frontier tables.

    Without any fitted group (analysis["error"]) only fit.json is written: the run data (possibly expensive
    checkpoint evaluations) and each group's error.
    """
    from pixeltok.scaling import plots, report
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, k) for k in
             ("fit.json", "loss_vs_patch.png", "residuals.png", "frontier.png", "summary.md")}
    doc = to_json(analysis, args)
    if frontier is not None:
        doc.update(_clean(_frontier_json(frontier, analysis["metric"])))
    if analysis.get("error"):
        doc["error"] = analysis["error"]
    with open(paths["fit.json"], "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
    if analysis.get("error"):
        return [paths["fit.json"]]
    plots.plot_loss_vs_patch(analysis["groups"], paths["loss_vs_patch.png"])
    plots.plot_residuals(analysis["groups"], paths["residuals.png"])
    if frontier is not None:
        main = frontier.get(analysis["metric"]) or next(v for k, v in frontier.items() if k != "errors")
        plots.plot_compute_frontier(all_runs or [r for g in analysis["groups"] for r in g["runs"]], main,
                                    paths["frontier.png"])
    else:
        plots.plot_frontier(analysis["curves"], analysis["frontiers"], paths["frontier.png"])
    with open(paths["summary.md"], "w", encoding="utf-8") as f:
        f.write(report.summary_markdown(analysis, args))
        if frontier is not None:
            f.write(report.frontier_markdown(frontier, analysis["metric"]))
    return list(paths.values())
