"""Multi-process start-up: `jax.distributed.initialize` when (and only when) several processes were launched.

Decision order (`launch_mode()`), first match wins:
  1. `PIXELTOK_DISTRIBUTED=0`                      → never initialise (e.g. one python inside a multi-task salloc).
  2. `PIXELTOK_COORDINATOR=host:port` set          → explicit: `initialize(coordinator, PIXELTOK_NUM_PROCESSES,
                                                      PIXELTOK_PROCESS_ID)`; these two default to SLURM_NTASKS and
                                                      SLURM_PROCID (so an sbatch script exports only the
                                                      coordinator, launch/slurm.py); 1 process = no-op.
  3. `PIXELTOK_DISTRIBUTED=1`                      → `initialize()` with no arguments (JAX's cluster detection).
  4. SLURM with `SLURM_NTASKS > 1` and `SLURM_PROCID` set (i.e. inside an srun step) → `initialize()`.
  5. TPU pod: `TPU_WORKER_HOSTNAMES` with > 1 host, or `MEGASCALE_COORDINATOR_ADDRESS` (multislice) → `initialize()`.
  6. otherwise single process                      → nothing.
Every process of a job must run the same programs (jits, evals, checkpoint saves) or all of them hang
(docs/architecture.md, "Multi-process runs"). `maybe_initialize()` is idempotent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
from absl import logging

ENV_COORDINATOR = "PIXELTOK_COORDINATOR"
ENV_NUM_PROCESSES = "PIXELTOK_NUM_PROCESSES"
ENV_PROCESS_ID = "PIXELTOK_PROCESS_ID"
ENV_SWITCH = "PIXELTOK_DISTRIBUTED"

_initialized_here = False


def _int_env(env: Mapping[str, str], name: str, fallback: str) -> int:
    value = env.get(name, env.get(fallback, ""))
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be an integer (needed with {ENV_COORDINATOR}; "
                         f"default ${fallback})") from None


def launch_mode(env: Mapping[str, str] | None = None) -> tuple[str, dict]:
    """Which start-up the environment asks for: ("single" | "explicit" | "auto", initialize kwargs).

    Raises:
      ValueError: `PIXELTOK_COORDINATOR` without valid `PIXELTOK_NUM_PROCESSES`/`PIXELTOK_PROCESS_ID`.
    """
    env = os.environ if env is None else env
    switch = env.get(ENV_SWITCH, "").strip().lower()
    if switch in ("0", "false", "no", "off"):
        return "single", {}
    if env.get(ENV_COORDINATOR):
        n = _int_env(env, ENV_NUM_PROCESSES, "SLURM_NTASKS")
        i = _int_env(env, ENV_PROCESS_ID, "SLURM_PROCID")
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"{ENV_NUM_PROCESSES}={n}, {ENV_PROCESS_ID}={i}: need n >= 1 and 0 <= id < n")
        if n == 1:
            return "single", {}
        return "explicit", dict(coordinator_address=env[ENV_COORDINATOR], num_processes=n, process_id=i)
    if switch in ("1", "true", "yes", "on"):
        return "auto", {}
    if env.get("SLURM_PROCID") is not None and env.get("SLURM_NTASKS", "1").isdigit() \
            and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "auto", {}
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "auto", {}
    return "single", {}


def maybe_initialize() -> None:
    """Calls `jax.distributed.initialize(...)` when launched on several processes (see module doc); else nothing.

    Must run before anything touches jax devices. Logs the process index and count.
    """
    global _initialized_here
    mode, kwargs = launch_mode()
    if mode != "single" and not _initialized_here and not jax.distributed.is_initialized():
        logging.info("jax.distributed.initialize (%s) %s", mode, kwargs)
        jax.distributed.initialize(**kwargs)
        _initialized_here = True
    logging.info("process %d of %d; %d local / %d global devices (%s start-up)", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(), mode)


def is_main_process() -> bool:
    """True on process 0 (the one that writes config.json, metrics and logs)."""
    return jax.process_index() == 0
