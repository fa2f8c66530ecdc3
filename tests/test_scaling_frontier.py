"""Compute-frontier analysis (pixeltok.scaling.compute, `python -m pixeltok.scaling --frontier`) on synthetic runs
from a known joint law whose compute-optimal patch size moves from large to small patches as compute grows."""

import json
import os

import numpy as np
import pytest

from pixeltok.scaling import __main__ as cli
from pixeltok.scaling import analysis, compute, io, synthetic

BUDGETS = tuple(1e12 * 2.0 ** k for k in range(6))          # 32x in compute


def true_p_star(C, p_range=(1.0, 8.0)):
    """Independent reference: dense-grid argmin of the generating law (frontier_law) at each budget."""
    grid = np.geomspace(*p_range, 200001)
    return grid[np.argmin(synthetic.frontier_law(grid[None, :], np.asarray(C)[:, None]), axis=1)]


def _lineages(tmp_path, **kw):
    synthetic.write_synthetic_frontier_runs(str(tmp_path), **kw)
    runs, _ = analysis.load_runs([str(tmp_path)])
    return runs, compute.build_lineages(runs)


def test_interpolate_loglog_hand_values():
    # log v linear in log f between (1, 1) and (4, 0.25): v = 1/f, so v(2) = 0.5; outside the range: NaN
    out = compute.interpolate_loglog([4.0, 1.0], [0.25, 1.0], [0.5, 1.0, 2.0, 4.0, 8.0])
    np.testing.assert_allclose(out[1:4], [1.0, 0.5, 0.25], rtol=1e-12)
    assert np.isnan(out[0]) and np.isnan(out[4])
    # Within 1 % of an end point counts as that point (whole-step rounding of an iso-FLOP run); 2 % does not.
    near = compute.interpolate_loglog([4.0, 1.0], [0.25, 1.0], [0.995, 4.02, 0.98, 4.08])
    np.testing.assert_allclose(near[:2], [1.0, 0.25], rtol=1e-12)
    assert np.isnan(near[2]) and np.isnan(near[3])


def test_lineages_annealed_points(tmp_path):
    runs, lns = _lineages(tmp_path, patch_sizes=(4, 2, 1), seeds=(0,), noise=0.0)
    assert len(lns) == 3 and all(ln.source == "annealed" for ln in lns)
    ln = next(ln for ln in lns if ln.patch_size == 2)
    np.testing.assert_allclose(ln.flops, BUDGETS)          # one final eval per run (branch or long run)
    np.testing.assert_allclose(ln.values, synthetic.frontier_law(2.0, np.array(BUDGETS)), rtol=1e-12)
    # the per-patch fit of a frontier sweep takes each lineage's largest-budget run
    longest = analysis.longest_runs(runs)
    assert sorted(r.name for r in longest) == sorted(r.name for r in runs if not r.config["cooldown_from"])


def test_noise_free_recovery_of_law_and_p_star(tmp_path):
    _, lns = _lineages(tmp_path, seeds=(0,), noise=0.0)
    law = compute.fit_joint_compute(lns, "images", n_bootstrap=0)
    truth = synthetic.FRONTIER_LAW
    for k in ("E", "A", "alpha", "B", "beta"):
        assert law.params()[k] == pytest.approx(truth[k], rel=1e-6), k
    C = np.array(BUDGETS)
    np.testing.assert_allclose(law.p_star(C, (1.0, 8.0)), true_p_star(C), rtol=1e-3)


def test_noisy_recovery_p_star_within_ci_and_moves_to_small_patches(tmp_path):
    _, lns = _lineages(tmp_path, seeds=(0, 1, 2, 3), noise=2e-3, rng_seed=1)
    law = compute.fit_joint_compute(lns, "images", n_bootstrap=100, seed=0)
    assert law.boot_method == "stratified" and law.samples.shape[0] >= 95
    C = np.array([BUDGETS[0], BUDGETS[-1]])
    est = law.p_star(C, (1.0, 8.0))
    lo, hi = law.interval(lambda th: law.p_star(C, (1.0, 8.0), th))
    truth = true_p_star(C)
    assert truth[0] > 4.5 and truth[1] < 1.5                     # the law's optimum really moves
    assert np.all(lo <= truth) and np.all(truth <= hi), (est, lo, hi, truth)
    assert est[1] < est[0] / 2 and hi[1] < lo[0]                 # direction, resolved by the intervals


def test_analyze_compute_picks_interaction_law_and_writes_json(tmp_path, monkeypatch):
    runs, _ = _lineages(tmp_path / "runs", seeds=(0, 1), noise=2e-3)
    res = compute.analyze_compute(runs, metric="loss", n_bootstrap=20, per_budget_bootstrap=20)
    (label, g), = res["groups"].items()
    assert g["winner"] in ("images", "gamma")                    # the additive law has no interaction
    ho = g["heldout"]
    assert ho["flops"] == pytest.approx(BUDGETS[-1]) and ho["fit_max_flops"] < BUDGETS[-1]
    add, win = ho["families"]["additive"], ho["families"][g["winner"]]
    assert win["rmse_log"] < add["rmse_log"] / 5
    assert [r["patch_size"] for r in win["rows"]] == [8.0, 4.0, 2.0, 1.0]
    co = g["compute_optimal"]
    assert [c["flops"] for c in co] == sorted(c["flops"] for c in co) and len(co) == len(BUDGETS)
    assert co[0]["patch_size"] > 3.5 and co[-1]["patch_size"] < 2.0
    assert all(c["ci"][0] <= c["patch_size"] <= c["ci"][1] for c in co)
    # per-budget rows: the measured best patch size moves from 4 to 2 (the grid values nearest the true p*)
    assert g["per_budget"][0]["observed_best_patch_size"] == 4.0
    assert g["per_budget"][-1]["observed_best_patch_size"] == 2.0


def test_cli_frontier_end_to_end(tmp_path, capsys):
    synthetic.write_synthetic_frontier_runs(str(tmp_path / "runs"), patch_sizes=(8, 4, 2, 1), seeds=(0, 1),
                                            budgets=BUDGETS[::2] + (BUDGETS[-1],), noise=2e-3)
    out = tmp_path / "out"
    rc = cli.main(["--runs", str(tmp_path / "runs"), "--out", str(out), "--frontier", "--n-bootstrap", "20",
                   "--frontier-bootstrap", "10"])
    assert rc == 0, capsys.readouterr().err
    doc = json.load(open(out / "fit.json"))
    (label, co), = doc["compute_optimal"].items()
    assert [set(c) >= {"flops", "patch_size", "ci"} for c in co] == [True] * len(co)
    assert [c["flops"] for c in co] == sorted(c["flops"] for c in co)
    assert doc["heldout_budget"][label]["winner"] in ("images", "gamma", "additive")
    assert set(doc["compute_frontier"]) == {"loss", "error"}       # error rate fitted as well as loss
    # the classic per-patch fit used one (largest-budget) run per (p, seed): 8 runs
    assert len(doc["groups"][0]["data"]) == 8
    for f in ("fit.json", "frontier.png", "summary.md", "loss_vs_patch.png"):
        assert os.path.getsize(out / f) > 0
    text = open(out / "summary.md").read()
    assert "# Compute frontier" in text and "p* moved toward smaller patches" in text


def test_error_metric_is_task_aware(tmp_path):
    d = tmp_path / "seg_p4_s0"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"task": "segmentation", "patch_size": 4, "model_name": "vit_tiny",
                                               "image_size": 32}))
    (d / "metrics.jsonl").write_text(json.dumps({"split": "eval", "step": 10, "flops": 1e9, "loss": 0.9,
                                                 "miou": 0.30, "aacc": 0.8, "best_miou": 0.30}) + "\n")
    run = io.load_run(str(d))
    assert run.quality_metric == "miou"
    assert run.value("error") == (pytest.approx(0.70), 10)
    assert run.curve("error") == ([1e9], [pytest.approx(0.70)])
    # a task the analyzer does not know: inferred from the eval rows' best_<metric> field
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "task": "my_task"}))
    assert io.load_run(str(d)).quality_metric == "miou"


def test_cli_frontier_without_flops_is_one_line_error(tmp_path, capsys):
    d = tmp_path / "r"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"patch_size": 4, "model_name": "vit_tiny", "image_size": 16}))
    (d / "metrics.jsonl").write_text(json.dumps({"split": "eval", "step": 10, "loss": 0.9, "accuracy": 0.7}) + "\n")
    assert cli.main(["--runs", str(d), "--out", str(tmp_path / "o"), "--frontier"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pixeltok.scaling: error: compute-frontier analysis") and "'flops'" \
        in err[0]


def test_unfinished_branch_is_left_out(tmp_path):
    synthetic.write_synthetic_frontier_runs(str(tmp_path), patch_sizes=(4, 2, 1), seeds=(0,), noise=0.0)
    runs, _ = analysis.load_runs([str(tmp_path)])
    branch = next(r for r in runs if r.patch_size == 2 and r.config["cooldown_from"])
    met = os.path.join(branch.path, "metrics.jsonl")
    rows = open(met).read().splitlines()
    open(met, "w").write("\n".join(rows[:-1]) + "\n")        # interrupted before its final (annealed) eval
    # Loading leaves it out and says so; given such a run anyway, the lineage builder also skips its point.
    runs, warnings = analysis.load_runs([str(tmp_path)])
    assert branch.name not in {r.name for r in runs}
    assert any(branch.name in w and "unfinished" in w for w in warnings)
    for raw in (runs + [io.load_run(branch.path)], runs):
        unfinished = []
        lns = compute.build_lineages(raw, "loss", unfinished)
        assert unfinished == ([branch.name] if len(raw) > len(runs) else [])
        assert next(ln for ln in lns if ln.patch_size == 2).flops.size == len(BUDGETS) - 1
