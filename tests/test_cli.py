"""CLI tests through `python -m pixeltok.main` in subprocesses: every bad input gives one `pixeltok: error:` line,
exit code 2, no traceback and an untouched workdir; SIGTERM saves a checkpoint and the rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(tempfile.gettempdir(), "pixeltok_test_tfds")      # shared with test_train.py
ENV = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "pixeltok_test_jax_cache"),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
# Width 32, depth 1, 16 + 2 tokens: compiles and steps in seconds.
TINY = ["--config.model.width=32", "--config.model.depth=1", "--config.patch_size=8", "--config.batch_size=32",
        f"--config.data_dir={DATA_DIR}", "--config.eval_max_batches=1", "--config.eval_batch_size=64"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixeltok.main", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def snapshot(path: str) -> dict:
    """{relative path: (size, mtime_ns)} of everything under path (None if path does not exist)."""
    if not os.path.exists(path):
        return None
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.stat(p)
            out[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def workdir(tmp_path):
    """An existing workdir with a file in it (must be left exactly as it is)."""
    wd = tmp_path / "existing_run"
    wd.mkdir()
    (wd / "notes.txt").write_text("keep me\n")
    return str(wd)


def bad_cases(tmp: str) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments, a fragment the error line must contain)."""
    os.makedirs(os.path.join(tmp, "empty_folder"), exist_ok=True)
    q = "--config=configs/quickstart.py"
    return {
        "unknown_config_file": (["--config=configs/no_such_config.py"], "no_such_config.py"),
        "unknown_key": ([q, "--config.learning_rate=0.1"], "learning_rate"),
        "unknown_nested_key": ([q, "--config.model.widht=8"], "widht"),
        "bad_arg_token": (["--config=configs/quickstart.py:p4,resolution=64"], "resolution"),
        "bad_value_type": ([q, "--config.batch_size=many"], "many"),
        "patch_not_dividing": ([q, *TINY, "--config.patch_size=5"], "5"),
        "patch_not_dividing_arg": (["--config=configs/adventurer_base.py:p5,res=64"], "5"),
        "imagefolder_missing": ([q, *TINY, f"--config.dataset=imagefolder:{tmp}/missing_folder"], "missing_folder"),
        "imagefolder_empty": ([q, *TINY, f"--config.dataset=imagefolder:{tmp}/empty_folder"], "empty_folder"),
        "fashion_mnist_files_missing": ([q, *TINY, f"--config.data_dir={tmp}/fresh_tfds",
                                         f"--config.fashion_mnist_dir={tmp}/no_idx_files"], "no_idx_files"),
        "wrong_classes": ([q, *TINY, "--config.num_classes=7"], "7"),
        "wrong_channels": ([q, *TINY, "--config.num_channels=3"], "3"),
        "batch_not_divisible_by_devices": ([q, *TINY, "--config.batch_size=12", "--config.mesh.data=8"], "12"),
        "unknown_model": ([q, *TINY, "--config.model_name=resnet50"], "resnet50"),
    }


CASES = sorted(bad_cases(tempfile.gettempdir()))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_exit_2_workdir_untouched(case, workdir, tmp_path):
    args, fragment = bad_cases(str(tmp_path))[case]
    before = snapshot(workdir)
    fresh = str(tmp_path / "never_created")
    for wd in (workdir, fresh) if case in ("unknown_key", "wrong_classes") else (workdir,):
        proc = cli(*args, f"--workdir={wd}")
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("pixeltok: error: ") and fragment in lines[0], lines[0]
    assert snapshot(workdir) == before
    assert not os.path.exists(fresh)


def test_sigterm_saves_checkpoint_and_rerun_resumes(tmp_path):
    wd = str(tmp_path / "run")
    args = ["--config=configs/quickstart.py", *TINY, f"--workdir={wd}", "--config.total_steps=500",
            "--config.log_every_steps=1", "--config.checkpoint_every_steps=1000", "--config.eval_every_steps=1000"]
    proc = subprocess.Popen([sys.executable, "-m", "pixeltok.main", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(wd, "metrics.jsonl")
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(metrics) and any(json.loads(ln)["step"] >= 3 for ln in open(metrics) if ln.strip()):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    steps = sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit())
    assert steps and 3 <= steps[-1] < 500, steps
    k = steps[-1]
    logged = [json.loads(ln)["step"] for ln in open(metrics) if ln.strip()]
    assert max(logged) <= k
    # Rerun the same command (stopping 2 steps later to keep the test short): resumes from k, not from scratch.
    proc2 = cli(*args, f"--config.stop_at_step={k + 2}")
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert f"resumed from checkpoints/{k}" in proc2.stdout
    train_steps = [json.loads(ln)["step"] for ln in open(metrics) if ln.strip() and '"train"' in ln]
    assert train_steps == list(range(1, k + 3))


def test_relative_workdir_checkpoints_and_resumes(tmp_path):
    """`make run` passes a relative workdir; Orbax's async commit needs absolute paths, so the trainer must resolve
    it (a relative path once crashed the first save). Run from tmp_path with a relative workdir, then resume."""
    rel = "runs/rel_wd"
    cmd = [sys.executable, "-m", "pixeltok.main", f"--config={ROOT}/configs/quickstart.py", f"--workdir={rel}",
           *TINY, "--config.total_steps=4", "--config.checkpoint_every_steps=2", "--config.eval_every_steps=4"]
    env = dict(ENV, PYTHONPATH=ROOT)
    first = subprocess.run([*cmd, "--config.stop_at_step=2"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "Traceback" not in first.stderr
    ckpts = tmp_path / rel / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["2"]          # committed, no *.orbax-checkpoint-tmp left
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert sorted(p.name for p in ckpts.iterdir()) == ["2", "4"]
    steps = [json.loads(line)["step"] for line in (tmp_path / rel / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "eval"]
    assert steps == [4]
