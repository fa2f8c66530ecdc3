"""`python -m pixeltok.memory` end to end: the estimate table and the compiled train step's per-device memory."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY = ["--config=configs/quickstart.py", "--config.model.width=32", "--config.model.depth=1",
        "--config.batch_size=8", "--config.eval_batch_size=8"]


def _run(args, devices: int, tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIXELTOK_", "SLURM_", "TPU_"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "pixeltok.memory", *TINY, f"--config.data_dir={tmp_path}/data",
                           *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _compiled_mib(out: str) -> float:
    m = re.search(r"compiled per-device: ([0-9.]+) MiB \(temp ([0-9.]+) \+ arguments ([0-9.]+) MiB", out)
    assert m, out[-2000:]
    total, temp, args = map(float, m.groups())
    assert abs(total - temp - args) < 0.11
    return total


def test_memory_cli_measure_one_and_two_devices(tmp_path):
    """--measure compiles the real train step (it used to die with a NameError) on 1 device and under a
    2-way fsdp mesh; sharding the train state over fsdp lowers the per-device argument bytes."""
    one = _run(["--measure"], 1, tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "train state (params+grads+AdamW)" in one.stdout and "mesh {'data': 1" in one.stdout
    single = _compiled_mib(one.stdout)
    two = _run(["--measure", "--config.mesh.data=1", "--config.mesh.fsdp=2",
                "--config.sharding_rules=.*=fsdp(1)"], 2, tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "'fsdp': 2" in two.stdout
    args = lambda out: float(re.search(r"arguments ([0-9.]+) MiB", out).group(1))  # noqa: E731
    assert args(two.stdout) < 0.75 * args(one.stdout), (one.stdout, two.stdout)
    assert _compiled_mib(two.stdout) > 0 and single > 0


def test_memory_cli_bad_mesh_is_one_line(tmp_path):
    """A mesh that does not fit the devices is a one-line error, not a traceback."""
    bad = _run(["--measure", "--config.mesh.data=3"], 2, tmp_path)
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    assert "Traceback" not in bad.stderr and "pixeltok: error:" in bad.stderr and "3" in bad.stderr
