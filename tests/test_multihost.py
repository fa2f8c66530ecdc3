"""Two processes on localhost (jax.distributed, CPU collectives, 2 virtual devices each) run the quickstart CLI and
match one process with 4 devices (same global batch); the checkpoint is written once per step and the 2-process run
resumes from it (started through pixeltok.distributed's PIXELTOK_* variables, as launch/README.md describes).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import portpicker
import pytest

from test_sharding import TINY, cli_env, losses

REPO = Path(__file__).resolve().parents[1]
# 4 steps; each process feeds its own half of every global batch of 16.
STEPS = [a if not a.startswith("--config.total_steps=") else "--config.total_steps=4" for a in TINY]
STEPS = [a for a in STEPS if not a.startswith(("--config.checkpoint_every_steps", "--config.eval_every_steps"))]
STEPS += ["--config.checkpoint_every_steps=100", "--config.eval_every_steps=4"]


def _start(workdir: Path, data_dir: Path, devices: int, extra=(), **env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pixeltok.main", *STEPS, *extra, f"--workdir={workdir}",
           f"--config.data_dir={data_dir}"]
    return subprocess.Popen(cmd, cwd=REPO, env=cli_env(devices, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _two_processes(workdir: Path, data_dir: Path, extra=()) -> list[subprocess.Popen]:
    port = portpicker.pick_unused_port()
    return [_start(workdir, data_dir, 2, extra, PIXELTOK_COORDINATOR=f"localhost:{port}",
                   PIXELTOK_NUM_PROCESSES="2", PIXELTOK_PROCESS_ID=str(i)) for i in range(2)]


def _wait(procs, what: str) -> None:
    for i, proc in enumerate(procs):
        try:
            out, _ = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"{what}: process {i} hung (a process ran a different program?)")
        assert proc.returncode == 0, f"{what}: process {i} exited {proc.returncode}:\n{out[-3000:]}"


@pytest.mark.slow
def test_two_processes_match_one_and_resume(tmp_path):
    data_dir = tmp_path / "data"
    # Prepare the data set with the single-process reference first (then no two processes race to build it).
    ref_proc = _start(tmp_path / "single", data_dir, 4)
    while not (tmp_path / "single" / "config.json").exists() and ref_proc.poll() is None:
        time.sleep(0.2)
    multi = tmp_path / "multi"
    # Phase 1: 2 processes stop (with a checkpoint) after step 2, while the reference runs all 4 steps.
    _wait(_two_processes(multi, data_dir, ["--config.stop_at_step=2"]) + [ref_proc], "phase 1")
    assert sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    # Phase 2: the same command resumes from step 2 and finishes.
    _wait(_two_processes(multi, data_dir), "phase 2 (resume)")

    ref, got = losses(tmp_path / "single"), losses(multi)      # also asserts: every step logged once
    assert set(ref) == {("train", s) for s in range(1, 5)} | {("eval", 4)}
    assert set(got) == set(ref)
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, err_msg=str(key))

    cfg = json.loads((multi / "config.json").read_text())
    assert cfg["num_processes"] == 2 and cfg["num_devices"] == 4 and cfg["mesh"] == {"data": 4, "fsdp": 1, "seq": 1}
    # One checkpoint directory per saved step, holding both processes' shards.
    steps = sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == ["2", "4"]
    state = multi / "checkpoints" / "4" / "state"
    assert (state / "commit_success.txt").exists() or (multi / "checkpoints" / "4" / "commit_success.txt").exists()
    assert {p.name for p in state.glob("ocdbt.process_*")} == {"ocdbt.process_0", "ocdbt.process_1"}
