"""Warm starts: a run that begins from another run's parameters (`init_from`) or full state (`cooldown_from`).

Both are planned from checkpoint metadata before the trainer writes anything (bad input raises
`train.ConfigError`), then read. How saved parameters become this run's (another resolution, patch size or head) is
decided by `models.pretrained`; where they are and how they are read is `pixeltok.checkpoint`'s.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Mapping

from flax import nnx, traverse_util

from pixeltok import checkpoint as ckpt_lib
from pixeltok import metrics as metrics_lib
from pixeltok import optim
from pixeltok.models import pretrained

if TYPE_CHECKING:
    from pixeltok.train import RunPlan


# What shapes a run's steps before a cooldown branch leaves it: must agree between a branch and its parent.
STABLE_PHASE_KEYS = ("dataset", "max_train_examples", "train_augment", "batch_size", "seed", "lr", "lr_scale_batch",
                     "warmup_steps", "warmup_init_lr", "wd", "b1", "b2", "grad_clip_norm", "accum_steps",
                     "label_smoothing", "ema_decay", "schedule", "wsd_decay_fraction", "mixup_alpha", "cutmix_alpha")


class ConfigError(ValueError):
    """Bad user input found before anything is written to the workdir (the CLI exits with code 2)."""


def log(msg: str) -> None:
    import jax
    if jax.process_index() == 0:
        print(msg, flush=True)


def plan_branch(plan: RunPlan) -> tuple[str, int] | None:
    """`cooldown_from=<workdir>:<step>`: the other run's checkpoint this run continues from (checked up front)."""
    if not plan.config.cooldown_from:
        return None
    src, _, step = plan.config.cooldown_from.rpartition(":")
    if not src or not step.isdigit():
        raise ConfigError(f"cooldown_from={plan.config.cooldown_from!r} must be <workdir>:<step>")
    try:
        ckpt_dir, step = ckpt_lib.resolve_checkpoint(src, int(step))
        ckpt_lib.check_same_shapes(plan.config, src)
        parent = metrics_lib.read_config_json(src)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"cooldown_from: {e}") from e
    c = plan.config
    if step >= c.total_steps:
        raise ConfigError(f"cooldown_from step {step} is not before total_steps={c.total_steps}")
    # A branch is a fresh run of its own length only if everything that shaped the shared phase is the same...
    for key in STABLE_PHASE_KEYS:
        if key in parent and parent[key] != c.to_dict().get(key):
            raise ConfigError(f"cooldown_from: the parent run has {key}={parent[key]!r} but this run "
                              f"{key}={c.to_dict().get(key)!r}; a cooldown branch must share the parent's recipe")
    # ... and it leaves the parent exactly where its own WSD decay starts (where the two schedules part).
    if c.schedule == "wsd" and step != optim.wsd_decay_start(c.total_steps, c.wsd_decay_fraction):
        raise ConfigError(f"cooldown_from step {step} is not this run's WSD decay start "
                          f"{optim.wsd_decay_start(c.total_steps, c.wsd_decay_fraction)} (total_steps="
                          f"{c.total_steps}, wsd_decay_fraction={c.wsd_decay_fraction})")
    return ckpt_dir, step


def plan_init_from(plan: RunPlan) -> tuple[str, int, dict] | None:
    """`init_from`: (checkpoint dir, step, saved parameter shapes), with the adaptation checked up front."""
    if not plan.config.init_from:
        return None
    try:
        src_dir, src_step, saved = ckpt_lib.saved_param_shapes(plan.config.init_from)
        pretrained.plan_adaptation(saved, model_params(plan.abstract_state), **adaptation_args(plan))
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"init_from={plan.config.init_from!r}: {str(e).splitlines()[0]}") from e
    return src_dir, src_step, saved


def model_params(state: Mapping[str, Any]) -> dict:
    """Flat {path: leaf} of the model's nnx.Params in a train state (abstract or concrete)."""
    return traverse_util.flatten_dict(nnx.to_pure_dict(nnx.filter_state(state["model_opt"][0], nnx.Param)))


def adaptation_args(plan: RunPlan) -> dict:
    """How `models.pretrained` adapts saved parameters to this run's model."""
    return dict(arch=plan.model.arch, posemb_resize=plan.config.posemb_resize)


def read_params(plan: RunPlan, ckpt_dir: str, step: int, saved_shapes, subtree: str = "model") -> dict:
    """A checkpoint's parameters adapted to this run's model (resolution, patch size, head), on their shards."""
    adapt = functools.partial(pretrained.adapt_params, **adaptation_args(plan))
    params, notes = ckpt_lib.read_params(ckpt_dir, step, saved_shapes, model_params(plan.abstract_state), adapt,
                                         mesh=plan.mesh, subtree=subtree)
    log(f"loaded {len(params)} parameter arrays from {ckpt_dir} step {step}"
        + (f" ({'; '.join(notes)})" if notes else ""))
    return params


def load_init_from(plan: RunPlan, state: dict, source: tuple[str, int, dict]) -> dict:
    """Another run's (or a converted model's) parameters into a fresh state; the optimizer starts fresh."""
    nested = traverse_util.unflatten_dict(read_params(plan, *source))
    nnx.replace_by_pure_dict(state["model_opt"][0], nested)
    if "ema" in state:
        nnx.replace_by_pure_dict(state["ema"], nested)
    return state
