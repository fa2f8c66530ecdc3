"""`python -m pixeltok.scaling` on run workdirs (docs/architecture.md), bad input, --eval, and the notebooks."""

import filecmp
import json
import os
import shutil
import subprocess
import sys
import types

import nbformat
import numpy as np
import pytest
from PIL import Image

from pixeltok.scaling import __main__ as cli
from pixeltok.scaling.synthetic import write_synthetic_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "scaling_runs")
OUTPUTS = ("fit.json", "loss_vs_patch.png", "residuals.png", "frontier.png", "summary.md")


def final_eval_loss(run_dir):
    """Independent reader: the last eval row of metrics.jsonl."""
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl")) if line.strip()]
    return [r for r in rows if r["split"] == "eval"][-1]["loss"]


def test_committed_fixtures_match_generator(tmp_path):
    paths = write_synthetic_runs(str(tmp_path))
    assert len(paths) == 30
    for p in paths:
        name = os.path.basename(p)
        assert filecmp.cmp(os.path.join(p, "config.json"), os.path.join(FIXTURES, name, "config.json"),
                           shallow=False), name
        # metrics: the same rows, floats equal to ~1 ulp (libm's exp/pow differ in the last digit across builds)
        new, old = ([json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
                    for d in (p, os.path.join(FIXTURES, name)))
        assert len(new) == len(old), name
        for a, b in zip(new, old):
            assert a.keys() == b.keys(), name
            for k in a:
                if isinstance(a[k], float):
                    assert a[k] == pytest.approx(b[k], rel=1e-14, abs=0), (name, k)
                else:
                    assert a[k] == b[k], (name, k)


def test_cli_writes_all_outputs(tmp_path):
    """Real entry point on 2 model sizes x 5 patch sizes x 1 seed (+ a joint fit), as a subprocess."""
    laws = {"adventurer_tiny": {"E": 0.28, "A": 0.025, "alpha": 0.8},
            "adventurer_small": {"E": 0.25, "A": 0.020, "alpha": 0.8}}
    runs = write_synthetic_runs(str(tmp_path / "runs"), laws=laws, seeds=(0,), noise=1e-3)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pixeltok.scaling", "--runs", *runs[:5], str(tmp_path / "runs"),
                           "--out", str(out), "--n-bootstrap", "100", "--seed", "3"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for f in OUTPUTS:
        assert (out / f).stat().st_size > 0, f
    for f in OUTPUTS[1:4]:
        with Image.open(out / f) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
            assert np.asarray(im.convert("L")).std() > 5          # not a blank canvas
    doc = json.loads((out / "fit.json").read_text())
    assert doc["n_bootstrap"] == 100 and doc["seed"] == 3 and len(doc["groups"]) == 2
    for g in doc["groups"]:
        model = g["group"]["model"]
        mine = sorted((r for r in runs if os.path.basename(r).startswith(model + "_p")), key=lambda r: r)
        by_name = {os.path.basename(r): final_eval_loss(r) for r in mine}
        assert {d["run"]: d["loss"] for d in g["data"]} == by_name          # inputs recorded, unrounded
        assert sorted(g["inputs"]["losses"]) == sorted(by_name.values())
        assert abs(g["fit"]["alpha"] - 0.8) < 0.1
        assert g["ci"]["n_bootstrap"] == 100 and g["ci"]["method"] == "residual"
        assert g["heldout"]["p"] == 1 and abs(g["heldout"]["pred_minus_obs"]) < 0.01
        assert g["tokens"]["consistent"]
    assert len(doc["joint"]) == 1 and abs(doc["joint"][0]["alpha"] - 0.8) < 0.1
    assert len(doc["frontier"]) == 2
    summary = (out / "summary.md").read_text()
    assert "Held-out validation" in summary and "SYNTHETIC" in summary and "AICc" in summary


def run_cli(argv, capsys):
    rc = cli.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def copy_runs(tmp_path, names):
    dst = tmp_path / "runs"
    for n in names:
        shutil.copytree(os.path.join(FIXTURES, n), dst / n)
    return dst


VIT = [f"vit_tiny_p{p}_s0" for p in (14, 7, 4, 2, 1)]


@pytest.mark.parametrize("case", ["missing_dir", "empty_dir", "missing_metrics", "single_patch", "nan_loss"])
def test_cli_bad_input_one_line_error(tmp_path, capsys, case):
    out = str(tmp_path / "out")
    if case == "missing_dir":
        runs, expect = [str(tmp_path / "nope")], "does not exist"
    elif case == "empty_dir":
        (tmp_path / "empty").mkdir()
        runs, expect = [str(tmp_path / "empty")], "no config.json"
    elif case == "missing_metrics":
        d = copy_runs(tmp_path, VIT)
        os.remove(d / "vit_tiny_p4_s0" / "metrics.jsonl")
        runs, expect = [str(d)], "vit_tiny_p4_s0: missing metrics.jsonl"
    elif case == "single_patch":
        d = copy_runs(tmp_path, ["vit_tiny_p4_s0", "vit_tiny_p4_s1"])
        runs, expect = [str(d)], "vit_tiny_p4_s0"
    else:
        d = copy_runs(tmp_path, VIT)
        met = d / "vit_tiny_p2_s0" / "metrics.jsonl"
        rows = [json.loads(x) for x in met.read_text().splitlines()]
        rows[-1]["loss"] = float("nan")                 # json writes NaN, as a diverged run's logger would
        met.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        runs, expect = [str(d)], "vit_tiny_p2_s0"
    rc, _, err = run_cli(["--runs", *runs, "--out", out, "--n-bootstrap", "20"], capsys)
    assert rc != 0
    assert expect in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if case == "nan_loss":     # --skip-bad leaves the run out, fits the rest and names it in the summary
        rc, _, err = run_cli(["--runs", *runs, "--out", out, "--n-bootstrap", "20", "--skip-bad"], capsys)
        assert rc == 0, err
        summary = open(os.path.join(out, "summary.md")).read()
        assert "vit_tiny_p2_s0" in summary and "non-finite" in summary


def test_unfinished_run_is_left_out_and_named(tmp_path, capsys):
    # A partial sweep: one run's metrics stop before its total_steps (still training). Its last eval is not an
    # end-of-run value, so it must not be fitted; the fit equals the fit without it and the summary names it.
    d = copy_runs(tmp_path, VIT + ["vit_tiny_p7_s1"])
    met = d / "vit_tiny_p7_s1" / "metrics.jsonl"
    rows = [json.loads(x) for x in met.read_text().splitlines()]
    met.write_text("\n".join(json.dumps(r) for r in rows if r.get("step", 0) <= 500) + "\n")
    shutil.copytree(os.path.join(FIXTURES, "vit_tiny_p4_s1"), d / "vit_tiny_p4_s1")     # just started: no eval yet
    (d / "vit_tiny_p4_s1" / "metrics.jsonl").write_text(json.dumps({"step": 50, "split": "train", "loss": 2.0}) + "\n")
    out_a, out_b = str(tmp_path / "a"), str(tmp_path / "b")
    assert run_cli(["--runs", str(d), "--out", out_a, "--n-bootstrap", "20"], capsys)[0] == 0
    shutil.rmtree(d / "vit_tiny_p7_s1")
    shutil.rmtree(d / "vit_tiny_p4_s1")
    assert run_cli(["--runs", str(d), "--out", out_b, "--n-bootstrap", "20"], capsys)[0] == 0
    fit_a, fit_b = (json.load(open(os.path.join(o, "fit.json"))) for o in (out_a, out_b))
    assert [g["n_points"] for g in fit_a["groups"]] == [g["n_points"] for g in fit_b["groups"]]
    assert [g["fit"] for g in fit_a["groups"]] == [g["fit"] for g in fit_b["groups"]]
    summary = open(os.path.join(out_a, "summary.md")).read()
    assert "vit_tiny_p7_s1 is unfinished (last eval at step 500 of 1000)" in summary
    assert "vit_tiny_p4_s1 is unfinished (no eval yet)" in summary


def test_cli_eval_uses_checkpoint_results(tmp_path, capsys, monkeypatch):
    """--eval plumbing: the fitted values come from pixeltok.evaluate.evaluate_checkpoint (stubbed here; the real
    restore is covered by test_cli_eval_real_checkpoints), and runs need no metrics.jsonl."""
    d = copy_runs(tmp_path, VIT)
    os.remove(d / "vit_tiny_p7_s0" / "metrics.jsonl")
    calls = []

    def evaluate_checkpoint(workdir, step=None, config_overrides=None):
        p = json.load(open(os.path.join(workdir, "config.json")))["patch_size"]
        calls.append(os.path.basename(workdir))
        return {"loss": 0.5 + 0.01 * p ** 1.2, "accuracy": 0.9, "step": 1000}

    monkeypatch.setitem(sys.modules, "pixeltok.evaluate", types.SimpleNamespace(evaluate_checkpoint=evaluate_checkpoint))
    rc, _, err = run_cli(["--runs", str(d), "--out", str(tmp_path / "out"), "--eval", "--n-bootstrap", "50"], capsys)
    assert rc == 0, err
    assert sorted(calls) == sorted(VIT)
    g = json.load(open(tmp_path / "out" / "fit.json"))["groups"][0]
    assert all(r["loss_source"] == "checkpoint_eval" for r in g["data"])
    assert g["fit"]["alpha"] == pytest.approx(1.2, rel=1e-5) and g["fit"]["E"] == pytest.approx(0.5, rel=1e-5)


@pytest.mark.slow
def test_cli_eval_real_checkpoint(tmp_path):
    """A tiny real run (vit_tiny, p = 4 on 8x8 Fashion-MNIST, 2 steps) by `python -m pixeltok.main`; the CLI restores
    its checkpoint with --eval. One patch size cannot be fitted, so the CLI fails with one line, but fit.json keeps
    the run data: the re-evaluated loss at the final step equals the logged final eval loss."""
    run = tmp_path / "runs" / "p4"
    cmd = [sys.executable, "-m", "pixeltok.main", "--config=configs/quickstart.py:p4,res=8", f"--workdir={run}",
           f"--config.data_dir={tmp_path / 'data'}", "--config.model_name=vit_tiny", "--config.model.width=16",
           "--config.model.depth=1", "--config.total_steps=2", "--config.batch_size=16",
           "--config.eval_batch_size=16", "--config.eval_max_batches=2", "--config.eval_every_steps=2",
           "--config.checkpoint_every_steps=2", "--config.warmup_steps=1", "--config.log_every_steps=1",
           "--config.train_augment=none"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pixeltok.scaling", "--runs", str(run), "--out", str(out), "--eval",
                           "--n-bootstrap", "20"], capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert proc.returncode == 2 and "distinct patch sizes" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    doc = json.load(open(out / "fit.json"))
    row, = doc["groups"][0]["data"]
    assert row["loss_source"] == "checkpoint_eval" and row["step"] == 2
    assert row["loss"] == pytest.approx(final_eval_loss(run), rel=1e-4)
    assert not (out / "loss_vs_patch.png").exists()


@pytest.mark.parametrize("name", ["paper_fits", "fashion_mnist_sweep", "patch_frontier"])
def test_notebooks_execute(name):
    from nbclient import NotebookClient
    nb = nbformat.read(os.path.join(ROOT, "notebooks", f"{name}.ipynb"), as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "store notebooks without outputs"
    NotebookClient(nb, timeout=900, kernel_name="python3",   # per cell; generous: a loaded CI machine
                   resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
    text = ""
    for c in nb.cells:
        for o in c.get("outputs", []):
            assert o.output_type != "error", o
            text += o.get("text", "") + "".join(str(v) for k, v in o.get("data", {}).items() if k != "image/png")
    pngs = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert pngs >= 2
    if name == "paper_fits":
        assert "(c) Adv-B 224²" in text and "held-out loss lower than" in text
    elif name == "patch_frontier":
        assert "p*(C)" in text or "Compute-optimal patch size" in text
        if not os.path.isdir(os.path.join(ROOT, "reports", "patch_frontier", "runs")):
            assert "SYNTHETIC DATA" in text and "true p*" in text
    elif not os.path.isdir(os.path.join(ROOT, "reports", "fashion_mnist_patch", "runs")):
        assert "SYNTHETIC DATA" in text and "true alpha" in text
