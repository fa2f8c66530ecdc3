"""launch/*: exact dry-run commands of the three launchers; the sweep's skipping, failure handling and parallelism.

Sweep execution uses a fake interpreter (a small script standing in for `python -m pixeltok.main`) so no training
runs here; the real CLI is exercised by test_sharding.py / test_multihost.py.
"""

import importlib.util
import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"launch_{name}", REPO / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module         # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


sweep, tpu_pod, slurm = _load("sweep"), _load("tpu_pod"), _load("slurm")


# ----------------------------------------------------------------------------------------------------------- sweep
def test_sweep_dry_run_grid_exact(tmp_path, capsys):
    (tmp_path / "vit_tiny_p8_s1").mkdir()
    (tmp_path / "vit_tiny_p8_s1" / "DONE").write_text("{}")           # finished: skipped
    (tmp_path / "vit_tiny_p16_s0").mkdir()                              # started but unfinished: rerun (resume)
    rc = sweep.main(["--root", str(tmp_path), "--models", "vit_tiny,adventurer_tiny", "--patches", "16,8",
                     "--seeds", "0,1", "--python", "py", "--dry-run", "--config.total_steps=30"])
    out = capsys.readouterr()
    r = str(tmp_path)
    expected = [
        f"py -m pixeltok.main --config=configs/quickstart.py --workdir={r}/{m}_p{p}_s{s} --config.model_name={m} "
        f"--config.patch_size={p} --config.seed={s} --config.total_steps=30"
        for m in ("vit_tiny", "adventurer_tiny") for p in (16, 8) for s in (0, 1) if (m, p, s) != ("vit_tiny", 8, 1)]
    assert rc == 0 and out.out.splitlines() == expected
    assert "skip vit_tiny_p8_s1" in out.err
    assert not (tmp_path / "adventurer_tiny_p8_s0").exists()            # dry run creates nothing


def test_sweep_module_and_cli_subprocess(tmp_path):
    module = tmp_path / "mysweep.py"
    module.write_text(textwrap.dedent("""
        def get_sweep():
            return [{"name": "a", "config": "configs/quickstart.py:p4", "overrides": {"model_name": "vit_tiny"}},
                    {"name": "b", "config": "configs/x.py", "overrides": {"mesh.data": 2, "remat": ""}}]
    """))
    out = subprocess.run([sys.executable, str(REPO / "launch" / "sweep.py"), "--sweep", str(module), "--root", "R",
                          "--python", "py", "--dry-run", "--only", "^b$"], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["py -m pixeltok.main --config=configs/x.py --workdir=R/b --config.mesh.data=2 "
                                       "--config.remat="]
    bad = subprocess.run([sys.executable, str(REPO / "launch" / "sweep.py"), "--root", "R", "--models", "x",
                          "--patches", "4", "--bogus", "--dry-run"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--bogus" in bad.stderr


FAKE_MAIN = """#!{python}
# Stands in for `python -m pixeltok.main`: records its interval, fails for seed 1 at patch 8.
import json, sys, time
args = dict(a.split("=", 1) for a in sys.argv[3:] if "=" in a)
t0 = time.time()
time.sleep(0.4)
with open(args["--workdir"] + "/fake.json", "a") as f:
    f.write(json.dumps({{"t0": t0, "t1": time.time(), "argv": sys.argv[1:]}}) + "\\n")
sys.exit(3 if (args["--config.seed"], args["--config.patch_size"]) == ("1", "8") else 0)
"""


FAKE_SLOW_MAIN = """#!{python}
# A run that trains until SIGTERM, then "saves a checkpoint" (a marker, written slowly) and exits 128 + 15.
import signal, sys, time
args = dict(a.split("=", 1) for a in sys.argv[3:] if "=" in a)
def stop(signum, frame):
    time.sleep(0.5)
    open(args["--workdir"] + "/saved", "w").write("checkpoint")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
open(args["--workdir"] + "/started", "w").write("")
time.sleep(60)
"""


def test_interrupted_sweep_waits_for_checkpoints_and_says_one_line(tmp_path):
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE_SLOW_MAIN.format(python=sys.executable))
    fake.chmod(0o755)
    root = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, str(REPO / "launch" / "sweep.py"), "--root", str(root), "--models", "m",
                             "--patches", "16,8", "--python", str(fake), "--parallel", "2"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while len(list(root.glob("*/started"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert len(list(root.glob("*/started"))) == 2
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert sorted(p.parent.name for p in root.glob("*/saved")) == ["m_p16_s0", "m_p8_s0"]   # waited for both
    assert not list(root.glob("*/DONE"))
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "rerun the same command to continue" in last, err


@pytest.mark.parametrize("parallel", [1, 3])
def test_sweep_runs_skips_and_reports_failures(tmp_path, capsys, parallel):
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE_MAIN.format(python=sys.executable))
    fake.chmod(0o755)
    root = tmp_path / "runs"
    args = ["--root", str(root), "--models", "m", "--patches", "16,8", "--seeds", "0,1", "--python", str(fake),
            "--parallel", str(parallel)]
    assert sweep.main(args) == 1                                        # one failure -> exit status 1
    err = capsys.readouterr().err
    assert "1 of 4 runs failed: m_p8_s1 (exit 3)" in err
    done = sorted(p.parent.name for p in root.glob("*/DONE"))
    assert done == ["m_p16_s0", "m_p16_s1", "m_p8_s0"]                 # the sweep went on after the failure
    assert json.loads((root / "m_p16_s0" / "DONE").read_text())["command"][0] == str(fake)
    intervals = sorted((json.loads(p.read_text().splitlines()[0])["t0"], json.loads(p.read_text().splitlines()[0])
                        ["t1"]) for p in root.glob("*/fake.json"))
    overlaps = sum(b0 < a1 for (_, a1), (b0, _) in zip(intervals, intervals[1:]))
    assert (overlaps >= 2) if parallel == 3 else (overlaps == 0)
    # Second sweep: only the failed run runs again.
    assert sweep.main(args) == 1
    counts = {p.parent.name: len(p.read_text().splitlines()) for p in root.glob("*/fake.json")}
    assert counts == {"m_p16_s0": 1, "m_p16_s1": 1, "m_p8_s0": 1, "m_p8_s1": 2}
    assert "$ " in (root / "m_p8_s1" / "sweep.log").read_text()


def test_wsd_family_expansion_and_decay_start_matches_optim():
    from pixeltok import optim
    runs = sweep.wsd_family("adv_p4_s0", "configs/quickstart.py:p4", {"seed": 0}, [125, 1000, 250, 500],
                            decay_fraction=0.2)
    assert [r.name for r in runs] == ["adv_p4_s0_n1000", "adv_p4_s0_n125", "adv_p4_s0_n250", "adv_p4_s0_n500"]
    long = runs[0]
    # hand values: S(n) = n - round(0.2 n): 125 -> 100, 250 -> 200, 500 -> 400
    assert long.after is None and long.overrides == {"seed": 0, "schedule": "wsd", "wsd_decay_fraction": 0.2,
                                                     "total_steps": 1000, "checkpoint_steps": "100,200,400"}
    assert [r.after for r in runs[1:]] == [("adv_p4_s0_n1000", 100), ("adv_p4_s0_n1000", 200),
                                          ("adv_p4_s0_n1000", 400)]
    assert [r.overrides["total_steps"] for r in runs[1:]] == [125, 250, 500]
    assert all("checkpoint_steps" not in r.overrides for r in runs[1:])
    for n in range(1, 3000, 7):
        for f in (0.1, 0.2, 0.25, 0.5):
            assert sweep.wsd_decay_start(n, f) == optim.wsd_decay_start(n, f)
    with pytest.raises(ValueError, match="distinct positive"):
        sweep.wsd_family("x", "c.py", {}, [100, 100])
    with pytest.raises(ValueError, match="no stable-phase branch step"):
        sweep.wsd_family("x", "c.py", {}, [1, 100])


def test_wsd_sweep_module_dry_run_exact(tmp_path, capsys):
    module = tmp_path / "wsdsweep.py"
    module.write_text(textwrap.dedent("""
        def get_sweep():
            return [{"name": "v", "config": "c.py", "overrides": {"lr": 0.001}, "wsd_budgets": [40, 20],
                     "wsd_decay_fraction": 0.25}]
    """))
    assert sweep.main(["--sweep", str(module), "--root", "R", "--python", "py", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "py -m pixeltok.main --config=c.py --workdir=R/v_n40 --config.lr=0.001 --config.schedule=wsd "
        "--config.wsd_decay_fraction=0.25 --config.total_steps=40 --config.checkpoint_steps=15",
        "py -m pixeltok.main --config=c.py --workdir=R/v_n20 --config.lr=0.001 --config.schedule=wsd "
        "--config.wsd_decay_fraction=0.25 --config.total_steps=20 --config.cooldown_from=R/v_n40:15"]


FAKE_WSD_MAIN = """#!{python}
# Stands in for `python -m pixeltok.main`: a long run commits its checkpoint_steps one by one; a branch checks
# that its parent's step exists when it starts.
import json, os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[3:] if "=" in a)
wd = args["--workdir"]
t0 = time.time()
src = args.get("--config.cooldown_from")
if src:
    parent, step = src.rsplit(":", 1)
    if not os.path.isdir(os.path.join(parent, "checkpoints", step)):
        sys.exit(5)
for s in [int(x) for x in args.get("--config.checkpoint_steps", "").split(",") if x]:
    time.sleep(0.3)
    os.makedirs(os.path.join(wd, "checkpoints", str(s)))
time.sleep(0.3)
with open(os.path.join(wd, "fake.json"), "a") as f:
    f.write(json.dumps({{"t0": t0, "t1": time.time()}}) + "\\n")
"""


@pytest.mark.parametrize("parallel", [1, 2])
def test_wsd_branches_wait_for_parent_step(tmp_path, capsys, parallel):
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE_WSD_MAIN.format(python=sys.executable))
    fake.chmod(0o755)
    root = tmp_path / "runs"
    runs = sweep.wsd_family("a", "c.py", {}, [100, 200, 400]) + sweep.wsd_family("b", "c.py", {}, [50, 100])
    assert sweep.run_all(runs, root, python=str(fake), parallel=parallel, poll_s=0.02) == []
    assert sorted(p.parent.name for p in root.glob("*/DONE")) == ["a_n100", "a_n200", "a_n400", "b_n100", "b_n50"]
    t = {p.parent.name: json.loads(p.read_text()) for p in root.glob("*/fake.json")}
    if parallel == 1:           # list order: a's long run, its branches, then b's family
        order = sorted(t, key=lambda n: t[n]["t0"])
        assert order == ["a_n400", "a_n100", "a_n200", "b_n100", "b_n50"]
    err = capsys.readouterr().err
    if parallel == 2:           # a branch starts while its parent is still running (launcher's own log order)
        assert err.index("start a_n100") < err.index("done a_n400")
    # rerun: everything finished, nothing runs
    assert sweep.run_all(runs, root, python=str(fake), parallel=parallel, poll_s=0.02) == []
    assert "skip a_n100" in capsys.readouterr().err and "FAILED" not in err


def test_wsd_branch_without_parent_checkpoint_fails(tmp_path, capsys):
    fake = tmp_path / "fakepy"
    fake.write_text(FAKE_WSD_MAIN.format(python=sys.executable))
    fake.chmod(0o755)
    root = tmp_path / "runs"
    (root / "a_n400").mkdir(parents=True)
    (root / "a_n400" / "DONE").write_text("{}")             # finished, but its checkpoint 80 was not kept
    (root / "a_n400" / "checkpoints" / "160").mkdir(parents=True)
    runs = sweep.wsd_family("a", "c.py", {}, [100, 200, 400])
    failures = sweep.run_all(runs, root, python=str(fake), poll_s=0.02)
    assert failures == [("a_n100", "no parent checkpoint")]
    assert (root / "a_n200" / "DONE").is_file() and not (root / "a_n100").exists()
    assert f"parent a_n400 has no checkpoint at step 80 ({root}/a_n400/checkpoints)" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------- tpu pod
def test_tpu_pod_dry_run_exact(capsys):
    assert tpu_pod.main(["--name", "pod", "--zone", "us-central2-b", "--dry-run", "install", "--repo",
                         "https://example.org/pixeltok.git", "--ref", "v1"]) == 0
    install = capsys.readouterr().out.splitlines()
    assert install == [
        "gcloud compute tpus tpu-vm ssh pod --zone us-central2-b --worker=all --command '(test -d ~/pixeltok/.git || "
        "git clone https://example.org/pixeltok.git ~/pixeltok) && cd ~/pixeltok && git fetch -q origin && git "
        "checkout -q v1 && (git pull -q --ff-only origin v1 || true) && cd ~/pixeltok && python3 -m venv .venv && "
        ".venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e . '\"'\"'jax[tpu]>=0.10.2,<0.11'\"'\"''"]
    assert tpu_pod.main(["--name", "pod", "--zone", "z", "--project", "prj", "--dry-run", "run", "--workdir",
                         "gs://b/advb_p1", "--", "--config=configs/adventurer_base.py:p1",
                         "--config.batch_size=1024"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "gcloud compute tpus tpu-vm ssh pod --zone z --project prj --worker=all --command 'cd ~/pixeltok && "
        ".venv/bin/python -m pixeltok.main --config=configs/adventurer_base.py:p1 --config.batch_size=1024 "
        "--workdir=gs://b/advb_p1'"]
    assert tpu_pod.main(["--name", "pod", "--zone", "z", "--dry-run", "install", "--copy", "--src", "/src"]) == 0
    copy = capsys.readouterr().out.splitlines()
    assert copy[0] == ("tar czf /tmp/pixeltok_src.tar.gz -C /src --exclude=./.venv --exclude=./.git --exclude=./runs "
                       "--exclude=./data .")
    assert copy[1] == ("gcloud compute tpus tpu-vm scp /tmp/pixeltok_src.tar.gz pod:/tmp/pixeltok_src.tar.gz "
                       "--zone z --worker=all")
    assert copy[2].startswith("gcloud compute tpus tpu-vm ssh pod --zone z --worker=all --command 'mkdir -p "
                              "~/pixeltok && tar xzf /tmp/pixeltok_src.tar.gz -C ~/pixeltok && cd ~/pixeltok && ")


def test_tpu_pod_detach_and_errors(capsys):
    tpu_pod.main(["--name", "p", "--zone", "z", "--dry-run", "run", "--workdir", "gs://b/r", "--detach", "--env",
                  "A=1", "--", "--config=c.py"])
    assert capsys.readouterr().out.strip().endswith(
        "--command 'cd ~/pixeltok && export A=1 && nohup .venv/bin/python -m pixeltok.main --config=c.py "
        "--workdir=gs://b/r > ~/pixeltok_run.log 2>&1 &'")
    with pytest.raises(SystemExit):
        tpu_pod.main(["--name", "p", "--zone", "z", "--dry-run", "install"])        # neither --repo nor --copy
    with pytest.raises(SystemExit):
        tpu_pod.main(["--name", "p", "--zone", "z", "--dry-run", "run", "--workdir", "w"])   # no --config


# ----------------------------------------------------------------------------------------------------------- slurm
def test_slurm_dry_run_exact(capsys):
    assert slurm.main(["--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--repo", "/repo", "--workdir",
                       "runs/x", "--python", ".venv/bin/python", "--dry-run", "--",
                       "--config=configs/adventurer_base.py:p1", "--config.batch_size=1024"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "#!/bin/bash",
        "#SBATCH --job-name=pixeltok",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --time=24:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --output=/repo/runs/x/slurm-%j.out",
        "set -euo pipefail",
        "cd /repo",
        'export PIXELTOK_COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):12355"',
        "srun --kill-on-bad-exit=1 .venv/bin/python -m pixeltok.main --config=configs/adventurer_base.py:p1 "
        "--config.batch_size=1024 --workdir=/repo/runs/x",
    ]
    text = slurm.sbatch_script(workdir="/w", main_args=["--config=c.py"], nodes=3, gpus_per_node=8, per="node")
    assert "#SBATCH --ntasks-per-node=1\n#SBATCH --gpus-per-node=8\n" in text
    with pytest.raises(ValueError, match="nodes=0"):
        slurm.sbatch_script(workdir="/w", main_args=[], nodes=0)


def test_slurm_writes_script_without_submitting(tmp_path, capsys):
    assert slurm.main(["--workdir", str(tmp_path / "w"), "--", "--config=c.py"]) == 0
    script = tmp_path / "w" / "sbatch.sh"
    assert capsys.readouterr().out.strip() == f"sbatch {script}"
    assert script.read_text().endswith(f"--config=c.py --workdir={tmp_path / 'w'}\n")


def test_slurm_env_reaches_maybe_initialize():
    """The env an srun task sees under the generated script selects explicit jax.distributed initialisation."""
    from pixeltok import distributed
    env = {"PIXELTOK_COORDINATOR": "node001:12355", "SLURM_NTASKS": "8", "SLURM_PROCID": "5"}
    assert distributed.launch_mode(env) == ("explicit", {"coordinator_address": "node001:12355",
                                                         "num_processes": 8, "process_id": 5})


def test_fashion_mnist_patch_sweep_grid():
    runs = sweep.load_sweep(str(REPO / "configs" / "sweeps" / "fashion_mnist_patch.py"))
    assert len(runs) == 20 and len({r.name for r in runs}) == 20
    assert {r.name for r in runs} == {f"{a}_p{p}_s{s}" for a in ("adventurer", "vit") for p in (16, 8, 4, 2, 1)
                                      for s in (0, 1)}
    recipe_keys = ("model.width", "model.depth", "batch_size", "total_steps", "warmup_steps", "lr")
    recipes = {tuple(r.overrides[k] for k in recipe_keys) for r in runs}
    assert len(recipes) == 1                                # the same recipe and steps for every patch size
    for r in runs:
        p = int(r.name.split("_p")[1].split("_")[0])
        assert r.config == f"configs/quickstart.py:p{p},res=32"
        assert r.overrides["model_name"] == ("adventurer_tiny" if r.name.startswith("adventurer") else "vit_tiny")


def test_patch_frontier_sweep_design():
    from pixeltok import flops
    module = _load_sweep_module("patch_frontier")
    for (model, p), f in module.FLOPS_PER_IMAGE.items():       # the fixed table is pixeltok.flops' number
        kw = {"width": 64, "depth": 4, **({"chunk_size": module.ADVENTURER_CHUNK} if model.startswith("adventurer") else {})}
        assert flops.train_flops_per_image(model, p, module.RES, **kw) == pytest.approx(f, rel=1e-12), (model, p)
    runs = sweep.load_sweep(str(REPO / "configs" / "sweeps" / "patch_frontier.py"))
    longs = [r for r in runs if r.after is None]
    assert len(longs) == 2 * 4 * 2                                  # (arch, p, seed) lineages
    assert {(r.overrides["model_name"], r.config, r.overrides["seed"]) for r in longs} == {
        (m, f"configs/quickstart.py:p{p},res=16", s) for m in ("adventurer_tiny", "vit_tiny") for p in (8, 4, 2, 1)
        for s in (0, 1)}
    keys = ("model.width", "model.depth", "batch_size", "warmup_steps", "lr", "wd", "train_augment", "hflip",
            "crop_ratio", "schedule", "wsd_decay_fraction", "wsd_decay_shape", "eval_schedule", "eval_max_batches")
    assert len({tuple(r.overrides[k] for k in keys) for r in runs}) == 1       # one recipe at every point
    names = {r.name for r in runs}
    budgets = {}
    for r in runs:
        model, p = r.overrides["model_name"], int(r.config.split(":p")[1].split(",")[0])
        c = r.overrides["total_steps"] * 64 * module.FLOPS_PER_IMAGE[(model, p)]
        budgets.setdefault(round(c / module.C_MAX * 32), set()).add((model, p))
        assert abs(c / (module.C_MAX / 2 ** round(math.log2(module.C_MAX / c))) - 1) < 0.01     # on the budget grid
        if r.after is not None:                                    # branch step = a kept checkpoint of the parent
            parent = next(q for q in runs if q.name == r.after[0])
            assert r.after[0] in names and str(r.after[1]) in parent.overrides["checkpoint_steps"].split(",")
            assert r.after[1] == r.overrides["total_steps"] - round(0.2 * r.overrides["total_steps"])
    assert max(budgets) / min(budgets) >= 30                        # >= 30x in compute
    for models in budgets.values():                                 # >= 3 patch sizes per arch at every budget
        for m in ("adventurer_tiny", "vit_tiny"):
            assert len({p for mm, p in models if mm == m}) >= 3
    # the largest budget is >= 10x the mean per-run training compute of the 16 px sweep
    old = []
    for d in (REPO / "reports" / "fashion_mnist_patch" / "runs").iterdir():
        rows = [json.loads(line) for line in open(d / "metrics.jsonl") if line.strip()]
        old.append(max(r["flops"] for r in rows if r.get("split") == "eval"))
    assert module.C_MAX >= 10 * sum(old) / len(old)


def _load_sweep_module(name):
    spec = importlib.util.spec_from_file_location(f"sweep_{name}", REPO / "configs" / "sweeps" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
