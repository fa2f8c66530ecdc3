#!/usr/bin/env python3
"""Local sweep runner: one `python -m pixeltok.main` run per grid point, each in `<root>/<name>`.

Grid from flags (name `<model>_p<P>_s<seed>`; every run gets `--config.model_name/patch_size/seed`):
  python launch/sweep.py --root runs/sweep --models vit_tiny,adventurer_tiny --patches 16,8,4 --seeds 0,1 \
      --config=configs/quickstart.py --config.total_steps=500 [--parallel 2] [--dry-run]
or from a sweep module `configs/sweeps/<name>.py` whose `get_sweep()` returns a list of
`{"name": str, "config": "configs/x.py:arg", "overrides": {"key": value, ...}}`:
  python launch/sweep.py --sweep configs/sweeps/fashion_mnist_patch.py --root runs/fmnist_patch
Extra `--config.KEY=VALUE` flags are appended to every run (after the run's own overrides, so they win).

Finished runs: the sweep writes `<workdir>/DONE` (JSON: command, seconds) after a run exits with status 0, and
skips workdirs that have it. A run that failed or was interrupted has no DONE; the next sweep reruns the same command,
which resumes from the run's latest checkpoint (CONTRACT §3). A failed run does not stop the sweep; failures are
listed at the end and the exit status is 1. Each run's stdout+stderr go to `<workdir>/sweep.log`.
`--dry-run` prints the command of every unfinished run, one per line (skipped runs are noted on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

DONE = "DONE"


@dataclasses.dataclass
class Run:
    """One grid point: workdir name, config argument and `--config.KEY=VALUE` overrides (in order)."""
    name: str
    config: str
    overrides: dict

    def command(self, root: Path, python: str, extra: list[str] = ()) -> list[str]:
        """The exact argv of this run."""
        flags = [f"--config.{k}={_fmt(v)}" for k, v in self.overrides.items()]
        return [python, "-m", "pixeltok.main", f"--config={self.config}", f"--workdir={root / self.name}",
                *flags, *extra]


def _fmt(value) -> str:
    return str(value)


def grid(models: list[str], patches: list[int], seeds: list[int], config: str) -> list[Run]:
    """Runs for models x patches x seeds (that nesting order)."""
    return [Run(f"{m}_p{p}_s{s}", config, {"model_name": m, "patch_size": p, "seed": s})
            for m in models for p in patches for s in seeds]


def load_sweep(path: str) -> list[Run]:
    """Runs from a sweep module exposing `get_sweep()` (see module doc)."""
    spec = importlib.util.spec_from_file_location(f"_sweep_{Path(path).stem}", path)
    if spec is None or not Path(path).is_file():
        raise ValueError(f"sweep module {path!r} not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    runs = [Run(d["name"], d["config"], dict(d.get("overrides", {}))) for d in module.get_sweep()]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep {path}: duplicate run names {sorted({n for n in names if names.count(n) > 1})}")
    return runs


def is_finished(workdir: Path) -> bool:
    """True when the sweep marked the run finished (a clean exit wrote `DONE`)."""
    return (workdir / DONE).is_file()


def _start(run: Run, root: Path, python: str, extra: list[str]) -> tuple[subprocess.Popen, float, list[str]]:
    workdir = root / run.name
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = run.command(root, python, extra)
    log = open(workdir / "sweep.log", "ab")
    log.write(f"\n$ {shlex.join(cmd)}\n".encode())
    log.flush()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()                 # the child holds its own descriptor
    return proc, time.time(), cmd


def run_all(runs: list[Run], root: Path, *, python: str, extra: list[str] = (), parallel: int = 1,
            dry_run: bool = False, poll_s: float = 0.1) -> list[tuple[str, int]]:
    """Runs every unfinished run, at most `parallel` at a time; returns [(name, exit status)] of the failures."""
    todo = []
    for run in runs:
        if is_finished(root / run.name):
            print(f"# skip {run.name} (finished: {root / run.name / DONE})", file=sys.stderr)
        else:
            todo.append(run)
    if dry_run:
        for run in todo:
            print(shlex.join(run.command(root, python, extra)))
        return []
    failures, active, queue, total = [], [], list(todo), len(todo)
    try:
        while queue or active:
            while queue and len(active) < parallel:
                run = queue.pop(0)
                print(f"[{total - len(queue)}/{total}] start {run.name}", file=sys.stderr, flush=True)
                active.append((run, *_start(run, root, python, extra)))
            time.sleep(poll_s)
            for item in list(active):
                run, proc, t0, cmd = item
                rc = proc.poll()
                if rc is None:
                    continue
                active.remove(item)
                seconds = time.time() - t0
                if rc == 0:
                    (root / run.name / DONE).write_text(json.dumps({"command": cmd, "seconds": seconds}) + "\n")
                    print(f"done {run.name} in {seconds:.1f}s", file=sys.stderr, flush=True)
                else:
                    failures.append((run.name, rc))
                    print(f"FAILED {run.name} (exit {rc}); log: {root / run.name / 'sweep.log'}", file=sys.stderr,
                          flush=True)
    finally:
        for _, proc, _, _ in active:        # interrupted: do not leave orphans behind
            proc.terminate()
    return failures


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="directory holding one workdir per run")
    parser.add_argument("--sweep", help="sweep module path (configs/sweeps/<name>.py) exposing get_sweep()")
    parser.add_argument("--models", default="", help="comma list of model names (grid mode)")
    parser.add_argument("--patches", type=_ints, default=[], help="comma list of patch sizes (grid mode)")
    parser.add_argument("--seeds", type=_ints, default=[0], help="comma list of seeds (grid mode)")
    parser.add_argument("--config", default="configs/quickstart.py", help="config file[:arg] for grid mode")
    parser.add_argument("--only", default="", help="regex: run only the runs whose name matches")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (each uses all cores it gets)")
    parser.add_argument("--python", default=sys.executable, help="python interpreter for the runs")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args, extra = parser.parse_known_args(argv)
    bad = [e for e in extra if not e.startswith("--config.")]
    if bad:
        parser.error(f"unknown arguments {bad}; only --config.KEY=VALUE overrides pass through")
    if args.parallel < 1:
        parser.error(f"--parallel {args.parallel} must be >= 1")
    if args.sweep:
        runs = load_sweep(args.sweep)
    elif args.models and args.patches:
        runs = grid([m for m in args.models.split(",") if m], args.patches, args.seeds, args.config)
    else:
        parser.error("give --sweep MODULE, or --models and --patches")
    if args.only:
        runs = [r for r in runs if re.search(args.only, r.name)]
    failures = run_all(runs, Path(args.root), python=args.python, extra=extra, parallel=args.parallel,
                       dry_run=args.dry_run)
    if failures:
        print(f"{len(failures)} of {len(runs)} runs failed: " + ", ".join(f"{n} (exit {rc})" for n, rc in failures),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
