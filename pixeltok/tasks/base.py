"""What a task is to the trainer: how its loss, eval statistics and best-checkpoint metric are computed.

The train loop, the checkpoints, `metrics.jsonl`, `pixeltok.evaluate` and `pixeltok.scaling` read a task only
through this interface, so a new task is a new module here plus one line in `pixeltok/tasks/__init__.py`; no line of
the loop changes. Evaluation is additive on purpose: `eval_sums` returns statistics that are summed over every eval
batch (and device), and `summarize` turns the totals into metrics. Means over a split are therefore exact whatever
the batching, and metrics that are not means of per-example values (mIoU from a confusion matrix) are computed
from the whole split as they must be.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np


class Task:
    """Base class: subclasses set the class attributes and implement the methods.

    Attributes:
      name: the `config.task` value.
      metric_names: eval metrics written to `metrics.jsonl` (and TensorBoard), loss first.
      best_metric: the eval metric that picks the best checkpoint; higher is better.
    """

    name: str = ""
    metric_names: tuple[str, ...] = ("loss",)
    best_metric: str = "loss"

    def check_config(self, config, info) -> None:
        """Raises ValueError (one line naming the key and what is valid) for a config this task cannot run."""

    def model_overrides(self, config) -> dict:
        """Extra `create_model` overrides this task needs (e.g. the head type)."""
        return {}

    def train_loss(self, model, batch: Mapping[str, jax.Array], *, rng: jax.Array, config) -> jax.Array:
        """Scalar mean training loss of `model` (an nnx module in train mode) on one (micro-)batch."""
        raise NotImplementedError

    def eval_sums(self, model, batch: Mapping[str, jax.Array], config) -> dict[str, jax.Array]:
        """Additive statistics of one padded eval batch; `batch["mask"]` (B,) marks the real examples."""
        raise NotImplementedError

    def summarize(self, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Metrics (every name of `metric_names`, plus `num_examples`) from sums over the whole split."""
        raise NotImplementedError

    def artifacts(self, sums: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
        """Optional JSON-serialisable detail written beside each eval (e.g. per-class IoU); None for none."""
        return None

    def describe(self, metrics: Mapping[str, float]) -> str:
        """Short text for the log line of an eval, e.g. `accuracy 87.50%`."""
        return "  ".join(f"{k} {metrics[k]:.4f}" for k in self.metric_names if k in metrics)

    def better(self, value: float, best: float | None) -> bool:
        """True when `value` of `best_metric` improves on `best` (None: nothing seen yet)."""
        return best is None or value > best
