"""Train-step benchmark of pixeltok's models: the trainer's own jitted step, timed on synthetic data.

`build_step` builds the step exactly as `pixeltok.train` does (`train.make_train_step` on a run plan whose model,
optimizer, schedule and task come from `pixeltok.config_utils.base_config()` with the configuration's model,
image size, batch and overrides): the same loss (the classification task's soft cross-entropy), AdamW with the
weight-decay mask and the lr schedule, gradient norm and on-device divergence flag, donated state and explicit
shardings. Only the data differ: one fixed random batch. A second jitted function, forward+backward of the task's
loss only (`value_and_grad`, no optimizer), is what the PyTorch comparison uses. Tokens and FLOPs per image come
from the run's `models.spec.ModelSpec` (`pixeltok.flops`).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks.common import log, time_calls
from benchmarks.limits import compile_stats, probe_f32_matmul
from pixeltok import config_utils, optim, sharding, tasks, train
from pixeltok.models import count_params
from pixeltok.models.spec import ModelSpec


def run_config(model_name: str, patch: int, image: int, *, batch: int, classes: int, channels: int = 3,
               overrides: dict | None = None) -> ml_collections.ConfigDict:
    """The training config of a benchmark configuration: the defaults with this model, size, batch and overrides
    (`dtype` and `remat` are top-level config keys, the rest go to `config.model`)."""
    overrides = dict(overrides or {})
    config = config_utils.base_config()
    config.model_name, config.patch_size, config.image_size = model_name, patch, image
    config.num_classes, config.num_channels, config.batch_size = classes, channels, batch
    config.dtype = overrides.pop("dtype", "float32")
    config.remat = overrides.pop("remat", "") or ""
    config.model = ml_collections.ConfigDict(overrides)       # only what the configuration sets, as create_model
    config.total_steps, config.warmup_steps = 1000, 10
    return config


def bench_plan(config: ml_collections.ConfigDict) -> train.RunPlan:
    """A `train.RunPlan` for `config` without a data set (the benchmark feeds synthetic batches)."""
    task = tasks.get_task(config.task)
    model = ModelSpec.from_config(config, **task.model_overrides(config))
    schedule = optim.schedule_from_config(config, config.total_steps, config.warmup_steps)
    tx = optim.make_tx(config, schedule)
    mesh = sharding.make_mesh(config.mesh)
    abs_model, abs_opt = nnx.eval_shape(lambda: train.build_model_and_optimizer(model, tx))
    shardings = sharding.state_shardings(train.train_state(abs_model, abs_opt, ema=False), mesh,
                                         config.sharding_rules or None)
    return train.RunPlan(config=config, task=task, data_info=None, mesh=mesh, model=model, tx=tx, schedule=schedule,
                         graphdef=nnx.graphdef((abs_model, abs_opt)), model_graphdef=nnx.graphdef(abs_model),
                         abstract_state=None, state_shardings=shardings, steps_per_epoch=float("nan"),
                         num_params=count_params(abs_model),
                         num_params_non_embedding=count_params(abs_model, exclude_embeddings=True))


def reference_shape(model_name: str, overrides: dict | None = None) -> dict:
    """The layer sizes the PyTorch reference builds (`torch_ref.py` has no JAX), read off the pixeltok model."""
    spec = ModelSpec.create(model_name, patch_size=1, image_size=1, num_classes=1, num_channels=1,
                            **dict(overrides or {}))
    model = nnx.eval_shape(spec.build)
    shape = {"arch": spec.arch, "width": model.width, "depth": model.depth}
    block = model.blocks[0]
    if shape["arch"] == "vit":
        return {**shape, "heads": model.heads, "mlp": block.mlp.fc1.kernel.shape[1]}
    mixer = block.mixer
    return {**shape, "d_inner": mixer.d_inner, "d_state": mixer.d_state, "head_dim": mixer.head_dim,
            "conv": mixer.conv1d.kernel.shape[0], "mlp": block.mlp.w1.kernel.shape[1]}


def build_step(model_name: str, patch: int, image: int, *, batch: int, classes: int, channels: int = 3,
               overrides: dict | None = None, fwd_bwd_only: bool = False):
    """Returns (jitted fn, example args, `make_call(compiled)`, plan): `make_call` gives a `call()` that runs one step
    of the AOT-compiled executable (donating the train state and the divergence flag, as the trainer does) and
    blocks. Using the compiled object avoids a second compilation through jit's dispatch cache.
    """
    plan = bench_plan(run_config(model_name, patch, image, batch=batch, classes=classes, channels=channels,
                                 overrides=overrides))
    module, opt = train.build_model_and_optimizer(plan.model, plan.tx)
    state = jax.device_put(train.train_state(module, opt, ema=False), plan.state_shardings)
    k1, k2 = jax.random.split(jax.random.key(1))
    images = jax.random.normal(k1, (batch, image, image, channels), jnp.float32)
    labels = jax.nn.one_hot(jax.random.randint(k2, (batch,), 0, classes), classes)
    batch_arrays = jax.device_put({"image": images, "label": labels}, sharding.batch_sharding(plan.mesh))

    if fwd_bwd_only:
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        rng = jax.random.key(plan.config.seed)

        def loss_fn(params, rest, batch_arrays):
            model = nnx.merge(graphdef, params, rest)
            return plan.task.train_loss(model, batch_arrays, rng=rng, config=plan.config)

        fn = jax.jit(jax.value_and_grad(loss_fn))
        args = (params, rest, batch_arrays)

        def make_call(compiled):
            return lambda: jax.block_until_ready(compiled(*args))
        return fn, args, make_call, plan

    fn = train.make_train_step(plan)
    first_bad = jax.device_put(np.array([train.NO_BAD_STEP, 0], np.int32), NamedSharding(plan.mesh, P()))
    carried = {"state": state, "first_bad": first_bad}

    def make_call(compiled):
        def call():
            carried["state"], metrics, carried["first_bad"] = compiled(carried["state"], batch_arrays,
                                                                       carried["first_bad"])
            metrics["loss"].block_until_ready()
        return call
    return fn, (state, batch_arrays, first_bad), make_call, plan


def bench_train_config(model: str, patch: int, image: int, batch: int, *, classes: int, overrides: dict,
                       limits: dict | None, mem_budget: int, max_time_s: float, fwd_bwd_only: bool = False,
                       run: bool = True) -> dict:
    """Compiles one configuration, checks its compiled memory against the budget, times it, returns a row."""
    t0 = time.perf_counter()
    fn, args, make_call, plan = build_step(model, patch, image, batch=batch, classes=classes, overrides=overrides,
                                           fwd_bwd_only=fwd_bwd_only)
    row = {"model": model, "arch": plan.model.arch, "patch": patch, "image": image, "batch": batch,
           "tokens": plan.model.tokens_per_image, "what": "fwd+bwd" if fwd_bwd_only else "train_step",
           "dtype": overrides.get("dtype", "float32"), "remat": overrides.get("remat") or "",
           "overrides": dict(overrides)}
    compiled = fn.lower(*args).compile()
    row["compile_s"] = time.perf_counter() - t0
    row.update(compile_stats(compiled))
    row["temp_bytes_per_image"] = row.get("temp_bytes", 0) / batch
    row["total_bytes_per_image"] = row.get("total_bytes", 0) / batch
    flops_img = plan.model.train_flops_per_image
    row["train_flops_per_image"], row["flops_source"] = flops_img, "pixeltok.flops"
    if row.get("total_bytes", 0) > mem_budget:
        row["skipped"] = f"compiled memory {row['total_bytes'] / 2**30:.1f} GiB > budget {mem_budget / 2**30:.1f} GiB"
        return row
    if not run:
        row["skipped"] = "compiled only (memory measurement)"
        return row
    if jax.default_backend() == "cpu":  # a GPU is not shared with other jobs: no probe needed
        row["probe_f32_flop_per_s"] = probe_f32_matmul()
    t = time_calls(make_call(compiled), warmup=1, min_reps=3, max_reps=10, min_time_s=3.0, max_time_s=max_time_s)
    row.update(step_s=t["median_s"], min_s=t["min_s"], reps=t["reps"], times_s=t["times_s"])
    row["images_per_s"] = batch / t["median_s"]
    row["tokens_per_s"] = batch * row["tokens"] / t["median_s"]
    row["flops_per_step"] = flops_img * batch
    row["flop_per_s"] = row["flops_per_step"] / t["median_s"]
    if limits:
        row["efficiency_f32"] = row["flop_per_s"] / limits["f32_matmul_flop_per_s"]
        row["efficiency_bf16"] = row["flop_per_s"] / limits["bf16_f32_matmul_flop_per_s"]
    if "probe_f32_flop_per_s" in row:
        row["efficiency_probe"] = row["flop_per_s"] / row["probe_f32_flop_per_s"]
    return row


def describe(row: dict) -> str:
    """One log line for a result row."""
    head = f"{row['model']} p{row['patch']} {row['image']}² ×{row['batch']} ({row['tokens']} tok) {row['what']}"
    if "skipped" in row:
        return f"{head}: {row['skipped']} (compile {row.get('compile_s', 0):.0f} s)"
    key = "efficiency_bf16" if jax.default_backend() == "gpu" else "efficiency_f32"
    eff = f", eff {row[key]:.0%} ({key[11:]})" if key in row else ""
    return (f"{head}: {row['step_s']:.3f} s, {row['images_per_s']:.2f} img/s{eff}, "
            f"{row.get('total_bytes', 0) / 2**20:.0f} MiB, compile {row['compile_s']:.0f} s")


def _bench_with_fallback(cfg: dict, limits: dict, mem_budget: int, max_time_s: float) -> dict:
    """bench_train_config; a ViT whose cuDNN attention fails (version/shape support) is re-run on XLA attention,
    with the cuDNN error kept in the row, so one unsupported kernel does not blank the ViT column."""
    kwargs = dict(classes=cfg["classes"], limits=limits, mem_budget=mem_budget, max_time_s=max_time_s,
                  fwd_bwd_only=cfg.get("fwd_bwd_only", False), run=cfg.get("run", True))
    overrides = cfg.get("overrides", {})
    try:
        return bench_train_config(cfg["model"], cfg["patch"], cfg["image"], cfg["batch"], overrides=overrides,
                                  **kwargs)
    except Exception as e:  # noqa: BLE001
        if not (cfg["model"].startswith("vit") and jax.default_backend() == "gpu"
                and "attn_impl" not in overrides):
            raise
        jax.clear_caches()
        row = bench_train_config(cfg["model"], cfg["patch"], cfg["image"], cfg["batch"],
                                 overrides={**overrides, "attn_impl": "xla"}, **kwargs)
        row["attn_fallback"] = f"cudnn failed: {type(e).__name__}: {str(e)[:160]}"
        return row


def run_train_bench(configs: list[dict], limits: dict, mem_budget: int, max_time_s: float) -> list[dict]:
    """Runs each {model, patch, image, batch, classes, overrides, fwd_bwd_only, run} configuration."""
    rows = []
    for cfg in configs:
        try:
            row = _bench_with_fallback(cfg, limits, mem_budget, max_time_s)
        except Exception as e:  # noqa: BLE001 - recorded, the rest of the benchmark still runs
            row = {**cfg, "skipped": f"error: {type(e).__name__}: {str(e)[:200]}"}
            log(f"{cfg['model']} p{cfg['patch']} {cfg['image']}²: {row['skipped']}")
        else:
            log(describe(row))
        rows.append(row)
        jax.clear_caches()
    return rows
