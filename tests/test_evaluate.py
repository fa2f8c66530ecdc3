"""`python -m pixeltok.evaluate`: re-evaluates a run's checkpoint through the CLI and reproduces the metrics the run
logged; another image size resizes the position embedding; bad input is one line with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from pixeltok import config_utils
from pixeltok import metrics as metrics_lib
from pixeltok import train
from test_cli import DATA_DIR, ENV, ROOT
from test_train import tiny_config


def evaluate_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixeltok.evaluate", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_evaluate_cli_reproduces_final_eval(tmp_path):
    workdir = str(tmp_path / "run")
    cfg = tiny_config(total_steps=4, checkpoint_every_steps=4, eval_max_batches=2)
    result = train.train_and_evaluate(cfg, workdir)
    proc = evaluate_cli(f"--workdir={workdir}", "--config.eval_max_batches=2")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["step"] == 4 and out["split"] == "test"
    np.testing.assert_allclose(out["accuracy"], result["accuracy"], rtol=1e-6)
    np.testing.assert_allclose(out["loss"], result["loss"], rtol=1e-5)
    written = json.load(open(os.path.join(workdir, metrics_lib.EVAL_DIR, "evaluate_4_test.json")))
    assert written["accuracy"] == out["accuracy"]
    # Another resolution: 32 -> 16 px at patch 8 resizes the 4x4 position grid to 2x2 and evaluates.
    proc = evaluate_cli(f"--workdir={workdir}", "--step=best", "--config.image_size=16",
                        "--config.eval_max_batches=1")
    assert proc.returncode == 0, proc.stderr
    assert "resized pos_embed" in proc.stdout
    assert 0.0 <= json.loads(proc.stdout.strip().splitlines()[-1])["accuracy"] <= 1.0


def test_evaluate_cli_bad_input_one_line(tmp_path):
    """Each bad input: exit 2, one `pixeltok: error:` line naming the value, nothing written to the workdir."""
    empty, run = tmp_path / "empty", tmp_path / "run"
    empty.mkdir()
    run.mkdir()
    metrics_lib.write_config_json(str(run), config_utils.base_config(), {})
    cases = [([f"--workdir={empty}"], "has no config.json"),
             ([], "--workdir is required"),
             ([f"--workdir={run}", "--step=last"], "--step='last' is not valid"),
             ([f"--workdir={run}", "--config.nope=1"], "unknown config key 'nope'"),
             ([f"--workdir={run}", "--config.image_size=big"], "image_size='big' is not a valid int"),
             ([f"--workdir={run}", f"--config.data_dir={DATA_DIR}"], "no committed checkpoint")]
    before = sorted(os.listdir(run))
    for args, needle in cases:
        proc = evaluate_cli(*args)
        # TFDS may draw progress bars while it prepares the data set on first use; the error is one line, the last.
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip() and "examples/s" not in ln
                 and "splits/s" not in ln and "Generating" not in ln]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert lines[0].startswith("pixeltok: error:") and needle in lines[0], (args, lines[0])
    assert sorted(os.listdir(run)) == before
