"""Compute frontier: eval loss against cumulative training FLOPs, the lower envelope across patch sizes.

A run's value at budget C is its last eval at flops ≤ C ("last", what stopping the run there gives) or the best
eval so far ("best", keeping the best checkpoint). The envelope is the minimum over runs at each budget, and the
patch size of the minimising run is the best patch size for that budget.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def run_value_at(flops: np.ndarray, loss: np.ndarray, budgets: np.ndarray, mode: str = "last",
                 match: float = 1.0) -> np.ndarray:
    """A run's loss at each budget (NaN before its first eval). flops, loss: (k,) any order; budgets: (m,).

    An eval at flops ≤ budget·`match` counts as within the budget (match > 1: runs of one iso-FLOP budget, whose
    step counts round differently, all end "at" it)."""
    order = np.argsort(flops, kind="stable")
    f, y = np.asarray(flops, np.float64)[order], np.asarray(loss, np.float64)[order]
    if mode == "best":
        y = np.minimum.accumulate(y)
    elif mode != "last":
        raise ValueError(f"frontier mode must be 'last' or 'best', got {mode!r}")
    idx = np.searchsorted(f, np.asarray(budgets, np.float64) * match, side="right") - 1
    return np.where(idx >= 0, y[np.maximum(idx, 0)], np.nan)


def compute_frontier(curves: Sequence[dict], budgets: Sequence[float] | None = None, mode: str = "last",
                     match: float = 1.0) -> dict:
    """Lower envelope of loss-vs-FLOPs curves and the best patch size per budget.

    Args:
      curves: [{"name": str, "patch_size": float, "flops": (k,), "loss": (k,)}, ...] (cumulative train FLOPs).
      budgets: FLOP budgets; default: every eval's FLOPs over all runs, sorted.
      mode: "last" | "best" (see module docstring).
      match: relative tolerance of "within a budget" (`run_value_at`). Without it, where one run ends 0.03 % before
        another of the same budget, the envelope would briefly compare an annealed end point with a stable-phase eval.

    Returns:
      {"budgets": (m,), "envelope": (m,), "best_run": [name|None], "best_patch_size": [p|None],
       "values": {name: (m,)}, "switches": [[budget, p_before, p_after], ...], "mode": mode}
    """
    curves = [c for c in curves if len(c["flops"])]
    if not curves:
        raise ValueError("no run has eval rows with a 'flops' field; cannot build a compute frontier")
    if budgets is None:
        budgets = np.unique(np.concatenate([np.asarray(c["flops"], np.float64) for c in curves]))
    budgets = np.asarray(budgets, np.float64)
    vals = np.stack([run_value_at(np.asarray(c["flops"]), np.asarray(c["loss"]), budgets, mode, match) for c in curves])
    have = np.isfinite(vals).any(axis=0)
    arg = np.argmin(np.where(np.isfinite(vals), vals, np.inf), axis=0)
    envelope = np.where(have, vals[arg, np.arange(budgets.size)], np.nan)
    best_run = [curves[a]["name"] if h else None for a, h in zip(arg, have)]
    best_p = [float(curves[a]["patch_size"]) if h else None for a, h in zip(arg, have)]
    switches = []
    prev = None
    for b, pb in zip(budgets, best_p):
        if pb is not None and prev is not None and pb != prev:
            switches.append([float(b), prev, pb])
        if pb is not None:
            prev = pb
    return {"budgets": budgets, "envelope": envelope, "best_run": best_run, "best_patch_size": best_p,
            "values": {c["name"]: v for c, v in zip(curves, vals)}, "switches": switches, "mode": mode}
