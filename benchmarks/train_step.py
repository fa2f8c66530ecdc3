"""Train-step benchmark of pixeltok's models: one jitted, donated step of softmax cross-entropy + AdamW.

The step is the pure functional form of jax_stack.md §2 (nnx.split once, `jax.jit(step, donate_argnums=(0, 1))`
over (params, opt_state)), so what is timed is XLA's work, not NNX's Python graph walk. A second jitted function,
forward+backward only (`value_and_grad`, no optimizer), is what the PyTorch comparison uses.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from benchmarks.common import analytic_train_flops_per_image, log, time_calls
from benchmarks.limits import compile_stats, probe_f32_matmul
from pixeltok.models import create_model


def _flops_per_image(model: str, patch: int, image: int, overrides: dict) -> tuple[float, str]:
    """pixeltok.flops.train_flops_per_image when available, else the benchmark's copy of adventurer.md §10."""
    try:
        from pixeltok.flops import train_flops_per_image
        keep = {k: v for k, v in overrides.items() if k in ("chunk_size",)}
        return float(train_flops_per_image(model, patch, image, **keep)), "pixeltok.flops"
    except ImportError:
        return analytic_train_flops_per_image(model, patch, image, overrides.get("chunk_size", 128)), "benchmarks"


def build_step(model_name: str, patch: int, image: int, *, batch: int, classes: int, channels: int = 3,
               overrides: dict | None = None, fwd_bwd_only: bool = False):
    """Returns (jitted fn, example args, `make_call(compiled)`): the latter gives a `call()` that runs one step of
    the AOT-compiled executable (donating params and optimizer state) and blocks. Using the compiled object avoids a
    second compilation through jit's dispatch cache.
    """
    overrides = dict(overrides or {})
    model = create_model(model_name, patch_size=patch, image_size=image, num_classes=classes,
                         num_channels=channels, seed=0, **overrides)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adamw(1e-4, weight_decay=0.05)
    k1, k2 = jax.random.split(jax.random.key(1))
    images = jax.random.normal(k1, (batch, image, image, channels), jnp.float32)
    labels = jax.nn.one_hot(jax.random.randint(k2, (batch,), 0, classes), classes)

    def loss_fn(params, rest, images, labels):
        logits = nnx.merge(graphdef, params, rest)(images, train=True)
        return optax.softmax_cross_entropy(logits, labels).mean()

    if fwd_bwd_only:
        fn = jax.jit(jax.value_and_grad(loss_fn))
        args = (params, rest, images, labels)

        def make_call(compiled):
            return lambda: jax.block_until_ready(compiled(*args))
        return fn, args, make_call

    def step(params, opt_state, rest, images, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, rest, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    fn = jax.jit(step, donate_argnums=(0, 1))
    state = {"params": params, "opt": tx.init(params)}

    def make_call(compiled):
        def call():
            state["params"], state["opt"], loss = compiled(state["params"], state["opt"], rest, images, labels)
            loss.block_until_ready()
        return call
    return fn, (state["params"], state["opt"], rest, images, labels), make_call


def bench_train_config(model: str, patch: int, image: int, batch: int, *, classes: int, overrides: dict,
                       limits: dict | None, mem_budget: int, max_time_s: float, fwd_bwd_only: bool = False,
                       run: bool = True) -> dict:
    """Compiles one configuration, checks its compiled memory against the budget, times it, returns a row."""
    from pixeltok.flops import tokens_per_image
    row = {"model": model, "arch": model.split("_")[0], "patch": patch, "image": image, "batch": batch,
           "tokens": tokens_per_image(model, patch, image), "what": "fwd+bwd" if fwd_bwd_only else "train_step",
           "dtype": overrides.get("dtype", "float32"), "remat": overrides.get("remat") or "",
           "overrides": dict(overrides)}
    t0 = time.perf_counter()
    fn, args, make_call = build_step(model, patch, image, batch=batch, classes=classes, overrides=overrides,
                                fwd_bwd_only=fwd_bwd_only)
    compiled = fn.lower(*args).compile()
    row["compile_s"] = time.perf_counter() - t0
    row.update(compile_stats(compiled))
    row["temp_bytes_per_image"] = row.get("temp_bytes", 0) / batch
    row["total_bytes_per_image"] = row.get("total_bytes", 0) / batch
    flops_img, source = _flops_per_image(model, patch, image, overrides)
    row["train_flops_per_image"], row["flops_source"] = flops_img, source
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
