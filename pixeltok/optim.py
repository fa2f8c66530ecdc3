"""Optimizer pieces of the paper's recipe (paper.md §3): lr scaling, warmup + cosine schedule, AdamW with a
weight-decay mask, optional global-norm clipping, and the soft-target cross-entropy loss.

Everything here is a pure function of the config so `train.py` stays a readable loop.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

# Parameters that never decay whatever their rank (adventurer.md §3: `pos_embed` and `cls` are excluded in the
# official code; DeiT/timm's `no_weight_decay()` excludes the same two).
NO_DECAY_NAMES = frozenset({"pos_embed", "cls_token"})


def lr_scale(config) -> float:
    """Linear lr scaling factor `batch_size / lr_scale_batch` (paper.md §3.2); `lr_scale_batch <= 0` disables it."""
    if config.lr_scale_batch <= 0:
        return 1.0
    return config.batch_size / config.lr_scale_batch


def peak_lr(config) -> float:
    """The lr reached at the end of warmup: base lr times the batch scaling factor."""
    return config.lr * lr_scale(config)


def make_schedule(*, peak: float, total_steps: int, warmup_steps: int, init_lr: float,
                  end_lr: float) -> Callable[[Any], jax.Array]:
    """Linear warmup from `init_lr` to `peak`, then half-cosine from `peak` to `end_lr`, stepped per optimizer step.

    `schedule(count)` is the lr of the update that follows `count` completed updates (optax's convention), so the
    first step uses `init_lr` and the lr reaches `peak` at count = warmup_steps. timm steps the official schedule per
    epoch (paper.md §3.2); per-step is smoother and is what short runs need. warmup/end lrs are not batch-scaled,
    as in timm (`warmup_lr`, `min_lr`).
    """
    warmup_steps = max(int(warmup_steps), 0)
    decay_steps = max(int(total_steps) - warmup_steps, 1)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = init_lr + (peak - init_lr) * count / max(warmup_steps, 1)
        t = jnp.clip((count - warmup_steps) / decay_steps, 0.0, 1.0)
        cos = end_lr + 0.5 * (peak - end_lr) * (1.0 + jnp.cos(math.pi * t))
        return jnp.where(count < warmup_steps, warm, cos)

    return schedule


def schedule_from_config(config, total_steps: int, warmup_steps: int) -> Callable[[Any], jax.Array]:
    """`make_schedule` with the config's lr, warmup_init_lr and end_lr (peak = lr × batch/lr_scale_batch)."""
    return make_schedule(peak=peak_lr(config), total_steps=total_steps, warmup_steps=warmup_steps,
                         init_lr=config.warmup_init_lr, end_lr=config.end_lr)


def _key_name(key) -> Any:
    """The plain name of one pytree path entry (DictKey, GetAttrKey, SequenceKey, FlattenedIndexKey)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def path_names(path) -> tuple:
    """The key names of a pytree path, e.g. `('blocks', 3, 'mixer', 'A_log')` (no `.value` suffix)."""
    names = tuple(_key_name(k) for k in path)
    return tuple(n for n in names if n != "value")


def _ndim(x) -> int:
    if isinstance(x, nnx.Variable):
        x = x.get_value()
    return len(np.shape(x)) if not hasattr(x, "ndim") else x.ndim


def decays(path, leaf) -> bool:
    """Whether the parameter at `path` gets weight decay: rank >= 2 and no path name in NO_DECAY_NAMES."""
    return _ndim(leaf) >= 2 and not NO_DECAY_NAMES.intersection(n for n in path_names(path) if isinstance(n, str))


def decay_mask(params):
    """Pytree of bools with the structure of `params` (an nnx.State of Variables or of raw arrays).

    Variables are treated as leaves so the mask matches what `nnx.Optimizer` hands optax both at `init`
    (Variables) and at `update` (raw arrays).
    """
    return jax.tree_util.tree_map_with_path(decays, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_tx(config, schedule) -> optax.GradientTransformation:
    """AdamW(b1, b2, wd) with the decay mask, preceded by global-norm clipping when `grad_clip_norm > 0`."""
    adamw = optax.adamw(learning_rate=schedule, b1=config.b1, b2=config.b2, eps=1e-8,
                        weight_decay=config.wd, mask=decay_mask)
    if config.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)
    return adamw


def soft_ce(logits: jax.Array, targets: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example soft-target cross-entropy.

    Args:
      logits: (batch, classes) any float dtype; computed in float32.
      targets: (batch, classes) soft targets summing to 1 (mixup/cutmix already applied by the data pipeline).
      label_smoothing: eps; targets become (1 - eps) * targets + eps / classes (timm folds it into the mixup
        targets the same way, paper.md §3.2).

    Returns:
      (batch,) float32 losses.
    """
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    if label_smoothing > 0:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / logits.shape[-1]
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
