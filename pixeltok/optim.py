"""Optimizer pieces of the paper's recipe (docs/paper_targets.md): lr scaling, warmup + cosine or WSD schedule,
AdamW with a weight-decay mask, optional global-norm clipping, and the soft-target cross-entropy loss.

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

# Parameters that never decay whatever their rank (docs/models.md: `pos_embed` and `cls` are excluded in the
# official code; DeiT/timm's `no_weight_decay()` excludes the same two).
NO_DECAY_NAMES = frozenset({"pos_embed", "cls_token"})


def lr_scale(config) -> float:
    """Linear lr scaling factor `batch_size / lr_scale_batch` (docs/paper_targets.md); `lr_scale_batch <= 0` = off."""
    if config.lr_scale_batch <= 0:
        return 1.0
    return config.batch_size / config.lr_scale_batch


def peak_lr(config) -> float:
    """The lr reached at the end of warmup: base lr times the batch scaling factor."""
    return config.lr * lr_scale(config)


SCHEDULES = ("cosine", "wsd")
WSD_SHAPES = ("linear", "sqrt", "cosine")


def wsd_decay_steps(total_steps: int, decay_fraction: float) -> int:
    """Length of the WSD cooldown: `round(decay_fraction * total_steps)` steps, at least 1.

    The one definition shared by the schedule and by sweeps that branch cooldowns off a long run (launch/sweep.py),
    so a branch's restore step is exactly its own decay start.
    """
    return max(int(round(float(decay_fraction) * int(total_steps))), 1)


def wsd_decay_start(total_steps: int, decay_fraction: float) -> int:
    """First step of the WSD cooldown (`total_steps - wsd_decay_steps(...)`); lr is still the peak at this count."""
    return int(total_steps) - wsd_decay_steps(total_steps, decay_fraction)


def check_schedule(kind: str, *, total_steps: int, warmup_steps: int, decay_fraction: float = 0.2,
                   decay_shape: str = "linear") -> None:
    """Raises ValueError (one line naming the bad value and what is valid) for an unusable schedule setting."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule={kind!r} is not one of {SCHEDULES}")
    if kind != "wsd":
        return
    if not 0.0 < float(decay_fraction) <= 1.0:
        raise ValueError(f"wsd_decay_fraction={decay_fraction!r} must be in (0, 1]")
    if decay_shape not in WSD_SHAPES:
        raise ValueError(f"wsd_decay_shape={decay_shape!r} is not one of {WSD_SHAPES}")
    start = wsd_decay_start(total_steps, decay_fraction)
    if start < max(int(warmup_steps), 0):
        raise ValueError(f"WSD cooldown starts at step {start} (total_steps={total_steps}, wsd_decay_fraction="
                         f"{decay_fraction}) before warmup ends (warmup_steps={warmup_steps}); lower the decay "
                         f"fraction or the warmup")


def make_schedule(*, peak: float, total_steps: int, warmup_steps: int, init_lr: float, end_lr: float,
                  kind: str = "cosine", decay_fraction: float = 0.2,
                  decay_shape: str = "linear") -> Callable[[Any], jax.Array]:
    """Linear warmup from `init_lr` to `peak`, then the decay `kind`, stepped per optimizer step.

    `schedule(count)` is the lr of the update that follows `count` completed updates (optax's convention), so the
    first step uses `init_lr` and the lr reaches `peak` at count = warmup_steps. timm steps the official schedule per
    epoch (docs/paper_targets.md); per-step is smoother and is what short runs need. warmup/end lrs are not
    batch-scaled, as in timm (`warmup_lr`, `min_lr`).

    kind = "cosine": half-cosine from `peak` (count = warmup_steps) to `end_lr` (count = total_steps).

    kind = "wsd" (warmup-stable-decay): `peak` from warmup_steps up to the decay start S = total_steps - D,
    D = `wsd_decay_steps(total_steps, decay_fraction)`, then from `peak` at count S to `end_lr` at count total_steps
    with t = (count - S) / D and the shape
      "linear": 1 - t;   "sqrt": 1 - sqrt(t);   "cosine": (1 + cos(pi t)) / 2,
    lr = end_lr + (peak - end_lr) * shape(t). Prefix property (what cooldown branches rely on): S is non-decreasing
    in total_steps, so a WSD schedule of total T equals the schedule of any longer WSD run with the same warmup,
    peak and fraction at every count <= S(T); a run restored from the long run's state at step S(T) and continued
    with its own T-step schedule is exactly a fresh T-step WSD run (same data order).
    """
    check_schedule(kind, total_steps=total_steps, warmup_steps=warmup_steps, decay_fraction=decay_fraction,
                   decay_shape=decay_shape)
    warmup_steps = max(int(warmup_steps), 0)
    total_steps = int(total_steps)

    def warm(count):
        return init_lr + (peak - init_lr) * count / max(warmup_steps, 1)

    if kind == "cosine":
        decay_steps = max(total_steps - warmup_steps, 1)

        def schedule(count):
            count = jnp.asarray(count, jnp.float32)
            t = jnp.clip((count - warmup_steps) / decay_steps, 0.0, 1.0)
            cos = end_lr + 0.5 * (peak - end_lr) * (1.0 + jnp.cos(math.pi * t))
            return jnp.where(count < warmup_steps, warm(count), cos)

        return schedule

    d = wsd_decay_steps(total_steps, decay_fraction)
    start = total_steps - d

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        t = jnp.clip((count - start) / d, 0.0, 1.0)
        if decay_shape == "linear":
            shape = 1.0 - t
        elif decay_shape == "sqrt":
            shape = 1.0 - jnp.sqrt(t)
        else:
            shape = 0.5 * (1.0 + jnp.cos(math.pi * t))
        decay = end_lr + (peak - end_lr) * shape
        return jnp.where(count < warmup_steps, warm(count), jnp.where(count <= start, peak, decay))

    return schedule


def schedule_from_config(config, total_steps: int, warmup_steps: int) -> Callable[[Any], jax.Array]:
    """`make_schedule` with the config's lr, warmup_init_lr, end_lr and schedule keys (peak = lr × batch/scale).

    `schedule` ("cosine" | "wsd"), `wsd_decay_fraction`, `wsd_decay_shape`; configs without them (older runs'
    config.json) get the cosine schedule.
    """
    return make_schedule(peak=peak_lr(config), total_steps=total_steps, warmup_steps=warmup_steps,
                         init_lr=config.warmup_init_lr, end_lr=config.end_lr,
                         kind=config.get("schedule", "cosine"),
                         decay_fraction=config.get("wsd_decay_fraction", 0.2),
                         decay_shape=config.get("wsd_decay_shape", "linear"))


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
        targets the same way, docs/paper_targets.md).

    Returns:
      (batch,) float32 losses.
    """
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    if label_smoothing > 0:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / logits.shape[-1]
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
