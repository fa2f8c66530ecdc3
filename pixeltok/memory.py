"""Per-device training memory: an analytic estimate per (model, patch, resolution, dtype, remat, chunk, batch), and
the compiled truth (`memory_analysis()`) to compare it with.

    python -m pixeltok.memory --config=configs/adventurer_base.py:p1 [--batch 4] [--device-gib 80] [--measure]

`--measure` compiles the trainer's real update step under the configured mesh (`--config.mesh.seq=8` etc.; on CPU
set XLA_FLAGS=--xla_force_host_platform_device_count=N first) and prints `compiled per-device: X MiB` (temp +
argument bytes of one device) beside the estimate.

The model (all sizes in bytes; T = tokens in the blocks (n+1 ViT, n+2 Adventurer), d width, D = 2d mixer width,
N d_state, H heads, h SwiGLU/MLP hidden, Q chunk, c compute-dtype bytes, f = 4 float32 bytes):

* **train state** = 16 B/param: fp32 params 4, grads 4, AdamW mu + nu 8 (divided by the fsdp size).
* **saved activations per block per token** = the residuals autodiff keeps for the backward pass, as the models
  compute them (pixeltok/models/*.py; float32 where the code runs in float32, the compute dtype elsewhere):
  - Adventurer, float32 part: block input d, in_proj output 2D+2N+H, conv pre-activation D+2N, dt H, SSD output D,
    gated product D, out_proj output d, mid residual d, SwiGLU w1 and w2 outputs 2h, plus the chunk states
    (state, state entering the chunk, associative-scan partials) 3·D·N/Q;
    compute-dtype part: norm output d, mixer input (flip + heading token) d, x/B/C after conv+SiLU D+2N, gated-norm
    output D, norm2 output d, SwiGLU product h.
  - ViT, float32 part: block input d, qkv 3d, mid residual d, fc1 output h; compute-dtype part: LN outputs 2d, q/k/v
    3d, attention output d, GELU output h; attention `xla` also keeps the softmax probabilities heads·T (float32),
    `cudnn`/flash and `chunked` only the log-sum-exp (heads floats).
  With a `dots*` remat policy only the matmul outputs among these are kept.
* **across the backward pass**: no remat → all blocks' saved activations; remat (`nothing_saveable`/`full`) → the
  block inputs only, depth·T·d·f (docs/ssd.md).
* **working set** of the block being differentiated: its saved activations again for their cotangents, and once more
  when remat recomputes them (remat: 2×, no remat: 1×).
* **transient** of that block: SSD (docs/ssd.md) ≈ 6 (Q, Q)-per-chunk float32 decay/score tensors live in
  the backward of the rematerialised intra-chunk step → 6·T·Q·H·f + 2·T·Q·G·f (C·Bᵀ and its cotangent);
  ViT `xla` attention: scores, probabilities and their two cotangents, 4·heads·T²·f; flash: ~0.
* **embed/head**: image, patch tokens and their cotangents ≈ H·W·C·f + 3·T·d·f per image.

Activations scale with the per-device batch; `estimate(...).total_bytes` is what one device needs. Everything is an
upper-bound style count: XLA fuses elementwise chains and reuses buffers, see `measure_compiled` for the truth
(the report `python -m pixeltok.memory --measure` prints both).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

GIB = 1024**3
_FULL_REMAT = ("full", "nothing_saveable", "everything_saveable_but_nothing")   # block input only


@dataclasses.dataclass
class MemoryEstimate:
    """Bytes per device for one training step (see module doc for the model behind each field)."""
    model_name: str
    patch_size: int
    image_size: int
    batch: int
    dtype: str
    remat: str
    chunk_size: int
    tokens: int
    num_params: int
    fsdp: int
    state_bytes: int            # params + grads + AdamW, / fsdp
    block_bytes: int            # saved activations of one block, whole per-device batch
    saved_bytes: int            # what lives across the backward pass (all blocks, or block inputs with remat)
    working_bytes: int          # the differentiated block's working set
    transient_bytes: int        # SSD decay matrices / attention scores of one block
    embed_bytes: int            # image + patch tokens + head
    seq: int = 1                # sequence-parallel shards: per-token activations are / seq

    @property
    def activation_bytes(self) -> int:
        """Everything batch-dependent: the part `memory_analysis().temp_size_in_bytes` measures (+ grads)."""
        return self.saved_bytes + self.working_bytes + self.transient_bytes + self.embed_bytes

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes

    def fits(self, device_bytes: float, headroom: float = 0.9) -> bool:
        """True when the total stays under `headroom` of the device memory (XLA needs some slack)."""
        return self.total_bytes <= headroom * device_bytes

    def max_batch(self, device_bytes: float, headroom: float = 0.9) -> int:
        """Largest per-device batch that fits (activations are linear in the batch)."""
        per_image = self.activation_bytes / self.batch
        return max(0, int((headroom * device_bytes - self.state_bytes) // per_image))

    def table(self, device_bytes: float | None = None) -> str:
        """Human-readable summary (GiB)."""
        g = lambda b: f"{b / GIB:9.3f} GiB"  # noqa: E731
        lines = [f"{self.model_name} p{self.patch_size} @{self.image_size}: {self.tokens:,} tokens, "
                 f"{self.num_params:,} params, batch {self.batch}/device, dtype {self.dtype}, "
                 f"remat {self.remat or 'none'}, chunk {self.chunk_size}, fsdp {self.fsdp}, seq {self.seq}",
                 f"  train state (params+grads+AdamW) {g(self.state_bytes)}",
                 f"  saved across backward           {g(self.saved_bytes)}   (one block: {g(self.block_bytes)})",
                 f"  working set of one block        {g(self.working_bytes)}",
                 f"  scan / attention transient      {g(self.transient_bytes)}",
                 f"  embed + head                    {g(self.embed_bytes)}",
                 f"  total                           {g(self.total_bytes)}"]
        if device_bytes:
            verdict = "fits" if self.fits(device_bytes) else "DOES NOT FIT"
            lines.append(f"  device {device_bytes / GIB:.0f} GiB: {verdict} (90 % headroom); max batch/device "
                         f"{self.max_batch(device_bytes)}")
        return "\n".join(lines)


def _remat_kind(remat: Any) -> str:
    if remat in (None, "", False):
        return "none"
    if remat is True or remat in _FULL_REMAT:
        return "full"
    if isinstance(remat, str) and remat.startswith("dots"):
        return "dots"
    return "none"               # unknown policies: assume the worst (everything saved)


def adventurer_block_terms(d: int, *, d_state: int = 64, expand: int = 2, head_dim: int = 64, ngroups: int = 1,
                           chunk_size: int = 128, hidden: int | None = None) -> dict[str, tuple[float, bool, bool]]:
    """Saved tensors of one Adventurer block per token: name -> (elements, is_float32, is_matmul_output)."""
    D, N, G, Q = expand * d, d_state, ngroups, chunk_size
    H = D // min(head_dim, D)
    h = int(2.5 * d) if hidden is None else hidden
    return {
        "block_input": (d, True, False), "in_proj_out": (2 * D + 2 * G * N + H, True, True),
        "conv_preact": (D + 2 * G * N, True, False), "dt": (H, True, False), "ssd_out": (D, True, True),
        "gated": (D, True, False), "out_proj_out": (d, True, True), "mid_residual": (d, True, False),
        "w1_w2_out": (2 * h, True, True), "chunk_states": (3 * D * N / Q, True, True),
        "norm_out": (d, False, False), "mixer_in": (d, False, False), "xbc": (D + 2 * G * N, False, False),
        "gnorm_out": (D, False, False), "norm2_out": (d, False, False), "swiglu_prod": (h, False, False),
    }


def vit_block_terms(d: int, tokens: int, *, heads: int, mlp_ratio: float = 4.0,
                    attn_impl: str = "xla") -> dict[str, tuple[float, bool, bool]]:
    """Saved tensors of one ViT block per token: name -> (elements, is_float32, is_matmul_output)."""
    h = int(mlp_ratio * d)
    terms = {"block_input": (d, True, False), "qkv_out": (3 * d, True, True), "mid_residual": (d, True, False),
             "fc1_out": (h, True, True), "ln_outs": (2 * d, False, False), "qkv_cast": (3 * d, False, False),
             "attn_out": (d, False, True), "gelu_out": (h, False, False)}
    terms["attn_probs"] = (heads * tokens, True, True) if attn_impl == "xla" else (heads, True, True)
    return terms


def _block_bytes(terms, c: int, kind: str) -> float:
    return sum(n * (4 if f32 else c) for n, f32, dot in terms.values() if kind != "dots" or dot)


def estimate(model_name: str, patch_size: int, image_size: int, *, batch: int = 1, dtype: str = "float32",
             remat: Any = "", chunk_size: int = 128, num_classes: int = 1000, num_channels: int = 3,
             attn_impl: str = "auto", fsdp: int = 1, seq: int = 1, num_params: int | None = None,
             **overrides) -> MemoryEstimate:
    """Analytic per-device training memory (module doc) for `batch` images per device.

    `seq` > 1 is sequence parallelism (docs/sharding.md): each device holds ceil(T / seq) of the tokens, so every
    per-token activation is divided by seq; attention keys still span all T tokens, and the image itself is
    replicated over the seq axis.

    `attn_impl` (ViT) is resolved as the model resolves it on this machine's backend ("auto": cuDNN on a GPU in
    bf16, query-chunked attention on a CPU from a few hundred tokens, dense XLA otherwise); name it explicitly to
    estimate for another device.

    `overrides` are create_model's architecture overrides (width, depth, d_state, ...). `num_params` skips the
    abstract model build (`nnx.eval_shape`) when known.
    """
    from pixeltok import flops
    from pixeltok.models import resolve_architecture
    arch, kw = resolve_architecture(model_name, **overrides)
    d, depth = kw["width"], kw["depth"]
    tokens = flops.tokens_per_image(model_name, patch_size, image_size)
    seq = max(1, int(seq))
    local = -(-tokens // seq)                                       # tokens held by one device
    c = 2 if dtype in ("bfloat16", "bf16", "float16") else 4
    kind = _remat_kind(remat)
    if arch == "adventurer":
        arch_kw = {k: kw[k] for k in ("d_state", "expand") if k in kw}
        terms = adventurer_block_terms(d, chunk_size=chunk_size, head_dim=kw.get("head_dim", 64), **arch_kw)
        D = kw.get("expand", 2) * d
        heads = D // min(kw.get("head_dim", 64), D)
        q = min(chunk_size, local)
        transient = (6 * heads + 2) * local * q * 4                # per image
    else:
        from pixeltok.models import vit_heads
        heads = vit_heads(d, kw.get("head_dim"))
        from pixeltok.models import vit as vit_module
        impl = vit_module.resolve_attn_impl(attn_impl, dtype, tokens)
        terms = vit_block_terms(d, tokens, heads=heads, mlp_ratio=kw.get("mlp_ratio", 4.0), attn_impl=impl)
        # Live (L, L)-sized float32 tensors of the block being differentiated: dense XLA ~4 (logits, probabilities
        # and their cotangents); chunked ~3 of one (q_block, L) block; cuDNN flash none.
        # Under seq sharding each device's queries see all T keys (gathered K/V: 2 more (T, d) per block).
        transient = {"xla": 4 * heads * local * tokens * 4,
                     "chunked": 3 * heads * min(vit_module.CHUNK_Q_BLOCK, local) * tokens * 4}.get(impl, 0)
        if seq > 1:
            transient += 2 * (tokens - local) * d * c
    block = _block_bytes(terms, c, "none") * local * batch
    kept = _block_bytes(terms, c, kind) * local * batch
    if kind == "full":
        saved = depth * local * d * 4 * batch
        working = 2 * block
    elif kind == "dots":
        saved = depth * (kept + local * d * 4 * batch)
        working = 2 * block
    else:
        saved = depth * block
        working = block
    if num_params is None:
        num_params = count_params_abstract(model_name, patch_size, image_size, num_classes=num_classes,
                                           num_channels=num_channels, **overrides)
    embed = (image_size * image_size * num_channels * 4 + 3 * local * d * 4) * batch
    if overrides.get("head_type", "classification") != "classification":
        # segmentation: per-pixel float32 logits, their log-softmax and cotangent, B x H x W x K each, the
        # same at every patch size (docs/segmentation.md, "Memory")
        embed += 3 * image_size * image_size * num_classes * 4 * batch
    return MemoryEstimate(model_name, patch_size, image_size, batch, dtype, str(remat or ""), chunk_size, tokens,
                          num_params, fsdp, int(16 * num_params / fsdp), int(block), int(saved), int(working),
                          int(transient * batch), int(embed), seq)


def count_params_abstract(model_name: str, patch_size: int, image_size: int, **kwargs) -> int:
    """Parameter count without allocating: `nnx.eval_shape` of create_model (docs/architecture.md)."""
    from flax import nnx
    from pixeltok.models import count_params, create_model
    return count_params(nnx.eval_shape(lambda: create_model(model_name, patch_size, image_size, **kwargs)))


# ----------------------------------------------------------------------------------------------------------- config
def _dataset_defaults(config) -> tuple[int, int]:
    """(num_classes, num_channels) when the config leaves them to the data set (-1)."""
    imagenet = str(config.get("dataset", "")).startswith(("imagenet", "imagefolder"))
    k = config.get("num_classes", -1)
    ch = config.get("num_channels", -1)
    return (k if k > 0 else (1000 if imagenet else 10)), (ch if ch > 0 else (3 if imagenet else 1))


def from_config(config, *, num_devices: int = 1, batch: int | None = None) -> MemoryEstimate:
    """Estimate for a pixeltok config on `num_devices` devices laid out as `config.mesh` (data x fsdp x seq):
    per-device micro-batch = batch_size / accum_steps / (data * fsdp) unless `batch` is given; the train state is
    divided by fsdp and the activations by seq. A mesh that does not fit `num_devices` falls back to all devices
    on the data axis (the estimate is then for plain data parallelism)."""
    from pixeltok import sharding
    mesh_cfg = dict(config.get("mesh", {}) or {}) or {"data": -1}
    try:
        shape = sharding.mesh_shape(mesh_cfg, num_devices)
    except ValueError:
        shape = {"data": num_devices}
    fsdp, seq = shape.get("fsdp", 1), shape.get("seq", 1)
    if batch is None:
        micro = config.batch_size // max(1, config.get("accum_steps", 1))
        batch = max(1, math.ceil(micro / (shape.get("data", 1) * fsdp)))
    model_cfg = dict(config.get("model", {}) or {})
    chunk = int(model_cfg.pop("chunk_size", 128))
    from pixeltok.models import valid_overrides
    overrides = {k: v for k, v in model_cfg.items() if k in valid_overrides(config.model_name)}
    k, ch = _dataset_defaults(config)
    if config.get("task", "classification") == "segmentation":   # per-pixel head + logits
        overrides["head_type"] = "seg_pixel_shuffle" if config.get("seg_head") == "pixel_shuffle" else "seg_linear"
        k = k if config.get("num_classes", -1) > 0 else {"ade20k": 150}.get(config.dataset, 11)
    return estimate(config.model_name, config.patch_size, config.image_size, batch=batch,
                    dtype=config.get("dtype", "float32"), remat=config.get("remat", ""), chunk_size=chunk,
                    num_classes=k, num_channels=ch, fsdp=fsdp, seq=seq, **overrides)


def describe(config, *, num_devices: int = 1, device_bytes: float | None = None) -> str:
    """The estimate table for a config (train.py prints it before a run); `device_bytes` adds a fits/doesn't line."""
    return from_config(config, num_devices=num_devices).table(device_bytes)


# -------------------------------------------------------------------------------------------------------- compiled
def measure_compiled(model_name: str, patch_size: int, image_size: int, *, batch: int = 1, dtype: str = "float32",
                     remat: Any = "", num_classes: int = 1000, num_channels: int = 3, mesh_cfg=None,
                     sharding_rules=None, **overrides) -> dict:
    """Compiles loss + grads w.r.t. all params (no allocation: abstract inputs) and returns XLA's memory analysis.

    With `mesh_cfg` ({axis: size}, e.g. {"data": 1, "seq": 8}) the step is partitioned over that mesh (the first
    prod(sizes) of `jax.devices()`, all of them when a size is -1): parameters by `sharding_rules` (default fsdp rules), the `batch` images over the data axes,
    tokens over seq; XLA then reports every size per device.

    Returns:
      dict(temp_bytes, argument_bytes, output_bytes, per_device_bytes = temp + argument, generated_code_bytes,
      compile_seconds). `temp_bytes` is the activation + transient memory; gradients are outputs
      (`output_bytes` ≈ 4 B/param).
    """
    import contextlib

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding
    from pixeltok import sharding
    from pixeltok.models import create_model

    abstract = nnx.eval_shape(lambda: create_model(model_name, patch_size, image_size, num_classes=num_classes,
                                                   num_channels=num_channels, dtype=dtype, remat=remat or None,
                                                   **overrides))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)

    def loss_fn(params, rest, images, labels):
        model = nnx.merge(graphdef, params, rest)
        logits = model(images, train=True, rng=jax.random.key(0))     # drop-path needs a key when its rate > 0
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    images = jax.ShapeDtypeStruct((batch, image_size, image_size, num_channels), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    ctx = contextlib.nullcontext()
    if mesh_cfg is not None:
        sizes = [int(v) for v in dict(mesh_cfg).values()]
        devices = jax.devices()[:math.prod(sizes)] if min(sizes) > 0 else None    # a fixed mesh: its devices
        mesh = sharding.make_mesh(mesh_cfg, devices)
        put = lambda tree, sh: jax.tree.map(  # noqa: E731
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sh)
        params = put(params, sharding.state_shardings(params, mesh, sharding_rules))
        rest = put(rest, sharding.state_shardings(rest, mesh, [(".*", "replicate")]))
        bsh = NamedSharding(mesh, sharding.batch_spec(mesh))
        images, labels = (jax.ShapeDtypeStruct(t.shape, t.dtype, sharding=bsh) for t in (images, labels))
        ctx = jax.set_mesh(mesh)
    t0 = time.perf_counter()
    with ctx:
        compiled = jax.jit(jax.value_and_grad(loss_fn)).lower(params, rest, images, labels).compile()
    seconds = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    temp, args = int(ma.temp_size_in_bytes), int(ma.argument_size_in_bytes)
    return dict(temp_bytes=temp, argument_bytes=args, output_bytes=int(ma.output_size_in_bytes),
                per_device_bytes=temp + args, generated_code_bytes=int(ma.generated_code_size_in_bytes),
                compile_seconds=seconds)


def measure_train_step(config, *, mesh_cfg=None) -> dict:
    """Compiles the trainer's real update step for `config` under its mesh (abstract inputs, nothing allocated)
    and returns XLA's per-device memory analysis.

    The step is `pixeltok.train.make_train_step` (loss, grads, AdamW, EMA, metrics), lowered with the train state
    in its configured shardings and one global batch split over the mesh's data axes, exactly as a run would call
    it. For a partitioned program XLA reports every size per device.

    Args:
      config: a pixeltok config (the data set's class/channel counts are read from `config.data_dir`, preparing
        the data set on first use, as a training run would).
      mesh_cfg: {axis: size} to use instead of `config.mesh`; the mesh spans all of `jax.devices()` (on CPU set
        `XLA_FLAGS=--xla_force_host_platform_device_count=N` for N virtual devices).

    Returns:
      dict(temp_bytes, argument_bytes, output_bytes, alias_bytes, per_device_bytes = temp + argument,
      generated_code_bytes, compile_seconds, mesh {axis: size}).
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from pixeltok import sharding, train

    if hasattr(train, "plan_run"):
        s = train.plan_run(config, mesh_cfg=mesh_cfg)
        state = s.abstract_state                       # ShapeDtypeStructs already carrying their shardings
    else:                                              # the trainer before the task seam
        s = train.setup(config, mesh_cfg=mesh_cfg)
        state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                             s.abstract_state, s.state_shardings)
    step = train.make_train_step(s)
    c, micro = s.config, s.config.batch_size
    batch_sh = sharding.batch_sharding(s.mesh)
    image = (micro, c.image_size, c.image_size, c.num_channels)
    if str(c.get("task", "classification")) == "segmentation":      # per-pixel integer labels
        label = jax.ShapeDtypeStruct(image[:3], jnp.int32, sharding=batch_sh)
    else:                                                            # soft targets (mixup-ready)
        label = jax.ShapeDtypeStruct((micro, c.num_classes), jnp.float32, sharding=batch_sh)
    batch = {"image": jax.ShapeDtypeStruct(image, jnp.float32, sharding=batch_sh), "label": label}
    bad = jax.ShapeDtypeStruct((2,), jnp.int32, sharding=NamedSharding(s.mesh, P()))
    t0 = time.perf_counter()
    with jax.set_mesh(s.mesh):
        compiled = step.lower(state, batch, bad).compile()
    seconds = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    temp, args = int(ma.temp_size_in_bytes), int(ma.argument_size_in_bytes)
    return dict(temp_bytes=temp, argument_bytes=args, output_bytes=int(ma.output_size_in_bytes),
                alias_bytes=int(ma.alias_size_in_bytes), per_device_bytes=temp + args,
                generated_code_bytes=int(ma.generated_code_size_in_bytes), compile_seconds=seconds,
                mesh=sharding.describe_mesh(s.mesh))


def _measure_grads_from_config(config, est: MemoryEstimate) -> dict:
    """measure_compiled for a config: its model, overrides, per-device batch x data-parallel size, mesh, rules."""
    import jax
    from pixeltok import sharding
    from pixeltok.models import resolve_architecture, valid_overrides
    model_cfg = {k: v for k, v in dict(config.get("model", {}) or {}).items() if k in valid_overrides(config.model_name)}
    if resolve_architecture(config.model_name)[0] != "adventurer":
        model_cfg.pop("chunk_size", None)
    mesh_cfg = dict(config.get("mesh", {}) or {}) or {"data": -1}
    shape = sharding.mesh_shape(mesh_cfg, jax.device_count())
    k, ch = _dataset_defaults(config)
    m = measure_compiled(config.model_name, config.patch_size, config.image_size,
                         batch=est.batch * shape.get("data", 1) * shape.get("fsdp", 1),
                         dtype=config.get("dtype", "float32"), remat=config.get("remat", ""), num_classes=k,
                         num_channels=ch, mesh_cfg=shape, sharding_rules=config.get("sharding_rules") or None,
                         **model_cfg)
    m["mesh"] = shape
    return m


# --------------------------------------------------------------------------------------------------------------- CLI
def main(argv) -> None:
    from absl import flags
    del argv
    import sys
    try:
        config = flags.FLAGS.config
        device = flags.FLAGS.device_gib * GIB if flags.FLAGS.device_gib else None
        import jax
        est = from_config(config, num_devices=flags.FLAGS.devices or jax.device_count(), batch=flags.FLAGS.batch)
        print(est.table(device), flush=True)
        m = None
        if flags.FLAGS.measure_grads:
            m = _measure_grads_from_config(config, est)
        elif flags.FLAGS.measure:
            m = measure_train_step(config)
    except (ValueError, KeyError, FileNotFoundError) as e:     # ConfigError is a ValueError: one line, exit 2
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()] or [repr(e)]
        sys.stderr.write(f"pixeltok: error: {lines[0]}\n")
        sys.exit(2)
    if m is not None:
        mib = 1024**2
        print(f"  compiled per-device: {m['per_device_bytes'] / mib:.3f} MiB (temp {m['temp_bytes'] / mib:.3f} + "
              f"arguments {m['argument_bytes'] / mib:.3f} MiB; mesh {m['mesh']}) vs estimated total "
              f"{est.total_bytes / mib:.1f} MiB; compile {m['compile_seconds']:.1f} s")


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "config file[:arg]", lock_config=False)
    flags.DEFINE_integer("batch", None, "images per device (default: batch_size / accum_steps / devices)")
    flags.DEFINE_integer("devices", None, "devices the config's mesh spans (default: jax.device_count())")
    flags.DEFINE_float("device_gib", 0.0, "device memory in GiB for the fits / max-batch line (0: skip)")
    flags.DEFINE_bool("measure", False, "also compile forward+backward and print XLA's memory_analysis")
    flags.DEFINE_bool("measure_grads", False, "compile loss + grads of the model alone under the config's mesh "
                      "(no optimizer; needs no data set, e.g. ImageNet configs on a machine without ImageNet)")
    flags.mark_flag_as_required("config")


if __name__ == "__main__":
    import sys
    from absl import app
    _define_flags()
    # Accept the hyphenated spellings too (--device-gib as in the docs).
    sys.argv = [a.replace("--device-gib", "--device_gib") for a in sys.argv]
    app.run(main)
