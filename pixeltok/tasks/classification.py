"""Image classification: soft-target cross-entropy for training (labels arrive one-hot or mixed by Mixup/CutMix
from the data pipeline), top-1 accuracy and mean cross-entropy for evaluation; the best checkpoint has the highest
accuracy."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pixeltok import optim
from pixeltok.tasks.base import Task


class Classification(Task):
    name = "classification"
    metric_names = ("loss", "accuracy")
    best_metric = "accuracy"

    def check_config(self, config, info) -> None:
        if getattr(info, "dense", False):
            raise ValueError(f"dataset={config.dataset!r} holds per-pixel labels; use --config.task=segmentation "
                             "or a classification data set")
        head = config.model.get("head_type", "classification") if config.get("model") is not None else None
        if head not in (None, "classification"):
            raise ValueError(f"model.head_type={head!r} does not fit task 'classification'; valid: classification")

    def train_loss(self, model, batch, *, rng, config) -> jax.Array:
        logits = model(batch["image"], train=True, rng=rng)
        return optim.soft_ce(logits, batch["label"], config.label_smoothing).mean()

    def eval_sums(self, model, batch, config) -> dict[str, jax.Array]:
        logits = model(batch["image"], train=False)
        mask = batch["mask"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = (jnp.argmax(logits, axis=-1) == batch["label"]) & mask
        return {"loss_sum": jnp.sum(jnp.where(mask, ce, 0.0)), "correct": jnp.sum(correct.astype(jnp.int32)),
                "count": jnp.sum(mask.astype(jnp.int32))}

    def summarize(self, sums: Mapping[str, np.ndarray]) -> dict[str, float]:
        n = max(int(sums["count"]), 1)
        return {"loss": float(sums["loss_sum"]) / n, "accuracy": int(sums["correct"]) / n,
                "num_examples": int(sums["count"])}

    def describe(self, metrics) -> str:
        return f"loss {metrics['loss']:.4f}  accuracy {100 * metrics['accuracy']:.2f}%"
