"""Preemption: SIGTERM/SIGINT end a run cleanly after the current step (checkpoint saved, exit 128 + signal).

Schedulers (SLURM, Kubernetes, preemptible TPU VMs) send SIGTERM shortly before they kill a job; the trainer polls
`StopFlag.should_stop` once per step, saves, and returns, and the same command later resumes the run.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

import jax
import numpy as np


class StopFlag:
    """SIGTERM/SIGINT -> stop after the current step (a second SIGINT aborts at once)."""

    def __init__(self, log: Callable[[str], None] = print):
        self.signum = None
        self._old = {}
        self._log = log

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self._log(f"received signal {signum}; saving a checkpoint after the current step")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def should_stop(self, sync: bool) -> bool:
        """Local flag; with several processes, OR-ed over all of them when `sync` (all must stop together)."""
        if jax.process_count() == 1:
            return self.signum is not None
        if not sync:
            return False
        from jax.experimental import multihost_utils
        return bool(np.any(multihost_utils.process_allgather(np.array(self.signum is not None))))
