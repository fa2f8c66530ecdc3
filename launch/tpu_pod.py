#!/usr/bin/env python3
"""Cloud TPU pod (TPU VM) launcher: the same command on every worker through `gcloud ... ssh --worker=all`.

  # install: clone (or update) the repo at a ref on every worker, make a venv, pip install -e . with jax[tpu]
  python launch/tpu_pod.py --name my-v4-32 --zone us-central2-b install --repo https://github.com/ORG/pixeltok \
      --ref main
  # or copy this working tree instead of cloning (tar, scp to every worker, untar, same pip install)
  python launch/tpu_pod.py --name my-v4-32 --zone us-central2-b install --copy
  # run: every worker starts `python -m pixeltok.main` with identical arguments; jax.distributed detects the pod
  # (TPU_WORKER_HOSTNAMES, pixeltok.distributed) and each process feeds its own slice of the global batch.
  python launch/tpu_pod.py --name my-v4-32 --zone us-central2-b run --workdir gs://BUCKET/runs/advb_p1 \
      -- --config=configs/adventurer_base.py:p1 --config.batch_size=1024

The workdir must be shared by all workers (a gs:// bucket): Orbax writes one checkpoint from all processes.
`--detach` keeps the run alive after ssh disconnects (nohup, log in ~/pixeltok_run.log on every worker).
`--dry-run` prints the exact commands, one per line; nothing runs.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

REMOTE_DIR = "pixeltok"             # relative to the remote user's home directory
TARBALL = "/tmp/pixeltok_src.tar.gz"
JAX_TPU = "jax[tpu]>=0.10.2,<0.11"


def ssh(name: str, zone: str, remote: str, project: str = "") -> list[str]:
    """`gcloud compute tpus tpu-vm ssh NAME --zone Z --worker=all --command REMOTE` argv."""
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, "--zone", zone]
    if project:
        cmd += ["--project", project]
    return cmd + ["--worker=all", "--command", remote]


def _pip_install() -> str:
    return (f"cd ~/{REMOTE_DIR} && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && "
            f".venv/bin/pip install -q -e . {shlex.quote(JAX_TPU)}")


def install_commands(name: str, zone: str, *, repo: str = "", ref: str = "main", copy: bool = False,
                     src: str = ".", project: str = "") -> list[list[str]]:
    """argvs that put the code on every worker and install it."""
    if copy:
        scp = ["gcloud", "compute", "tpus", "tpu-vm", "scp", TARBALL, f"{name}:{TARBALL}", "--zone", zone]
        if project:
            scp += ["--project", project]
        return [
            ["tar", "czf", TARBALL, "-C", src, "--exclude=./.venv", "--exclude=./.git", "--exclude=./runs",
             "--exclude=./data", "."],
            scp + ["--worker=all"],
            ssh(name, zone, f"mkdir -p ~/{REMOTE_DIR} && tar xzf {TARBALL} -C ~/{REMOTE_DIR} && {_pip_install()}",
                project),
        ]
    if not repo:
        raise ValueError("install needs --repo URL (git clone) or --copy (this working tree)")
    q = shlex.quote
    fetch = (f"(test -d ~/{REMOTE_DIR}/.git || git clone {q(repo)} ~/{REMOTE_DIR}) && cd ~/{REMOTE_DIR} && "
             f"git fetch -q origin && git checkout -q {q(ref)} && (git pull -q --ff-only origin {q(ref)} || true)")
    return [ssh(name, zone, f"{fetch} && {_pip_install()}", project)]


def run_command(name: str, zone: str, workdir: str, main_args: list[str], *, detach: bool = False,
                env: list[str] = (), project: str = "") -> list[str]:
    """argv that starts `python -m pixeltok.main` with the same arguments on every worker."""
    py = shlex.join([".venv/bin/python", "-m", "pixeltok.main", *main_args, f"--workdir={workdir}"])
    exports = "".join(f"export {shlex.quote(e)} && " for e in env)
    remote = f"cd ~/{REMOTE_DIR} && {exports}"
    remote += f"nohup {py} > ~/pixeltok_run.log 2>&1 &" if detach else py
    return ssh(name, zone, remote, project)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default="")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    sub = parser.add_subparsers(dest="action", required=True)
    ins = sub.add_parser("install", help="clone/copy the repo and pip install on every worker")
    ins.add_argument("--repo", default="", help="git URL to clone")
    ins.add_argument("--ref", default="main", help="branch, tag or commit to check out")
    ins.add_argument("--copy", action="store_true", help="copy this working tree instead of cloning")
    ins.add_argument("--src", default=".", help="working tree to copy (with --copy)")
    run = sub.add_parser("run", help="start the same training command on every worker")
    run.add_argument("--workdir", required=True, help="shared workdir (gs://...)")
    run.add_argument("--detach", action="store_true", help="nohup the run; logs in ~/pixeltok_run.log")
    run.add_argument("--env", action="append", default=[], help="KEY=VALUE exported before the run (repeatable)")
    run.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then the pixeltok.main flags")
    args = parser.parse_args(argv)
    if args.action == "install":
        try:
            cmds = install_commands(args.name, args.zone, repo=args.repo, ref=args.ref, copy=args.copy,
                                    src=args.src, project=args.project)
        except ValueError as e:
            parser.error(str(e))
    else:
        main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
        if not any(a.startswith("--config=") for a in main_args):
            parser.error("run needs the pixeltok.main flags after --, at least --config=...")
        cmds = [run_command(args.name, args.zone, args.workdir, main_args, detach=args.detach, env=args.env,
                            project=args.project)]
    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
        if not args.dry_run:
            rc = subprocess.call(cmd)
            if rc:
                print(f"command failed with exit status {rc}", file=sys.stderr)
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
