"""Reading run workdirs (docs/architecture.md): `config.json` and `metrics.jsonl` → one record per run.

A run is the data unit of a scaling fit (docs/scaling.md). Errors name the run and what would be valid.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterable


# The eval metric each task is judged by (higher is better); pixeltok.tasks: Task.best_metric.
TASK_QUALITY = {"classification": "accuracy", "segmentation": "miou"}


@dataclasses.dataclass
class Run:
    """One training run. `evals`: eval rows of metrics.jsonl sorted by step (last row kept per step)."""
    path: str
    name: str
    config: dict
    patch_size: float
    image_size: float | None
    model_name: str
    arch: str
    seed: int | None
    dataset: str | None
    num_params: float | None
    num_params_non_embedding: float | None
    tokens_per_image: float | None
    train_flops_per_image: float | None
    evals: list
    warnings: list
    checkpoint_eval: dict | None = None     # set by --eval: {"loss", <quality metric>, "step"}

    @property
    def task(self) -> str:
        """config.json `task` (runs from before tasks existed are classification)."""
        return str(self.config.get("task") or "classification")

    @property
    def quality_metric(self) -> str:
        """The task's best metric (higher is better): "error" is 1 − this. From `task` (classification →
        accuracy, segmentation → miou), else from a `best_<name>` field of the eval rows, else accuracy."""
        if self.task in TASK_QUALITY:
            return TASK_QUALITY[self.task]
        for row in self.evals:
            for k in row:
                if k.startswith("best_") and k[5:] in row:
                    return k[5:]
        return "accuracy"

    def value(self, metric: str = "loss", select: str = "final") -> tuple[float, int | None]:
        """The fitted quantity: `metric` of the final (or best) eval row; "error" = 1 − the task's quality metric.

        With a checkpoint re-evaluation (--eval) the final value comes from it.
        """
        if select not in ("final", "best"):
            raise ValueError(f"select must be 'final' or 'best', got {select!r}")
        rows = list(self.evals)
        if self.checkpoint_eval is not None and select == "final":
            rows = [dict(self.checkpoint_eval, split="eval")]
        vals = []
        for row in rows:
            v = _metric(row, metric, self.quality_metric)
            if v is not None:
                vals.append((v, row.get("step")))
        if not vals:
            raise ValueError(f"run {self.name}: no eval rows with {metric!r} in {self.path}/metrics.jsonl")
        if select == "final":
            return vals[-1]
        finite = [v for v in vals if math.isfinite(v[0])]
        if not finite:
            return vals[-1]
        return min(finite, key=lambda v: v[0])

    def curve(self, metric: str = "loss") -> tuple[list, list]:
        """(cumulative train FLOPs, metric) of the eval rows that log both."""
        xs, ys = [], []
        for row in self.evals:
            v = _metric(row, metric, self.quality_metric)
            f = row.get("flops")
            if v is not None and isinstance(f, (int, float)) and math.isfinite(v) and f > 0:
                xs.append(float(f))
                ys.append(v)
        return xs, ys


def _metric(row: dict, metric: str, quality: str = "accuracy") -> float | None:
    if metric == "error":
        q = row.get(quality)
        return None if q is None else 1.0 - float(q)
    v = row.get(metric)
    return None if v is None else float(v)


def find_run_dirs(paths: Iterable[str]) -> list[str]:
    """Each path is a run workdir (has config.json) or a folder of run workdirs. Missing paths → ValueError."""
    out = []
    for p in paths:
        if not os.path.isdir(p):
            raise ValueError(f"run directory {p!r} does not exist")
        if os.path.isfile(os.path.join(p, "config.json")):
            out.append(p)
            continue
        kids = sorted(os.path.join(p, d) for d in os.listdir(p)
                      if os.path.isfile(os.path.join(p, d, "config.json")))
        if not kids:
            raise ValueError(f"{p!r} is neither a run workdir nor a folder of them (no config.json found)")
        out.extend(kids)
    if not out:
        raise ValueError("no runs given")
    seen, unique = set(), []
    for d in out:                       # overlapping arguments (a run and its parent folder) count once
        key = os.path.realpath(d)
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def _num(cfg: dict, key: str) -> float | None:
    v = cfg.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def load_run(path: str, *, need_metrics: bool = True) -> Run:
    """Reads one workdir. Raises ValueError naming the run when config.json or metrics.jsonl is missing/unusable."""
    name = os.path.basename(os.path.normpath(path))
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"run {name}: missing config.json in {path}")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"run {name}: config.json is not valid JSON ({e})") from None
    p = _num(cfg, "patch_size")
    if p is None or p <= 0:
        raise ValueError(f"run {name}: config.json has no positive patch_size (got {cfg.get('patch_size')!r})")
    model_name = str(cfg.get("model_name", "unknown"))
    warns = []
    evals = {}
    met_path = os.path.join(path, "metrics.jsonl")
    if os.path.isfile(met_path):
        with open(met_path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    warns.append(f"run {name}: metrics.jsonl line {i} is not JSON (skipped)")
                    continue
                if isinstance(row, dict) and row.get("split") == "eval" and "step" in row:
                    evals[int(row["step"])] = row          # a resumed run may re-log a step: keep the last
    run = Run(path=path, name=name, config=cfg, patch_size=p, image_size=_num(cfg, "image_size"),
              model_name=model_name, arch=model_name.split("_")[0], seed=cfg.get("seed"),
              dataset=cfg.get("dataset"), num_params=_num(cfg, "num_params"),
              num_params_non_embedding=_num(cfg, "num_params_non_embedding"),
              tokens_per_image=_num(cfg, "tokens_per_image"),
              train_flops_per_image=_num(cfg, "train_flops_per_image"),
              evals=[evals[k] for k in sorted(evals)], warnings=warns)
    if need_metrics:
        require_evals(run)
    return run


def require_evals(run: Run) -> None:
    """Raises ValueError naming the run when it has no eval rows to fit (no metrics.jsonl, or none in it)."""
    if run.evals:
        return
    if os.path.isfile(os.path.join(run.path, "metrics.jsonl")):
        raise ValueError(f"run {run.name}: metrics.jsonl has no eval rows (split == 'eval') in {run.path}")
    raise ValueError(f"run {run.name}: missing metrics.jsonl in {run.path} (use --eval to evaluate its checkpoint)")


def group_key(run: Run, metric: str = "loss") -> tuple:
    """Runs fitted together: same architecture, model size (name + width/depth overrides), resolution, data set."""
    m = run.config.get("model") if isinstance(run.config.get("model"), dict) else {}
    return (run.arch, run.model_name, run.image_size, run.dataset, m.get("width"), m.get("depth"), metric)


def group_label(key: tuple) -> str:
    arch, model, res, dataset, width, depth, metric = key
    extra = "".join(f",{k}={v}" for k, v in (("width", width), ("depth", depth)) if v is not None)
    res_s = f"@{res:g}" if res is not None else ""
    return f"{model}{res_s}{extra} [{dataset or '?'}; {metric}]"
