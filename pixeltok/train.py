"""The pixeltok trainer: one readable loop in big_vision's section order (style.md §1).

    logging → mesh → data → model & optimizer → update step → checkpoint restore → loop with evals

`train_and_evaluate(config, workdir)` trains one run; re-running it on the same workdir resumes from the latest
checkpoint (model, optimizer, step, data-iterator position; per-step randomness is `fold_in(key, step)`, so there is
no RNG state) and ends where an uninterrupted run would. Everything the user can get wrong (config, model shapes,
data set, mesh, init_from) is checked BEFORE anything is written to the workdir and raised as `ConfigError`.
`evaluate_checkpoint(workdir)` re-evaluates a saved run (the scaling analyzer's `--eval`).

Signals: SIGTERM/SIGINT set a flag; the loop finishes the current step, saves a checkpoint, waits for it to commit
and returns `{"preempted": True, "signal": signum, ...}`; `pixeltok.main` then exits with 128 + signum (143 for
SIGTERM), so schedulers see an unfinished run, and the same command resumes it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

from pixeltok import checkpoint as ckpt_lib
from pixeltok import config_utils
from pixeltok import data as data_lib
from pixeltok import flops as flops_lib
from pixeltok import memory as memory_lib
from pixeltok import metrics as metrics_lib
from pixeltok import models
from pixeltok import optim
from pixeltok import sharding

# Keys that `config.json` adds to the config (run facts); stripped again when a config is read back.
RUN_FACTS = ("num_devices", "num_processes", "mesh_requested", "num_params", "num_params_non_embedding",
             "tokens_per_image", "train_flops_per_image", "steps_per_epoch", "num_train_examples", "jax_version")
# Keys whose change makes an existing checkpoint unusable (shapes differ); checked before resuming.
SHAPE_KEYS = ("model_name", "patch_size", "image_size", "num_classes", "num_channels", "model")
NO_BAD_STEP = np.iinfo(np.int32).max


class ConfigError(ValueError):
    """Bad user input found before anything is written to the workdir (the CLI exits with code 2)."""


class TrainingDivergedError(RuntimeError):
    """A non-finite loss or gradient norm; the run stops without saving the bad state."""


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


# ===================================================================================================== set-up
@dataclasses.dataclass
class Setup:
    """Everything derived from the config and checked before the workdir is touched."""
    config: ml_collections.ConfigDict       # resolved copy (num_classes, num_channels, total/warmup steps filled)
    info: Any                               # pixeltok.data.DataInfo
    mesh: jax.sharding.Mesh
    arch: str                               # "vit" | "adventurer"
    overrides: dict                         # create_model overrides
    graphdef: Any                           # nnx graphdef of (model, optimizer)
    model_graphdef: Any                     # nnx graphdef of the model alone (evaluation)
    abstract_state: dict                    # {"model_opt": State, ["ema": State]} of ShapeDtypeStructs
    state_shardings: dict                   # same structure, NamedShardings
    schedule: Any
    tx: optax.GradientTransformation
    num_params: int
    num_params_non_embedding: int
    tokens_per_image: int
    train_flops_per_image: float
    steps_per_epoch: float


def model_overrides(config) -> dict:
    """create_model keyword overrides: `config.model` plus the top-level `dtype` and `remat`."""
    overrides = dict(config.model.to_dict()) if config.get("model") is not None else {}
    overrides["dtype"] = config.dtype
    overrides["remat"] = config.remat or None
    return overrides


def _resolve_steps(config, num_train: int) -> tuple[int, int, float]:
    """(total_steps, warmup_steps, steps_per_epoch): step counts win over epoch counts (config_utils)."""
    steps_per_epoch = num_train / config.batch_size
    total = config.total_steps if config.total_steps > 0 else int(math.ceil(config.num_epochs * steps_per_epoch))
    warmup = config.warmup_steps if config.warmup_steps >= 0 else int(round(config.warmup_epochs * steps_per_epoch))
    if total <= 0:
        raise ConfigError(f"total_steps resolves to {total} (total_steps={config.total_steps}, num_epochs="
                          f"{config.num_epochs}); set a positive --config.total_steps or num_epochs")
    return total, warmup, steps_per_epoch


def _check_loop_keys(config) -> None:
    if config.batch_size <= 0:
        raise ConfigError(f"batch_size={config.batch_size} must be positive")
    if config.accum_steps < 1 or config.batch_size % config.accum_steps:
        raise ConfigError(f"accum_steps={config.accum_steps} must be >= 1 and divide batch_size={config.batch_size}")
    if config.log_every_steps <= 0:
        raise ConfigError(f"log_every_steps={config.log_every_steps} must be positive")
    if config.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"dtype={config.dtype!r} is not supported; valid: float32, bfloat16")
    if config.model_name not in models.MODELS:
        raise ConfigError(f"unknown model_name {config.model_name!r}; valid: {', '.join(models.MODELS)}")


def _check_data(config, info) -> None:
    """Class/channel counts of the config against the data set; fills -1 entries from the data."""
    for key, have in (("num_classes", info.num_classes), ("num_channels", info.num_channels)):
        want = config[key]
        if want > 0 and want != have:
            raise ConfigError(f"{key}={want} does not match data set {config.dataset!r}, which has {have}; "
                              f"drop --config.{key} or set it to {have}")
        config[key] = int(have)


def _check_mesh(config, mesh, *, train: bool) -> None:
    """Global batch sizes must split evenly over data-parallel devices and processes (style.md: asserted)."""
    shards = math.prod(mesh.shape[a] for a in sharding.batch_axes(mesh))
    mesh_desc = sharding.describe_mesh(mesh)
    nproc = jax.process_count()
    checks = [("eval_batch_size", config.eval_batch_size)]
    if train:
        checks = [("batch_size", config.batch_size)] + checks
    for key, size in checks:
        if size % shards:
            raise ConfigError(f"{key}={size} is not divisible by the {shards} data-parallel devices of mesh "
                              f"{mesh_desc}; use a multiple of {shards}")
        if size % nproc:
            raise ConfigError(f"{key}={size} is not divisible by the {nproc} processes; use a multiple of {nproc}")
    micro = config.batch_size // config.accum_steps
    if train and micro % shards:
        raise ConfigError(f"micro-batch batch_size/accum_steps={micro} is not divisible by the {shards} "
                          f"data-parallel devices of mesh {mesh_desc}")


def _build(config, overrides: dict, tx):
    """(model, optimizer) from the config; called under nnx.eval_shape and inside the jitted init."""
    model = models.create_model(config.model_name, patch_size=config.patch_size, image_size=config.image_size,
                                num_classes=config.num_classes, num_channels=config.num_channels, seed=config.seed,
                                **overrides)
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def _train_state(model, opt, ema: bool) -> dict:
    """The pytree the jitted step carries: nnx state of (model, optimizer) [+ an EMA copy of the params]."""
    state = {"model_opt": nnx.state((model, opt))}
    if ema:
        state["ema"] = nnx.state(model, nnx.Param)
    return state


def setup(config, *, train: bool = True, mesh_cfg=None) -> Setup:
    """Validates the config against the data set, devices and model; returns the derived run description.

    Raises:
      ConfigError: one line naming the bad value and what is valid. Nothing is written anywhere except the
        prepared data set under `config.data_dir` (data_lib.get_info prepares it on first use).
    """
    config = config.copy_and_resolve_references()
    try:
        _check_loop_keys(config)
        info = data_lib.get_info(config)
        with config.unlocked():
            _check_data(config, info)
        mesh = sharding.make_mesh(mesh_cfg if mesh_cfg is not None else config.mesh)
        _check_mesh(config, mesh, train=train)
        num_train = info.num_train if config.max_train_examples <= 0 else min(info.num_train,
                                                                              config.max_train_examples)
        total, warmup, steps_per_epoch = _resolve_steps(config, num_train)
        with config.unlocked():
            config.total_steps, config.warmup_steps = total, warmup
        schedule = optim.schedule_from_config(config, total, warmup)
        tx = optim.make_tx(config, schedule)
        overrides = model_overrides(config)
        arch = models.resolve_architecture(config.model_name, **overrides)[0]
        abs_model, abs_opt = nnx.eval_shape(lambda: _build(config, overrides, tx))
        graphdef, _ = nnx.split((abs_model, abs_opt))
        model_graphdef, _ = nnx.split(abs_model)
        abstract_state = _train_state(abs_model, abs_opt, config.ema_decay > 0)
        shardings = sharding.state_shardings(abstract_state, mesh, config.sharding_rules or None)
        tokens = flops_lib.tokens_per_image(config.model_name, config.patch_size, config.image_size)
        train_flops = flops_lib.train_flops_per_image(config.model_name, config.patch_size, config.image_size,
                                                      **overrides)
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError, NotADirectoryError, KeyError, TypeError) as e:
        raise ConfigError(str(e).splitlines()[0] if str(e) else repr(e)) from e
    return Setup(config=config, info=info, mesh=mesh, arch=arch, overrides=overrides, graphdef=graphdef,
                 model_graphdef=model_graphdef,
                 abstract_state=abstract_state, state_shardings=shardings, schedule=schedule, tx=tx,
                 num_params=models.count_params(abs_model),
                 num_params_non_embedding=models.count_params(abs_model, exclude_embeddings=True),
                 tokens_per_image=tokens, train_flops_per_image=train_flops, steps_per_epoch=steps_per_epoch)


def _check_workdir(config, workdir: str) -> None:
    """A workdir with checkpoints must hold a run of the same shapes, or resuming would fail half-way."""
    if not ckpt_lib.has_checkpoint(workdir) or not os.path.exists(os.path.join(workdir, metrics_lib.CONFIG_FILE)):
        return
    old = metrics_lib.read_config_json(workdir)
    new = config.to_dict()
    for key in SHAPE_KEYS:
        a, b = old.get(key), new.get(key)
        if isinstance(b, Mapping):
            b = {k: v for k, v in b.items()}
        if a != b and not (key in ("num_classes", "num_channels") and a is None):
            raise ConfigError(f"workdir {workdir!r} holds a run with {key}={a!r} but this config has {key}={b!r}; "
                              "use another --workdir")


def _check_init_from(s: Setup) -> tuple[str, int, dict] | None:
    """Resolves `init_from` and plans which saved parameters to load (shapes checked here, before any write).

    Returns (checkpoint dir, step, restore target) or None. The target is the pure-dict `model` subtree: our
    abstract param (with its sharding) where shapes agree; the saved shape, replicated, for a `pos_embed` that is
    resized after loading (resolution hand-off, paper.md §3.1); a `head` of another class count is left out and
    keeps its fresh init.
    """
    if not s.config.init_from:
        return None
    try:
        src_dir, src_step = ckpt_lib.resolve_checkpoint(s.config.init_from)
        saved = ckpt_lib.state_metadata(src_dir, src_step)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"init_from={s.config.init_from!r}: {e}") from e
    if "model" not in saved:
        raise ConfigError(f"init_from={s.config.init_from!r} holds no model parameters")
    saved = traverse_util.flatten_dict(saved["model"])
    ours = traverse_util.flatten_dict(_pure_params(s.abstract_state["model_opt"], s.state_shardings["model_opt"]))
    replicated = NamedSharding(s.mesh, P())
    target = {}
    for path, leaf in ours.items():
        if path not in saved:
            raise ConfigError(f"init_from: parameter {'/'.join(map(str, path))} is missing in {src_dir}")
        shape = tuple(saved[path].shape)
        if shape == tuple(leaf.shape):
            target[path] = leaf
        elif path[-1] == "pos_embed":
            target[path] = jax.ShapeDtypeStruct(shape, saved[path].dtype, sharding=replicated)
        elif path[0] == "head":
            continue
        else:
            raise ConfigError(f"init_from: parameter {'/'.join(map(str, path))} has shape {shape} in {src_dir} but "
                              f"{tuple(leaf.shape)} here")
    return src_dir, src_step, traverse_util.unflatten_dict(target)


def _pure_params(model_opt_state, model_opt_shardings) -> dict:
    """Pure dict {path: ShapeDtypeStruct with sharding} of the model's nnx.Params."""
    params = nnx.to_pure_dict(nnx.filter_state(model_opt_state[0], nnx.Param))
    shard = nnx.to_pure_dict(nnx.filter_state(model_opt_shardings[0], nnx.Param))
    return jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), params, shard)


# ===================================================================================================== steps
def make_train_step(s: Setup):
    """The jitted, donated update: loss/grad (optionally over accum_steps micro-batches), AdamW, EMA, metrics.

    step(state, batch, bad) -> (state, metrics, bad). `bad` is an int32 pair (first non-finite step, kind 1 = loss,
    2 = grad norm) kept on device so that detecting divergence needs no host sync per step.
    """
    config, graphdef = s.config, s.graphdef
    k = config.accum_steps
    base_key = config.seed
    ema_decay = config.ema_decay

    def loss_fn(params, rest, gdef, images, labels, rng):
        model = nnx.merge(gdef, params, rest)
        logits = model(images, train=True, rng=rng)
        return optim.soft_ce(logits, labels, config.label_smoothing).mean()

    grad_fn = jax.value_and_grad(loss_fn)

    def step(state, batch, bad):
        model, opt = nnx.merge(graphdef, state["model_opt"])
        count = opt.step[...]                                   # completed updates before this one
        rng = jax.random.fold_in(jax.random.key(base_key), count)
        gdef, params, rest = nnx.split(model, nnx.Param, ...)
        if k == 1:
            loss, grads = grad_fn(params, rest, gdef, batch["image"], batch["label"], rng)
        else:
            # Micro-batch j = examples j, j+k, j+2k, ...: every device keeps a slice of every micro-batch, and
            # the mean of k equal-size micro-batch means is the full-batch mean.
            micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch)

            def body(carry, xs):
                j, mb = xs
                mb = jax.tree.map(sharding.constrain_batch, mb)
                l, g = grad_fn(params, rest, gdef, mb["image"], mb["label"], jax.random.fold_in(rng, j))
                return (carry[0] + l, jax.tree.map(jnp.add, carry[1], g)), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(k), micro))
            loss, grads = loss / k, jax.tree.map(lambda g: g / k, grads)
        grad_norm = optax.tree.norm(grads)
        opt.update(model, grads)
        new_state = {"model_opt": nnx.state((model, opt))}
        if ema_decay > 0:
            new_state["ema"] = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                                            state["ema"], nnx.state(model, nnx.Param))
        kind = jnp.where(~jnp.isfinite(loss), 1, jnp.where(~jnp.isfinite(grad_norm), 2, 0))
        first = (bad[0] == NO_BAD_STEP) & (kind > 0)
        bad = jnp.where(first, jnp.stack([(count + 1).astype(jnp.int32), kind.astype(jnp.int32)]), bad)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": s.schedule(count)}
        return new_state, metrics, bad

    batch_sh = sharding.batch_sharding(s.mesh)
    replicated = NamedSharding(s.mesh, P())
    return jax.jit(step, donate_argnums=(0, 2),
                   in_shardings=(s.state_shardings, batch_sh, replicated),
                   out_shardings=(s.state_shardings, replicated, replicated))


def make_eval_step(s: Setup):
    """eval(model_state, params, batch) -> masked sums {loss_sum, correct, count} over one padded eval batch.

    `model_state` is the model's nnx state; `params` (an nnx.Param state, e.g. the EMA) replaces its params, or None.
    """
    graphdef = s.model_graphdef

    def eval_step(model_state, params, batch):
        model = nnx.merge(graphdef, model_state)
        if params is not None:
            nnx.update(model, params)
        logits = model(batch["image"], train=False)
        mask = batch["mask"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = (jnp.argmax(logits, axis=-1) == batch["label"]) & mask
        return {"loss_sum": jnp.sum(jnp.where(mask, ce, 0.0)), "correct": jnp.sum(correct.astype(jnp.int32)),
                "count": jnp.sum(mask.astype(jnp.int32))}

    return jax.jit(eval_step, out_shardings=NamedSharding(s.mesh, P()))


def _put_batch(mesh, batch: Mapping[str, np.ndarray]) -> dict:
    """Per-process numpy batch -> global jax arrays split over the data-parallel axes."""
    sh = sharding.batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in batch.items()}


def evaluate(s: Setup, eval_step, model_state, params=None) -> dict:
    """Top-1 and mean CE over the whole eval split (mask-weighted sums: padded rows never count).

    `params` (e.g. the EMA) replaces the params of `model_state` when given."""
    cfg = s.config
    totals = {"loss_sum": 0.0, "correct": 0, "count": 0}
    batches = data_lib.make_eval_batches(cfg, process_index=jax.process_index(), process_count=jax.process_count())
    for i, batch in enumerate(batches):
        if 0 <= cfg.get("eval_max_batches", -1) <= i:
            break
        batch = {k: batch[k] for k in ("image", "label", "mask")}
        out = jax.device_get(eval_step(model_state, params, _put_batch(s.mesh, batch)))
        totals = {k: totals[k] + out[k].item() for k in totals}
    n = max(totals["count"], 1)
    return {"loss": totals["loss_sum"] / n, "accuracy": totals["correct"] / n, "num_examples": int(totals["count"])}


# ===================================================================================================== checkpoints
def to_ckpt(state: Mapping[str, Any]) -> dict:
    """Train state -> pure nested dict {"model", "opt"[, "ema"]} (what Orbax stores; restorable without nnx)."""
    out = {"model": nnx.to_pure_dict(state["model_opt"][0]), "opt": nnx.to_pure_dict(state["model_opt"][1])}
    if "ema" in state:
        out["ema"] = nnx.to_pure_dict(state["ema"])
    return out


def from_ckpt(pure: Mapping[str, Any], template: Mapping[str, Any]) -> dict:
    """Inverse of `to_ckpt` onto the structure of `template` (an abstract train state)."""
    model_opt = jax.tree.map(lambda x: x, template["model_opt"])       # fresh Variables, same structure
    nnx.replace_by_pure_dict(model_opt[0], pure["model"])
    nnx.replace_by_pure_dict(model_opt[1], pure["opt"])
    out = {"model_opt": model_opt}
    if "ema" in template:
        ema = jax.tree.map(lambda x: x, template["ema"])
        nnx.replace_by_pure_dict(ema, pure["ema"])
        out["ema"] = ema
    return out


def _abstract_with_shardings(s: Setup) -> dict:
    return jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                        s.abstract_state, s.state_shardings)


def _load_init_from(s: Setup, state: dict, plan) -> dict:
    """Copies another run's parameters into `state` (params only; optimizer starts fresh), resizing pos-embeds."""
    src_dir, src_step, target = plan
    loaded = traverse_util.flatten_dict(ckpt_lib.restore_subtree(src_dir, src_step, {"model": target})["model"])
    ours = traverse_util.flatten_dict(_pure_params(s.abstract_state["model_opt"], s.state_shardings["model_opt"]))
    grid = s.config.image_size // s.config.patch_size
    params = {}
    for path, value in loaded.items():
        if value.shape != ours[path].shape:           # pos_embed at another resolution (checked in _check_init_from)
            value = models.resize_posemb(value, grid, layout=s.arch, method=s.config.posemb_resize)
            value = jax.device_put(value.astype(ours[path].dtype), ours[path].sharding)
        params[path] = value
    skipped = sorted(set(ours) - set(params))
    _log(f"init_from {src_dir} step {src_step}: loaded {len(params)} parameter arrays"
         + (f"; kept fresh init for {', '.join('/'.join(map(str, p)) for p in skipped)}" if skipped else ""))
    nested = traverse_util.unflatten_dict(params)
    nnx.replace_by_pure_dict(state["model_opt"][0], nested)
    if "ema" in state:
        nnx.replace_by_pure_dict(state["ema"], nested)
    return state


# ===================================================================================================== signals
class _StopFlag:
    """SIGTERM/SIGINT -> stop after the current step (a second SIGINT aborts at once)."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        _log(f"received signal {signum}; saving a checkpoint after the current step")

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
        flags = multihost_utils.process_allgather(np.array(self.signum is not None))
        return bool(np.any(flags))


# ===================================================================================================== main loop
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) the run in `workdir`; returns the final metrics.

    Returns:
      {"step", "start_step" (0, or the step resumed from), "accuracy", "loss" (final eval), "best_accuracy",
       "best_step", "train_loss", "preempted", ["ema_accuracy", "ema_loss"], ["signal"]}.

    Raises:
      ConfigError: bad input (nothing written to the workdir).
      TrainingDivergedError: non-finite loss or gradient norm (names the step and the last good checkpoint).
    """
    # --- logging + mesh + data + model: validate everything first (setup raises ConfigError).
    s = setup(config)
    cfg = s.config
    _check_workdir(cfg, workdir)
    init_plan = None if ckpt_lib.has_checkpoint(workdir) else _check_init_from(s)
    total = cfg.total_steps
    with jax.set_mesh(s.mesh):
        return _run(s, workdir, init_plan, total)


def _run(s: Setup, workdir: str, init_plan, total: int) -> dict:
    cfg = s.config
    is_main = jax.process_index() == 0
    if is_main:
        os.makedirs(workdir, exist_ok=True)

    # --- data
    train_ds = data_lib.make_train_dataset(cfg, num_classes=cfg.num_classes, process_index=jax.process_index(),
                                           process_count=jax.process_count())
    train_iter = iter(train_ds)

    # --- model & optimizer, restored or initialised: workdir checkpoint first, then init_from, then scratch
    # (style.md §1 resume order). A fresh state is a jitted init straight into the target shardings (never a full
    # copy on one device).
    ckpt = ckpt_lib.Checkpointer(workdir, keep=cfg.keep_checkpoints)
    start = ckpt.latest_step() or 0
    meta = {"best_accuracy": -1.0, "best_step": -1, "train_time_s": 0.0}
    if start:
        pure, meta = ckpt.restore(start, to_ckpt(_abstract_with_shardings(s)), train_iter)
        # Orbax-restored buffers are not reliably donatable (jax_stack.md §1): copy once before the first step.
        state = jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=s.state_shardings)(
            from_ckpt(pure, s.abstract_state))
        del pure
        _log(f"resumed from {ckpt_lib.CKPT_DIR}/{start} in {workdir}")
    else:
        state = jax.jit(lambda: _train_state(*_build(cfg, s.overrides, s.tx), cfg.ema_decay > 0),
                        out_shardings=s.state_shardings)()
        if init_plan is not None:
            state = _load_init_from(s, state, init_plan)

    # --- update step
    train_step = make_train_step(s)
    eval_step = make_eval_step(s)

    facts = {"num_devices": jax.device_count(), "num_processes": jax.process_count(),
             "mesh_requested": cfg.mesh.to_dict(), "num_params": s.num_params,
             "num_params_non_embedding": s.num_params_non_embedding, "tokens_per_image": s.tokens_per_image,
             "train_flops_per_image": s.train_flops_per_image, "steps_per_epoch": s.steps_per_epoch,
             "num_train_examples": s.info.num_train, "jax_version": jax.__version__}
    if is_main:
        resolved = cfg.copy_and_resolve_references()
        with resolved.unlocked():
            resolved.mesh = ml_collections.ConfigDict(sharding.describe_mesh(s.mesh))   # the mesh actually used
        metrics_lib.write_config_json(workdir, resolved, facts)
    writer = metrics_lib.MetricWriter(workdir, resume_step=start, enabled=is_main)
    _log(f"{cfg.model_name} p{cfg.patch_size} @{cfg.image_size}px on {cfg.dataset}: {s.num_params:,} params, "
         f"{s.tokens_per_image} tokens/img, {s.train_flops_per_image / 1e9:.3g} GFLOP/img (train), "
         f"{jax.device_count()} devices mesh {sharding.describe_mesh(s.mesh)}, "
         f"steps {start}->{total} x batch {cfg.batch_size}")
    # Printed before the first compile so a user sees whether e.g. p=1 at 224 fits before waiting for XLA.
    est = memory_lib.from_config(cfg, num_devices=jax.device_count())
    _log(f"memory estimate per device: {est.total_bytes / 2**30:.2f} GiB (train state {est.state_bytes / 2**30:.2f}, "
         f"activations {est.activation_bytes / 2**30:.2f}); breakdown: python -m pixeltok.memory --config=...")

    def record(step, **fields):
        examples = step * cfg.batch_size
        return dict(examples_seen=examples, tokens_seen=examples * s.tokens_per_image,
                    flops=examples * s.train_flops_per_image, wall_time=time.time(), **fields)

    result = {**meta.get("last_eval", {}), "step": start, "start_step": start, "best_accuracy": meta["best_accuracy"],
              "best_step": meta["best_step"], "preempted": False}
    chrono = metrics_lib.Chrono(first_step=start, total_steps=total, batch_size=cfg.batch_size,
                                train_time_s=meta.get("train_time_s", 0.0))
    bad = jax.device_put(np.array([NO_BAD_STEP, 0], np.int32), NamedSharding(s.mesh, P()))
    last_saved = start if start else None
    pending = None                                    # (step, device metrics) logged one step late
    step = start

    def check_finite():
        bad_step, kind = (int(v) for v in jax.device_get(bad))
        if bad_step != NO_BAD_STEP:
            ckpt.wait()                               # let earlier (good) saves commit, then stop without saving
            ckpt.close()
            writer.close()
            what = "loss" if kind == 1 else "gradient norm"
            good = f"step {last_saved} in {os.path.join(workdir, ckpt_lib.CKPT_DIR)}" if last_saved else "none"
            raise TrainingDivergedError(f"non-finite {what} at step {bad_step}; last good checkpoint is {good}")

    def flush_pending():
        nonlocal pending
        if pending is None:
            return
        pstep, m = pending
        pending = None
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        check_finite()
        timing = chrono.tick(pstep)
        speed = {"img_per_sec": timing["img_per_sec"]} if math.isfinite(timing["img_per_sec"]) else {}
        writer.write(pstep, "train", **record(pstep, loss=m["loss"], lr=m["lr"], grad_norm=m["grad_norm"], **speed,
                                              train_time_s=timing["train_time_s"],
                                              device_hours=timing["train_time_s"] * jax.device_count() / 3600))
        result["train_loss"] = m["loss"]
        _log(metrics_lib.progress_line(pstep, total, m["loss"], m["lr"], timing["img_per_sec"], timing["eta_s"]))

    def run_eval(step):
        check_finite()                                # no eval (nor best checkpoint) of a diverged state
        chrono.pause()
        out = evaluate(s, eval_step, state["model_opt"][0])
        fields = {"loss": out["loss"], "accuracy": out["accuracy"]}
        if cfg.ema_decay > 0:
            ema = evaluate(s, eval_step, state["model_opt"][0], state["ema"])
            fields.update(ema_loss=ema["loss"], ema_accuracy=ema["accuracy"])
        improved = out["accuracy"] > meta["best_accuracy"]
        if improved:
            meta.update(best_accuracy=out["accuracy"], best_step=step)
        meta["last_eval"] = {"step": step, **fields}
        writer.write(step, "eval", **record(step, best_accuracy=meta["best_accuracy"], **fields))
        _log(f"[{step:>{len(str(total))}d}/{total}] eval loss {out['loss']:.4f}  accuracy {100 * out['accuracy']:.2f}%"
             + (f"  ema {100 * fields['ema_accuracy']:.2f}%" if "ema_accuracy" in fields else "")
             + f"  (best {100 * meta['best_accuracy']:.2f}% @ {meta['best_step']})")
        if improved:
            best = {k: v for k, v in to_ckpt(state).items() if k != "opt"}
            ckpt.save_best(step, best, {"step": step, "accuracy": out["accuracy"], "loss": out["loss"]})
        result.update(fields)
        chrono.resume()

    def save(step):
        nonlocal last_saved
        check_finite()                                # never save a diverged state
        chrono.pause()
        ckpt.save(step, to_ckpt(state), train_iter,
                  {**meta, "step": step, "train_time_s": chrono.train_time_s, "total_steps": total})
        last_saved = step
        chrono.resume()

    # --- loop
    stop = _StopFlag()
    with stop:
        while step < total:
            batch = _put_batch(s.mesh, next(train_iter))
            t0 = time.perf_counter()
            # No implicit host<->device copies in the hot path (jax_stack.md §1).
            with jax.transfer_guard("disallow"):
                state, metrics, bad = train_step(state, batch, bad)
            step += 1
            if step == start + 1:
                jax.block_until_ready(metrics)
                chrono.start(step, t0)
            flush_pending()                           # previous log step's metrics: the device is busy meanwhile
            if step % cfg.log_every_steps == 0 or step == total:
                pending = (step, metrics)
            stop_now = stop.should_stop(sync=pending is not None) or step == cfg.stop_at_step
            if (cfg.eval_every_steps > 0 and step % cfg.eval_every_steps == 0) or step == total:
                flush_pending()
                run_eval(step)
            if (cfg.checkpoint_every_steps > 0 and step % cfg.checkpoint_every_steps == 0) or step == total \
                    or stop_now:
                flush_pending()
                save(step)
            if stop_now:
                break
        flush_pending()
    ckpt.wait()
    ckpt.close()
    writer.close()
    result["step"] = step
    result.update(best_accuracy=meta["best_accuracy"], best_step=meta["best_step"])
    if step < total:
        result["preempted"] = stop.signum is not None
        if stop.signum is not None:
            result["signal"] = int(stop.signum)
        _log(f"stopped at step {step}/{total}; checkpoint saved, rerun the same command to resume")
    elif "accuracy" in result:
        _log(f"final test accuracy {100 * result['accuracy']:.2f}% (step {step}); best "
             f"{100 * meta['best_accuracy']:.2f}% (step {meta['best_step']}); train time "
             f"{metrics_lib.format_duration(chrono.train_time_s)}")
    return result


# ===================================================================================================== evaluation
def _set_dotted(config, key: str, value) -> None:
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


def config_from_json(record: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A run's config back from its `config.json` (run facts dropped), on top of today's base config so that keys
    added since the run was made get their defaults."""
    saved = {k: v for k, v in record.items() if k not in RUN_FACTS}
    config = config_utils.base_config()
    try:
        with config.unlocked():
            for key, value in saved.items():
                config[key] = ml_collections.ConfigDict(value) if isinstance(value, Mapping) else value
    except TypeError:                     # a key whose type changed since: trust the file as it is
        config = ml_collections.ConfigDict(saved)
    return config


def evaluate_checkpoint(workdir: str, step: int | str | None = None,
                        config_overrides: Mapping[str, Any] | None = None) -> dict:
    """Restores a run's checkpoint (latest, a step number, or "best") and evaluates it on its eval split.

    Args:
      workdir: a run directory written by `train_and_evaluate`.
      step: None (latest), an int, or "best" (the best-accuracy checkpoint).
      config_overrides: {dotted key: value} applied to the run's config, e.g. {"eval_split": "test",
        "eval_batch_size": 512}. The mesh defaults to all local devices on the data axis.

    Returns:
      {"loss", "accuracy", "step", "num_examples"[, "ema_loss", "ema_accuracy"]}.
    """
    config = config_from_json(metrics_lib.read_config_json(workdir))
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    config.init_from = ""
    for key, value in (config_overrides or {}).items():
        _set_dotted(config, key, value)
    s = setup(config, train=False)
    ckpt_dir, ckpt_step = ckpt_lib.resolve_checkpoint(workdir, step)
    with jax.set_mesh(s.mesh):
        abstract = to_ckpt(_abstract_with_shardings(s))
        target = {k: v for k, v in abstract.items() if k != "opt"}
        saved = ckpt_lib.state_metadata(ckpt_dir, ckpt_step)
        target = {k: v for k, v in target.items() if k in saved}
        pure = ckpt_lib.restore_subtree(ckpt_dir, ckpt_step, target)
        model_state = jax.tree.map(lambda x: x, s.abstract_state["model_opt"][0])
        nnx.replace_by_pure_dict(model_state, pure["model"])
        ema = None
        if "ema" in pure and "ema" in s.abstract_state:
            ema = jax.tree.map(lambda x: x, s.abstract_state["ema"])
            nnx.replace_by_pure_dict(ema, pure["ema"])
        eval_step = make_eval_step(s)
        out = evaluate(s, eval_step, model_state)
        result = {"loss": out["loss"], "accuracy": out["accuracy"], "step": ckpt_step,
                  "num_examples": out["num_examples"]}
        if ema is not None:
            ema = evaluate(s, eval_step, model_state, ema)
            result.update(ema_loss=ema["loss"], ema_accuracy=ema["accuracy"])
    return result
