#!/usr/bin/env python3
"""SLURM launcher: writes an sbatch script that starts one pixeltok process per GPU (or per node) with srun.

  python launch/slurm.py --nodes 2 --gpus-per-node 8 --time 24:00:00 --partition gpu \
      --workdir runs/advb_p1 -- --config=configs/adventurer_base.py:p1 --config.batch_size=1024
  ... --dry-run      print the script, write nothing
  ... (default)      write it to <workdir>/sbatch.sh and print `sbatch <path>`
  ... --submit       write it and call sbatch

Process layout: `--per gpu` (default) = `--ntasks-per-node=G --gpus-per-task=1`, one process per GPU;
`--per node` = `--ntasks-per-node=1 --gpus-per-node=G`, one process driving all G GPUs of its node.
The script exports `PIXELTOK_COORDINATOR=<first node>:<port>`; every srun task then calls
`jax.distributed.initialize(coordinator, SLURM_NTASKS, SLURM_PROCID)` through `pixeltok.distributed.
maybe_initialize` (PIXELTOK_NUM_PROCESSES/PIXELTOK_PROCESS_ID default to those SLURM variables). The workdir must be on
a file system all nodes share. Resubmitting the same script resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path


def sbatch_script(*, workdir: str, main_args: list[str], nodes: int = 1, gpus_per_node: int = 8, per: str = "gpu",
                  time: str = "24:00:00", job_name: str = "pixeltok", partition: str = "", account: str = "",
                  cpus_per_task: int = 0, port: int = 12355, python: str = "python", repo: str = ".",
                  prelude: list[str] = ()) -> str:
    """The sbatch script text (see module doc)."""
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"nodes={nodes}, gpus_per_node={gpus_per_node}: both must be >= 1")
    if per not in ("gpu", "node"):
        raise ValueError(f"per={per!r}; valid: gpu, node")
    tasks_per_node = gpus_per_node if per == "gpu" else 1
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --nodes={nodes}",
             f"#SBATCH --ntasks-per-node={tasks_per_node}"]
    lines.append("#SBATCH --gpus-per-task=1" if per == "gpu" else f"#SBATCH --gpus-per-node={gpus_per_node}")
    if cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={cpus_per_task}")
    lines.append(f"#SBATCH --time={time}")
    lines += [f"#SBATCH --{k}={v}" for k, v in (("partition", partition), ("account", account)) if v]
    lines += [f"#SBATCH --output={workdir}/slurm-%j.out", "set -euo pipefail", f"cd {shlex.quote(repo)}", *prelude]
    # One coordinator for jax.distributed: the first host of the allocation (process 0 runs there).
    lines.append(f'export PIXELTOK_COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):{port}"')
    cmd = [python, "-m", "pixeltok.main", *main_args, f"--workdir={workdir}"]
    lines.append("srun --kill-on-bad-exit=1 " + shlex.join(cmd))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="run workdir on a shared file system (relative: to --repo)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--per", choices=("gpu", "node"), default="gpu", help="one process per GPU or per node")
    parser.add_argument("--time", default="24:00:00")
    parser.add_argument("--job-name", default="pixeltok")
    parser.add_argument("--partition", default="")
    parser.add_argument("--account", default="")
    parser.add_argument("--cpus-per-task", type=int, default=0)
    parser.add_argument("--port", type=int, default=12355, help="jax.distributed coordinator port")
    parser.add_argument("--python", default="python", help="interpreter on the nodes (e.g. .venv/bin/python)")
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]), help="repo dir on the nodes")
    parser.add_argument("--prelude", action="append", default=[], help="shell line before srun (repeatable)")
    parser.add_argument("--script", default="", help="where to write the script (default <workdir>/sbatch.sh)")
    parser.add_argument("--dry-run", action="store_true", help="print the script, write nothing")
    parser.add_argument("--submit", action="store_true", help="call sbatch on the written script")
    parser.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then the pixeltok.main flags")
    args = parser.parse_args(argv)
    main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
    if not any(a.startswith("--config=") for a in main_args):
        parser.error("give the pixeltok.main flags after --, at least --config=...")
    # Relative workdirs are taken relative to the repo (the script cd's there; slurm's --output needs the same path).
    workdir = args.workdir if Path(args.workdir).is_absolute() else str(Path(args.repo) / args.workdir)
    try:
        text = sbatch_script(workdir=workdir, main_args=main_args, nodes=args.nodes,
                             gpus_per_node=args.gpus_per_node, per=args.per, time=args.time, job_name=args.job_name,
                             partition=args.partition, account=args.account, cpus_per_task=args.cpus_per_task,
                             port=args.port, python=args.python, repo=args.repo, prelude=args.prelude)
    except ValueError as e:
        parser.error(str(e))
    if args.dry_run:
        print(text, end="")
        return 0
    script = Path(args.script or Path(workdir) / "sbatch.sh")
    script.parent.mkdir(parents=True, exist_ok=True)
    Path(workdir).mkdir(parents=True, exist_ok=True)      # slurm drops output whose directory is missing
    script.write_text(text)
    print(shlex.join(["sbatch", str(script)]))
    return subprocess.call(["sbatch", str(script)]) if args.submit else 0


if __name__ == "__main__":
    sys.exit(main())
