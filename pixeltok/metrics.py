"""Run records: `metrics.jsonl`, TensorBoard events in `tb/`, `config.json`, per-eval details in `eval/`, and the
progress chrono (layout: docs/architecture.md).

Only process 0 writes files; every process may call the writer (its calls are no-ops elsewhere), so the trainer
needs no `if jax.process_index() == 0` branches.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import numpy as np

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
TB_DIR = "tb"
EVAL_DIR = "eval"          # eval/<step>.json: a task's per-eval detail (e.g. per-class IoU)


def _jsonable(v: Any) -> Any:
    """Python scalars for JSON (numpy/jax scalars -> float/int; non-finite floats stay as NaN/Infinity)."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) or (hasattr(v, "shape") and np.shape(v) == ()):
        return float(v)
    return v


def read_metrics(workdir: str) -> list[dict]:
    """All records of `workdir/metrics.jsonl` in file order ([] when absent)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(workdir: str, last_step: int) -> int:
    """Drops records with step > last_step (a resumed run recomputes them); returns how many were dropped.

    Rewrites through a temporary file and `os.replace`, so a crash here never leaves a half file.
    """
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill mid-write
            continue
        if rec.get("step", 0) <= last_step:
            keep.append(line if line.endswith("\n") else line + "\n")
    if len(keep) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, path)
    return len(lines) - len(keep)


def copy_records(src_workdir: str, dst_workdir: str, *, last_step: int) -> None:
    """Starts `dst`'s metrics.jsonl with `src`'s records up to `last_step` (a cooldown branch shares its parent's
    stable phase, so its learning curve begins with the parent's)."""
    records = [r for r in read_metrics(src_workdir) if r.get("step", 0) <= last_step]
    tmp = os.path.join(dst_workdir, METRICS_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, os.path.join(dst_workdir, METRICS_FILE))


def write_eval_details(workdir: str, step: int, details: Mapping[str, Any], name: str | None = None) -> str:
    """Writes `eval/<name or step>.json` atomically; returns its path."""
    os.makedirs(os.path.join(workdir, EVAL_DIR), exist_ok=True)
    path = os.path.join(workdir, EVAL_DIR, f"{name or step}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"step": int(step), **details}, f, indent=1, sort_keys=True, default=_jsonable)
    os.replace(path + ".tmp", path)
    return path


def write_config_json(workdir: str, config, extra: Mapping[str, Any]) -> None:
    """Writes `config.json`: the resolved config plus run facts (devices, mesh, parameter counts, FLOPs)."""
    record = json.loads(config.to_json_best_effort())
    record.update({k: _jsonable(v) for k, v in extra.items()})
    tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


def read_config_json(workdir: str) -> dict:
    with open(os.path.join(workdir, CONFIG_FILE), encoding="utf-8") as f:
        return json.load(f)


class MetricWriter:
    """Appends one JSON object per record to `metrics.jsonl` and mirrors scalars to TensorBoard.

    Args:
      workdir: the run directory (must exist on process 0).
      resume_step: last step already done (0 for a fresh run). Records beyond it are dropped from the file and
        TensorBoard is told to purge them, so a resumed run's records match an uninterrupted run's.
      enabled: write at all (False on processes other than 0).
    """

    def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb = None
        if not enabled:
            return
        truncate_metrics(workdir, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        try:
            from tensorboardX import SummaryWriter  # TF-free event writer
            self._tb = SummaryWriter(os.path.join(workdir, TB_DIR), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:  # pragma: no cover - tensorboardX is an install requirement
            self._tb = None

    def write(self, step: int, split: str, **fields: Any) -> dict:
        """Writes `{"step", "split", **fields}`; numeric fields also go to TensorBoard as `split/name`."""
        record = {"step": int(step), "split": split}
        record.update({k: _jsonable(v) for k, v in fields.items()})
        if not self.enabled:
            return record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))
        return record

    def flush(self) -> None:
        if self.enabled:
            self._file.flush()
            if self._tb is not None:
                self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()
            self.enabled = False


def format_duration(seconds: float) -> str:
    """`1h02m`, `3m05s`, `12s` (for ETAs)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


class Chrono:
    """Training-time bookkeeping: throughput, ETA and cumulative train seconds, with eval/checkpoint time excluded.

    Timing starts after the first step of this process (which includes compilation, reported separately), so
    img/s and ETA describe the steady state. `train_time_s` carries over a resume through the checkpoint meta.
    """

    def __init__(self, *, first_step: int, total_steps: int, batch_size: int, train_time_s: float = 0.0):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.train_time_s = float(train_time_s)
        self._start_step = first_step
        self._mark_step = first_step
        self._mark_time = None
        self._paused_at = None
        self._paused = 0.0
        self.img_per_sec = float("nan")
        self.compile_s = float("nan")

    def start(self, step: int, t0: float) -> None:
        """Called once the first step (compile included) finished, at wall time `t0` of its dispatch."""
        now = time.perf_counter()
        self.compile_s = now - t0
        self.train_time_s += now - t0
        self._mark_step, self._mark_time, self._start_step = step, now, step

    def pause(self) -> None:
        self._paused_at = time.perf_counter()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused += time.perf_counter() - self._paused_at
            self._paused_at = None

    def tick(self, step: int) -> dict:
        """Updates throughput since the previous tick; returns `img_per_sec`, `eta_s`, `train_time_s`."""
        now = time.perf_counter()
        if self._mark_time is not None and step > self._mark_step:
            dt = max(now - self._mark_time - self._paused, 1e-9)
            self.img_per_sec = (step - self._mark_step) * self.batch_size / dt
            self.train_time_s += dt
            self._mark_step, self._mark_time, self._paused = step, now, 0.0
        eta = (self.total_steps - step) * self.batch_size / self.img_per_sec if self.img_per_sec > 0 else float("nan")
        return {"img_per_sec": self.img_per_sec, "eta_s": eta, "train_time_s": self.train_time_s}


def progress(examples: int, tokens_per_image: int, train_flops_per_image: float) -> dict:
    """How far a record is into training, in the units scaling fits use (examples, tokens, analytic FLOPs)."""
    return dict(examples_seen=examples, tokens_seen=examples * tokens_per_image,
                flops=examples * train_flops_per_image, wall_time=time.time())


def log_train(writer: MetricWriter, chrono: Chrono, step: int, device_metrics: Mapping[str, Any], *,
              progress: Mapping[str, Any], log=print) -> float:
    """Writes and prints the train record of `step` from the step's device metrics (loss, lr, grad_norm) and the
    chrono's throughput; returns the loss. The trainer calls it one step late so the device never waits."""
    import jax   # the rest of this module is usable without jax (scaling reads metrics.jsonl)
    m = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    timing = chrono.tick(step)
    speed = {"img_per_sec": timing["img_per_sec"]} if math.isfinite(timing["img_per_sec"]) else {}
    writer.write(step, "train", **progress, loss=m["loss"], lr=m["lr"], grad_norm=m["grad_norm"], **speed,
                 train_time_s=timing["train_time_s"],
                 device_hours=timing["train_time_s"] * jax.device_count() / 3600)
    log(progress_line(step, chrono.total_steps, m["loss"], m["lr"], timing["img_per_sec"], timing["eta_s"]))
    return m["loss"]


def progress_line(step: int, total: int, loss: float, lr: float, img_per_sec: float, eta_s: float) -> str:
    """`[  120/1000] loss 0.6123  lr 1.00e-03  412 img/s  ETA 2m10s`."""
    width = len(str(total))
    speed = f"{img_per_sec:,.0f}" if math.isfinite(img_per_sec) else "-"
    return f"[{step:>{width}d}/{total}] loss {loss:.4f}  lr {lr:.2e}  {speed} img/s  ETA {format_duration(eta_s)}"
