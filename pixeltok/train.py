"""The pixeltok trainer: one loop that reads top to bottom.

    config checks -> mesh -> data -> model & optimizer (restore | cooldown branch | init_from | fresh)
        -> the jitted train step -> the loop (log, eval, checkpoint)

`train_and_evaluate(config, workdir)` trains one run. Re-running it on the same workdir resumes from the newest
readable checkpoint (model, optimizer, step, data-iterator position; per-step randomness is `fold_in(seed, step)`, so
there is no RNG state to save) and ends where an uninterrupted run would. Everything a user can get wrong is checked
by `plan_run` before anything is written to the workdir and raised as `ConfigError`.

What is learned and how it is scored is the task's (`pixeltok/tasks/`): the loop only calls `task.train_loss`,
`task.eval_sums` / `task.summarize` and reads `task.best_metric`. The checkpoint layout is `pixeltok/checkpoint.py`'s;
how saved parameters are adapted to another resolution, patch size or head is the models' (`models.pretrained`).

Signals: SIGTERM/SIGINT set a flag; the loop finishes the current step, saves a checkpoint and returns
`{"preempted": True, "signal": signum, ...}`; `pixeltok.main` exits with 128 + signum so a scheduler sees an unfinished
run, and the same command resumes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from pixeltok import checkpoint as ckpt_lib
from pixeltok import config_utils
from pixeltok import data as data_lib
from pixeltok import memory as memory_lib
from pixeltok import metrics as metrics_lib
from pixeltok import optim
from pixeltok import preemption
from pixeltok import sharding
from pixeltok import tasks
from pixeltok import warm_start
from pixeltok.models import count_params
from pixeltok.models.spec import ModelSpec

NO_BAD_STEP = np.iinfo(np.int32).max      # "no non-finite step seen yet" in the on-device divergence flag


ConfigError = warm_start.ConfigError   # bad user input, found before anything is written (CLI exit code 2)


class TrainingDivergedError(RuntimeError):
    """A non-finite loss or gradient norm; the run stops without saving the bad state."""


log = warm_start.log                   # printed by process 0 only


# ====================================================================================== the run, checked up front
@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything derived from the config and checked before the workdir is touched."""
    config: ml_collections.ConfigDict     # resolved copy: classes, channels, total and warmup steps filled in
    task: tasks.Task
    data_info: Any                        # pixeltok.data.DataInfo
    mesh: jax.sharding.Mesh
    model: ModelSpec                      # the model, resolved once: architecture, sizes, tokens, FLOPs
    tx: optax.GradientTransformation
    schedule: Any                         # step -> learning rate
    graphdef: Any                         # nnx graphdef of (model, optimizer)
    model_graphdef: Any                   # nnx graphdef of the model alone (evaluation)
    abstract_state: dict                  # the train state as ShapeDtypeStructs carrying their shardings
    state_shardings: dict
    steps_per_epoch: float
    num_params: int                       # every parameter element
    num_params_non_embedding: int         # minus position embeddings (what scaling fits use)

    @property
    def eval_steps(self) -> frozenset[int]:
        return config_utils.eval_steps(self.config, self.config.total_steps)


def plan_run(config: ml_collections.ConfigDict, *, train: bool = True, mesh_cfg=None) -> RunPlan:
    """Validates the config against the task, data set, devices and model; returns the run's description.

    Raises:
      ConfigError: one line naming the bad value and what is valid. Nothing is written anywhere except the prepared
        data set under `config.data_dir` (prepared on first use).
    """
    config = config.copy_and_resolve_references()
    try:
        config_utils.check_loop_keys(config)
        task = tasks.get_task(config.task)
        info = data_lib.get_info(config)
        with config.unlocked():
            for key, have in (("num_classes", info.num_classes), ("num_channels", info.num_channels)):
                if config[key] > 0 and config[key] != have:
                    raise ConfigError(f"{key}={config[key]} does not match data set {config.dataset!r}, which has "
                                      f"{have}; drop --config.{key} or set it to {have}")
                config[key] = int(have)
            task.check_config(config, info)
            mesh = sharding.make_mesh(mesh_cfg if mesh_cfg is not None else config.mesh)
            sharding.check_batch_split(mesh, {"batch_size": config.batch_size,
                                              "micro-batch batch_size/accum_steps":
                                                  config.batch_size // config.accum_steps} if train else {},
                                       eval_batch_size=config.eval_batch_size)
            num_train = info.num_train if config.max_train_examples <= 0 else min(info.num_train,
                                                                                  config.max_train_examples)
            steps_per_epoch = num_train / config.batch_size
            config.total_steps, config.warmup_steps = config_utils.resolve_steps(config, steps_per_epoch)
        model = ModelSpec.from_config(config, **task.model_overrides(config))
        schedule = optim.schedule_from_config(config, config.total_steps, config.warmup_steps)
        tx = optim.make_tx(config, schedule)
        abs_model, abs_opt = nnx.eval_shape(lambda: build_model_and_optimizer(model, tx))
        abstract = train_state(abs_model, abs_opt, ema=config.ema_decay > 0)
        shardings = sharding.state_shardings(abstract, mesh, config.sharding_rules or None)
        abstract = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, shardings)
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError, NotADirectoryError, KeyError, TypeError) as e:
        raise ConfigError(str(e).splitlines()[0] if str(e) else repr(e)) from e
    return RunPlan(config=config, task=task, data_info=info, mesh=mesh, model=model, tx=tx, schedule=schedule,
                   graphdef=nnx.graphdef((abs_model, abs_opt)), model_graphdef=nnx.graphdef(abs_model),
                   abstract_state=abstract, state_shardings=shardings, steps_per_epoch=steps_per_epoch,
                   num_params=count_params(abs_model),
                   num_params_non_embedding=count_params(abs_model, exclude_embeddings=True))


def build_model_and_optimizer(model: ModelSpec, tx):
    """(model, optimizer); called under nnx.eval_shape and inside the jitted init."""
    module = model.build()
    return module, nnx.Optimizer(module, tx, wrt=nnx.Param)


def train_state(model, opt, ema: bool) -> dict:
    """The pytree the jitted step carries: nnx state of (model, optimizer) [+ an EMA copy of the params]."""
    state = {"model_opt": nnx.state((model, opt))}
    if ema:
        state["ema"] = nnx.state(model, nnx.Param)
    return state


# ================================================================================================ the steps
def train_step(state, batch, first_bad, *, graphdef, task, config, schedule):
    """One optimizer update: loss and gradient (over `accum_steps` micro-batches), AdamW, EMA, divergence flag.

    `first_bad` is an int32 pair (first non-finite step, kind 1 = loss / 2 = gradient norm) kept on device so that
    noticing divergence needs no host sync per step. Returns (state, metrics, first_bad).
    """
    model, opt = nnx.merge(graphdef, state["model_opt"])
    count = opt.step[...]                                       # updates completed before this one
    rng = jax.random.fold_in(jax.random.key(config.seed), count)
    model_def, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, micro_batch, rng):
        return task.train_loss(nnx.merge(model_def, params, rest), micro_batch, rng=rng, config=config)

    k = config.accum_steps
    if k == 1:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
    else:
        # Micro-batch j = examples j, j+k, j+2k, ...: every device keeps a slice of every micro-batch, and the mean
        # of k equal-size micro-batch means is the full-batch mean.
        micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch)

        def accumulate(carry, xs):
            j, mb = xs
            l, g = jax.value_and_grad(loss_fn)(params, jax.tree.map(sharding.constrain_batch, mb),
                                               jax.random.fold_in(rng, j))
            return (carry[0] + l, jax.tree.map(jnp.add, carry[1], g)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (loss, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(k), micro))
        loss, grads = loss / k, jax.tree.map(lambda g: g / k, grads)
    grad_norm = optax.tree.norm(grads)
    opt.update(model, grads)
    new_state = {"model_opt": nnx.state((model, opt))}
    if config.ema_decay > 0:
        new_state["ema"] = jax.tree.map(lambda e, p: config.ema_decay * e + (1.0 - config.ema_decay) * p,
                                        state["ema"], nnx.state(model, nnx.Param))
    kind = jnp.where(~jnp.isfinite(loss), 1, jnp.where(~jnp.isfinite(grad_norm), 2, 0))
    first = (first_bad[0] == NO_BAD_STEP) & (kind > 0)
    first_bad = jnp.where(first, jnp.stack([(count + 1).astype(jnp.int32), kind.astype(jnp.int32)]), first_bad)
    return new_state, {"loss": loss, "grad_norm": grad_norm, "lr": schedule(count)}, first_bad


def make_train_step(plan: RunPlan):
    """`train_step` jitted with the run's static parts bound, state and flag donated, shardings explicit."""
    step = functools.partial(train_step, graphdef=plan.graphdef, task=plan.task, config=plan.config,
                             schedule=plan.schedule)
    replicated = NamedSharding(plan.mesh, P())
    return jax.jit(step, donate_argnums=(0, 2),
                   in_shardings=(plan.state_shardings, sharding.batch_sharding(plan.mesh), replicated),
                   out_shardings=(plan.state_shardings, replicated, replicated))


def eval_step(model_state, params, batch, *, graphdef, task, config):
    """The task's additive statistics of one padded eval batch; `params` (e.g. the EMA) replaces the model's."""
    model = nnx.merge(graphdef, model_state)
    if params is not None:
        nnx.update(model, params)
    return task.eval_sums(model, batch, config)


def make_eval_step(plan: RunPlan):
    step = functools.partial(eval_step, graphdef=plan.model_graphdef, task=plan.task, config=plan.config)
    return jax.jit(step, out_shardings=NamedSharding(plan.mesh, P()))


def put_batch(mesh, batch: Mapping[str, np.ndarray]) -> dict:
    """Per-process numpy batch -> global jax arrays split over the data-parallel axes."""
    sh = sharding.batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in batch.items()}


def evaluate(plan: RunPlan, step_fn, model_state, params=None) -> tuple[dict, dict | None]:
    """The task's metrics over the whole eval split (padded rows never count) and its optional per-eval detail."""
    sums = None
    batches = data_lib.make_eval_batches(plan.config, process_index=jax.process_index(),
                                         process_count=jax.process_count())
    for i, batch in enumerate(batches):
        if 0 <= plan.config.eval_max_batches <= i:
            break
        out = jax.device_get(step_fn(model_state, params, put_batch(plan.mesh, batch)))
        # Totals in 64 bits: int32 pixel counts of a large split would overflow, float32 sums lose digits.
        out = jax.tree.map(lambda x: np.asarray(x, np.int64 if np.issubdtype(x.dtype, np.integer) else np.float64), out)
        sums = out if sums is None else jax.tree.map(np.add, sums, out)
    return plan.task.summarize(sums), plan.task.artifacts(sums)


def raise_if_diverged(first_bad, last_saved: int | None, workdir: str) -> None:
    """Raises TrainingDivergedError when the on-device flag saw a non-finite loss or gradient norm."""
    bad_step, kind = (int(v) for v in jax.device_get(first_bad))
    if bad_step != NO_BAD_STEP:
        what = "loss" if kind == 1 else "gradient norm"
        good = f"step {last_saved} in {os.path.join(workdir, ckpt_lib.CKPT_DIR)}" if last_saved else "none"
        raise TrainingDivergedError(f"non-finite {what} at step {bad_step}; last good checkpoint is {good}")


# ================================================================================================= the loop
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) the run in `workdir`; returns the final metrics.

    Returns:
      {"step", "start_step" (0, or the step resumed from), the task's eval metrics (final eval), "best_<metric>",
       "best_step", "train_loss", "preempted", ["ema_<metric>" ...], ["signal"]}.

    Raises:
      ConfigError: bad input (nothing written to the workdir).
      TrainingDivergedError: non-finite loss or gradient norm (names the step and the last good checkpoint).
      checkpoint.CheckpointError: checkpoints exist but none can be read.
    """
    # --- config checks: all of them before the workdir is touched.
    plan = plan_run(config)
    cfg, task = plan.config, plan.task
    try:
        ckpt_lib.check_same_shapes(cfg, workdir)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    resuming = ckpt_lib.has_checkpoint(workdir)
    branch = None if resuming else warm_start.plan_branch(plan)
    init_source = None if resuming or branch else warm_start.plan_init_from(plan)
    total, best_key = cfg.total_steps, f"best_{task.best_metric}"
    is_main = jax.process_index() == 0
    with contextlib.ExitStack() as cleanup:         # closes writer and checkpointer on every exit, errors included
        cleanup.enter_context(jax.set_mesh(plan.mesh))
        if is_main:
            os.makedirs(workdir, exist_ok=True)

        # --- data
        train_iter = iter(data_lib.make_train_dataset(cfg, num_classes=cfg.num_classes,
                                                      process_index=jax.process_index(),
                                                      process_count=jax.process_count()))

        # --- model & optimizer: this workdir's checkpoint, else a cooldown branch's parent, else init_from, else
        # fresh. A fresh state is a jitted init straight into its shardings (never a full copy on one device).
        ckpt = ckpt_lib.Checkpointer(workdir, keep=cfg.keep_checkpoints,
                                     keep_steps=config_utils.int_list(cfg.checkpoint_steps))
        cleanup.callback(ckpt.close)
        cleanup.callback(ckpt.wait)                 # runs first: earlier (good) saves commit even after a failure
        meta = {"best": None, "best_step": -1, "last_eval": {}, "train_time_s": 0.0}
        saved_layout = ckpt_lib.to_saved(plan.abstract_state)      # what a restore reads into
        restored = ckpt.restore_newest_readable(saved_layout, train_iter, log=log) if resuming else None
        if branch is not None:
            parent_ckpt_dir, branch_step = branch
            restored = (branch_step, *ckpt_lib.restore_state(parent_ckpt_dir, branch_step, saved_layout, train_iter))
            if is_main:   # the shared stable phase: the branch's learning curve starts where the parent's did
                metrics_lib.copy_records(os.path.dirname(parent_ckpt_dir), workdir, last_step=branch_step)
            log(f"cooldown branch of {parent_ckpt_dir} at step {branch_step}")
        if restored is not None:
            start, saved, saved_meta = restored
            meta.update(saved_meta)
            state = ckpt_lib.donatable_copy(ckpt_lib.from_saved(saved, plan.abstract_state), plan.state_shardings)
            del saved
            if resuming:
                log(f"resumed from {ckpt_lib.CKPT_DIR}/{start} in {workdir}")
        else:
            start = 0
            state = jax.jit(lambda: train_state(*build_model_and_optimizer(plan.model, plan.tx), cfg.ema_decay > 0),
                            out_shardings=plan.state_shardings)()
            if init_source is not None:
                state = warm_start.load_init_from(plan, state, init_source)

        # --- the jitted steps
        step_fn = make_train_step(plan)
        eval_fn = make_eval_step(plan)

        if is_main:
            metrics_lib.write_config_json(workdir, cfg, plan_facts(plan))
        writer = metrics_lib.MetricWriter(workdir, resume_step=start, enabled=is_main)
        cleanup.callback(writer.close)
        log(f"{cfg.model_name} p{cfg.patch_size} @{cfg.image_size}px {task.name} on {cfg.dataset}: "
            f"{plan.num_params:,} params, {plan.model.tokens_per_image} tokens/img, "
            f"{plan.model.train_flops_per_image / 1e9:.3g} GFLOP/img (train), {jax.device_count()} devices mesh "
            f"{sharding.describe_mesh(plan.mesh)}, steps {start}->{total} x batch {cfg.batch_size}")
        # Printed before the first compile so a user sees whether e.g. p=1 at 224 fits before waiting for XLA.
        est = memory_lib.from_config(cfg, num_devices=jax.device_count())
        log(f"memory estimate per device: {est.total_bytes / 2**30:.2f} GiB (train state "
            f"{est.state_bytes / 2**30:.2f}, activations {est.activation_bytes / 2**30:.2f}); breakdown: "
            "python -m pixeltok.memory --config=...")

        # --- the loop
        result = {**meta["last_eval"], "step": start, "start_step": start, "preempted": False}
        chrono = metrics_lib.Chrono(first_step=start, total_steps=total, batch_size=cfg.batch_size,
                                    train_time_s=meta["train_time_s"])
        first_bad = jax.device_put(np.array([NO_BAD_STEP, 0], np.int32), NamedSharding(plan.mesh, P()))
        last_saved = start or None
        pending = None                           # (step, device metrics) of a log step, read one step later
        step, eval_at = start, plan.eval_steps
        keep_at = set(config_utils.int_list(cfg.checkpoint_steps))
        with preemption.StopFlag(log) as stop:
            while step < total:
                batch = put_batch(plan.mesh, next(train_iter))
                t0 = time.perf_counter()
                with jax.transfer_guard("disallow"):   # no implicit host<->device copies in the hot path
                    state, device_metrics, first_bad = step_fn(state, batch, first_bad)
                step += 1
                if step == start + 1:
                    jax.block_until_ready(device_metrics)
                    chrono.start(step, t0)
                log_now = step % cfg.log_every_steps == 0 or step == total
                stop_now = stop.should_stop(sync=log_now) or step == cfg.stop_at_step
                do_eval = step in eval_at
                do_save = config_utils.every(step, cfg.checkpoint_every_steps) or step in keep_at or \
                    step == total or stop_now
                # Train records are read one step late (the device is busy with the next step meanwhile), at once
                # before an eval or save. A diverged run writes no record, eval or checkpoint past the last good one.
                if pending is not None:
                    raise_if_diverged(first_bad, last_saved, workdir)
                    result["train_loss"] = metrics_lib.log_train(writer, chrono, *pending,
                                                                 progress=progress(plan, pending[0]), log=log)
                pending = (step, device_metrics) if log_now and not (do_eval or do_save) else None
                if do_eval or do_save:
                    raise_if_diverged(first_bad, last_saved, workdir)
                    if log_now:
                        result["train_loss"] = metrics_lib.log_train(writer, chrono, step, device_metrics,
                                                                     progress=progress(plan, step), log=log)
                    chrono.pause()
                if do_eval:
                    scores, details = evaluate(plan, eval_fn, state["model_opt"][0])
                    fields = {k: scores[k] for k in task.metric_names}
                    if cfg.ema_decay > 0:
                        ema_scores, _ = evaluate(plan, eval_fn, state["model_opt"][0], state["ema"])
                        fields.update({f"ema_{k}": ema_scores[k] for k in task.metric_names})
                    improved = task.better(scores[task.best_metric], meta["best"])
                    if improved:
                        meta.update(best=scores[task.best_metric], best_step=step)
                    meta["last_eval"] = {"step": step, **fields}
                    writer.write(step, "eval", **progress(plan, step), **{best_key: meta["best"]}, **fields)
                    if details is not None and is_main:
                        metrics_lib.write_eval_details(workdir, step, details)
                    log(f"[{step:>{len(str(total))}d}/{total}] eval {task.describe(scores)}  (best "
                        f"{task.best_metric} {meta['best']:.4f} @ {meta['best_step']})")
                    if improved:
                        ckpt.save_best(step, {k: v for k, v in ckpt_lib.to_saved(state).items() if k != "opt"},
                                       {"step": step, **fields})
                    result.update(fields)
                if do_save:
                    ckpt.save(step, ckpt_lib.to_saved(state), train_iter,
                              {**meta, "step": step, "train_time_s": chrono.train_time_s, "total_steps": total})
                    last_saved = step
                if do_eval or do_save:
                    chrono.resume()
                if stop_now:
                    break
    result.update({"step": step, best_key: meta["best"], "best_step": meta["best_step"]})
    if step < total:
        result["preempted"] = stop.signum is not None
        if stop.signum is not None:
            result["signal"] = int(stop.signum)
        log(f"stopped at step {step}/{total}; checkpoint saved, rerun the same command to resume")
    elif meta["last_eval"]:
        log(f"final {task.describe(result)} (step {step}); best {task.best_metric} {meta['best']:.4f} "
            f"(step {meta['best_step']}); train time {metrics_lib.format_duration(chrono.train_time_s)}")
    return result


def progress(plan: RunPlan, step: int) -> dict:
    """How far a record is into training, in the units scaling fits use."""
    return metrics_lib.progress(step * plan.config.batch_size, plan.model.tokens_per_image,
                                plan.model.train_flops_per_image)


def plan_facts(plan: RunPlan) -> dict:
    """What `config.json` records beside the config: devices, the mesh actually used, sizes, tokens, FLOPs."""
    return {"num_devices": jax.device_count(), "num_processes": jax.process_count(),
            "mesh_requested": plan.config.mesh.to_dict(), "mesh": sharding.describe_mesh(plan.mesh),
            "num_params": plan.num_params, "num_params_non_embedding": plan.num_params_non_embedding,
            "tokens_per_image": plan.model.tokens_per_image,
            "train_flops_per_image": plan.model.train_flops_per_image, "steps_per_epoch": plan.steps_per_epoch,
            "num_train_examples": plan.data_info.num_train, "jax_version": jax.__version__}
