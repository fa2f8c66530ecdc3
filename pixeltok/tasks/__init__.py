"""Tasks (`config.task`): what is learned from a batch and how it is scored. See `pixeltok/tasks/base.py`.

    task = get_task(config.task)
    loss = task.train_loss(model, batch, rng=rng, config=config)
"""

from __future__ import annotations

import importlib

from pixeltok.tasks.base import Task

# name -> "module:Class", imported on first use so a task's dependencies load only when it runs.
TASKS = {
    "classification": "pixeltok.tasks.classification:Classification",
    "segmentation": "pixeltok.tasks.segmentation:Segmentation",
}


def get_task(name: str) -> Task:
    """The task registered as `name`; ValueError naming the valid ones otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["TASKS", "Task", "get_task"]
