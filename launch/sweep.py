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
which resumes from the run's latest checkpoint (docs/architecture.md). A failed run does not stop the sweep; failures are
listed at the end and the exit status is 1. Each run's stdout+stderr go to `<workdir>/sweep.log`.
`--dry-run` prints the command of every unfinished run, one per line (skipped runs are noted on stderr).

WSD families with cooldown branches (one long run yields annealed losses at several budgets): a sweep entry with
`"wsd_budgets": [n1, n2, ..., N]` (training steps) and optional `"wsd_decay_fraction"` (default 0.2) expands into
- `<name>_n<N>`: the long run, `schedule=wsd`, `total_steps=N`, `checkpoint_steps=S(n1),S(n2),...` where
  S(n) = n - round(fraction * n) is the decay start of an n-step WSD run (pixeltok.optim.wsd_decay_start);
- `<name>_n<n>` for every other budget: a branch, `total_steps=n`, `cooldown_from=<root>/<name>_n<N>:S(n)`. The
  trainer restores the long run's full state (model, optimizer, data iterator) at S(n), where the long run is still
  in its stable phase at the peak lr, and finishes with its own n-step WSD cooldown.
A branch starts only once its parent has committed checkpoint S(n) (`<parent>/checkpoints/<S(n)>`), so with
`--parallel 2` branches start while their parent is still running; with `--parallel 1` a family's branches run after
its long run. A branch whose parent can no longer produce the step (failed, or finished without it) is a failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

DONE = "DONE"


CKPT_DIR = "checkpoints"      # pixeltok.checkpoint.CKPT_DIR: committed steps are `<workdir>/checkpoints/<step>`


@dataclasses.dataclass
class Run:
    """One grid point: workdir name, config argument, `--config.KEY=VALUE` overrides (in order) and, for a cooldown
    branch, `after = (parent run name, step)`: the parent's checkpoint it starts from (`--config.cooldown_from`)."""
    name: str
    config: str
    overrides: dict
    after: tuple[str, int] | None = None

    def command(self, root: Path, python: str, extra: list[str] = ()) -> list[str]:
        """The exact argv of this run."""
        flags = [f"--config.{k}={_fmt(v)}" for k, v in self.overrides.items()]
        if self.after is not None:
            flags.append(f"--config.cooldown_from={root / self.after[0]}:{self.after[1]}")
        return [python, "-m", "pixeltok.main", f"--config={self.config}", f"--workdir={root / self.name}",
                *flags, *extra]


def wsd_decay_start(total_steps: int, decay_fraction: float) -> int:
    """Decay start of a `total_steps` WSD run: the same formula as pixeltok.optim.wsd_decay_start (tested equal;
    repeated here so the launcher stays a stdlib-only script)."""
    return int(total_steps) - max(int(round(float(decay_fraction) * int(total_steps))), 1)


def wsd_family(name: str, config: str, overrides: dict, budgets: list[int], decay_fraction: float = 0.2) -> list[Run]:
    """One long WSD run of max(budgets) steps plus a cooldown branch per smaller budget (see module doc).

    The long run comes first; branches follow in increasing budget. Raises ValueError for budgets that are not
    distinct positive integers, or whose branch step would not be a stable-phase step (>= 1) of the long run.
    """
    steps = sorted({int(b) for b in budgets})
    if not steps or len(steps) != len(budgets) or steps[0] <= 0 or any(int(b) != b for b in budgets):
        raise ValueError(f"run {name}: wsd_budgets {budgets!r} must be distinct positive step counts")
    if not 0.0 < float(decay_fraction) <= 1.0:
        raise ValueError(f"run {name}: wsd_decay_fraction={decay_fraction!r} must be in (0, 1]")
    longest = steps[-1]
    long_start = wsd_decay_start(longest, decay_fraction)
    branch_steps = {n: wsd_decay_start(n, decay_fraction) for n in steps[:-1]}
    bad = [n for n, s in branch_steps.items() if s < 1 or s > long_start]
    if bad:
        raise ValueError(f"run {name}: budgets {bad} give no stable-phase branch step (decay start < 1)")
    base = {**overrides, "schedule": "wsd", "wsd_decay_fraction": decay_fraction}
    long_name = f"{name}_n{longest}"
    long_overrides = {**base, "total_steps": longest}
    if branch_steps:
        long_overrides["checkpoint_steps"] = ",".join(str(s) for s in sorted(set(branch_steps.values())))
    runs = [Run(long_name, config, long_overrides)]
    runs += [Run(f"{name}_n{n}", config, {**base, "total_steps": n}, after=(long_name, s))
             for n, s in branch_steps.items()]
    return runs


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
    runs = []
    for d in module.get_sweep():
        if "wsd_budgets" in d:
            runs += wsd_family(d["name"], d["config"], dict(d.get("overrides", {})), list(d["wsd_budgets"]),
                               d.get("wsd_decay_fraction", 0.2))
        else:
            after = d.get("after")
            runs.append(Run(d["name"], d["config"], dict(d.get("overrides", {})),
                            None if after is None else (str(after[0]), int(after[1]))))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"sweep {path}: duplicate run names {sorted({n for n in names if names.count(n) > 1})}")
    return runs


def is_finished(workdir: Path) -> bool:
    """True when the sweep marked the run finished (a clean exit wrote `DONE`)."""
    return (workdir / DONE).is_file()


def has_step(workdir: Path, step: int) -> bool:
    """True when `workdir` holds the committed checkpoint `step` (Orbax renames a step directory on commit)."""
    return (workdir / CKPT_DIR / str(int(step))).is_dir()


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
    """Runs every unfinished run, at most `parallel` at a time; returns [(name, exit status)] of the failures.

    Runs start in list order, except that a cooldown branch waits until its parent's checkpoint step exists (other
    ready runs start meanwhile); a branch whose parent is neither pending nor has the step fails ("no parent
    checkpoint").
    """
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
    failures, active, queue, total, started = [], [], list(todo), len(todo), 0
    pending = {r.name for r in todo}                # not finished yet (queued or running)

    def ready(run: Run) -> bool:
        return run.after is None or has_step(root / run.after[0], run.after[1])

    def blocked(run: Run) -> bool:
        """A branch whose parent will not produce the step: neither queued nor running, and the step is absent."""
        return run.after is not None and run.after[0] not in pending and not ready(run)

    try:
        while queue or active:
            for run in [r for r in queue if blocked(r)]:
                queue.remove(run)
                pending.discard(run.name)
                failures.append((run.name, "no parent checkpoint"))
                print(f"FAILED {run.name}: parent {run.after[0]} has no checkpoint at step {run.after[1]} "
                      f"({root / run.after[0] / CKPT_DIR}) and is not running", file=sys.stderr, flush=True)
            while len(active) < parallel:
                run = next((r for r in queue if ready(r)), None)
                if run is None:
                    break
                queue.remove(run)
                started += 1
                print(f"[{started}/{total}] start {run.name}", file=sys.stderr, flush=True)
                active.append((run, *_start(run, root, python, extra)))
            time.sleep(poll_s)
            for item in list(active):
                run, proc, t0, cmd = item
                rc = proc.poll()
                if rc is None:
                    continue
                active.remove(item)
                pending.discard(run.name)
                seconds = time.time() - t0
                if rc == 0:
                    (root / run.name / DONE).write_text(json.dumps({"command": cmd, "seconds": seconds}) + "\n")
                    print(f"done {run.name} in {seconds:.1f}s", file=sys.stderr, flush=True)
                else:
                    failures.append((run.name, rc))
                    print(f"FAILED {run.name} (exit {rc}); log: {root / run.name / 'sweep.log'}", file=sys.stderr,
                          flush=True)
    finally:
        # Interrupted: stop the running runs (SIGTERM: each finishes its step and saves a checkpoint) and wait for
        # them, so that when the launcher exits every checkpoint is written and the same command continues.
        for _, proc, _, _ in active:
            proc.terminate()
        for _, proc, _, _ in active:
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
    return failures


STOP_WAIT_S = 600       # how long an interrupted launcher waits for a run to save its checkpoint


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _why(rc) -> str:
    return f"exit {rc}" if isinstance(rc, int) else str(rc)


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
    signal.signal(signal.SIGTERM, _raise_interrupt)      # `kill` stops a sweep as cleanly as Ctrl-C
    try:
        failures = run_all(runs, Path(args.root), python=args.python, extra=extra, parallel=args.parallel,
                           dry_run=args.dry_run)
    except KeyboardInterrupt:
        print("sweep interrupted: the running runs saved checkpoints; rerun the same command to continue",
              file=sys.stderr)
        return 130
    if failures:
        print(f"{len(failures)} of {len(runs)} runs failed: " + ", ".join(f"{n} ({_why(rc)})" for n, rc in failures),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
