"""Timing and machine-description helpers shared by the pixeltok benchmarks (no JAX or torch import here).

These CPUs are noisy (±10–15 % between runs, more while other jobs run), so every benchmark reports medians of
several repetitions and every headline number is a ratio of two measurements taken in the same `make bench` run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import time
from typing import Callable

QUICK = os.environ.get("BENCH_QUICK", "0") not in ("", "0", "false", "False")


def time_calls(call: Callable[[], object], *, warmup: int = 1, min_reps: int = 3, max_reps: int = 20,
               min_time_s: float = 2.0, max_time_s: float = 60.0) -> dict:
    """Times a blocking call: `warmup` untimed calls, then repetitions until both `min_reps` and `min_time_s`
    (or `max_reps` / `max_time_s`) are reached.

    Args:
      call: runs one iteration and blocks until its result is ready (e.g. `jax.block_until_ready`).

    Returns:
      {"median_s", "min_s", "reps", "times_s"}.
    """
    for _ in range(warmup):
        call()
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if len(times) >= max_reps or elapsed >= max_time_s:
            break
        if len(times) >= min_reps and elapsed >= min_time_s:
            break
    return {"median_s": statistics.median(times), "min_s": min(times), "reps": len(times),
            "times_s": [round(t, 6) for t in times]}


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (falls back to `platform.processor()`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD flags that matter for these benchmarks (AVX-512, BF16, AMX), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))
    except OSError:
        pass
    return []


def mem_total_bytes() -> int:
    """Total RAM in bytes (0 if unknown)."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def load_average() -> list[float]:
    """1/5/15-minute load averages: a busy machine (load > cores) makes absolute times meaningless."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_name(accelerator: str | None = None) -> str:
    """File-name slug for this machine: `BENCH_MACHINE` if set, else the accelerator's model (GPU) or
    `<cpu model>-<cores>c`."""
    name = os.environ.get("BENCH_MACHINE")
    if not name:
        name = accelerator or f"{cpu_model()}-{os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def machine_info() -> dict:
    """Everything that identifies where the numbers came from (no JAX fields; run.py adds those)."""
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(),
            "mem_total_gib": round(mem_total_bytes() / 2**30, 1), "python": platform.python_version(),
            "platform": platform.platform(), "load_average_at_start": load_average(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "git_commit": _git_commit()}


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, check=False).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def write_json(path: str, obj) -> None:
    """Writes `obj` as indented JSON via a temporary file, so a killed run never leaves half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=False, default=float)
    os.replace(tmp, path)


def log(msg: str) -> None:
    """Progress line on stderr with a wall-clock stamp (make bench runs for half an hour)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)
