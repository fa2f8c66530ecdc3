"""Pieces shared by ViT and Adventurer: dtypes, initialisers, patch embedding, RMSNorm, drop-path, remat
(position-embedding and patch-kernel resizing live in `pixeltok.ops.resize`).

Conventions: parameters are float32; the residual stream is float32; matmuls run in the compute dtype
(`float32` or `bfloat16`) and, for bfloat16, accumulate into float32 outputs (`preferred_element_type`), which is
both the fastest form on the development CPUs and the one that never needs an up-cast afterwards (docs/models.md,
"Conventions shared by both models").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pixeltok.ops.linear import MIXED_DOT_NAME, mixed_dot_general, save_mixed_dots  # noqa: F401

Array = jax.Array

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DROP_PATH_SCHEDULES = ("released_code", "linear")


# ----------------------------------------------------------------------------------------------------------------
# dtypes, initialisers, linear layers
# ----------------------------------------------------------------------------------------------------------------

def compute_dtype(name) -> jnp.dtype:
    """Maps "float32" | "bfloat16" (or the numpy/jnp dtype itself) to a jnp dtype; ValueError otherwise."""
    if isinstance(name, str):
        if name not in DTYPES:
            raise ValueError(f"dtype {name!r} is not supported; valid: {', '.join(DTYPES)}")
        return DTYPES[name]
    dt = jnp.dtype(name)
    if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"dtype {dt} is not supported; valid: {', '.join(DTYPES)}")
    return dt.type


def uniform_init(bound: float) -> Callable:
    """U(-bound, bound) initialiser (PyTorch's default for Linear/Conv, docs/models.md)."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def torch_linear_init(fan_in: int, scale: float = 1.0) -> Callable:
    """PyTorch's kaiming_uniform(a=sqrt(5)) for a Linear: U(±1/sqrt(fan_in)), optionally scaled."""
    return uniform_init(scale / math.sqrt(fan_in))


def trunc_normal(std: float = 0.02, bound: float = 2.0) -> Callable:
    """timm's `trunc_normal_(std=std)`: N(0, std²) truncated at ±bound in ABSOLUTE value (timm's a=-2, b=2).

    For std 0.02 the cut is at 100σ, so the draw is in effect an untruncated normal with std 0.02 (flax's
    `truncated_normal(0.02)` cuts at ±2σ and has std 0.0176). Same inverse-CDF method as timm.
    """
    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.truncated_normal(key, -bound / std, bound / std, shape, dtype)
    return init


# Standard deviation of a standard normal truncated to (-2, 2): timm divides by it in `variance_scaling_`.
_TRUNC2_STD = 0.87962566103423978


def lecun_normal() -> Callable:
    """timm 0.4.12's `lecun_normal_`: `trunc_normal_(std=√(1/fan_in) / 0.8796...)`, still cut at ±2 ABSOLUTE.

    The 1/0.8796 factor is meant for a cut at ±2σ (where it restores variance 1/fan_in, as flax's lecun_normal
    does), but timm's `trunc_normal_` cuts at ±2 absolute, so the effective std is √(1/fan_in)/0.8796 (×1.137)
    whenever that std is well below 2 (at p = 1, fan_in = 3, the cut at 3.05σ trims it to 0.649). fan_in is the
    product of all kernel axes but the last (p·p·C for a (p, p, C, d) patch kernel, PyTorch's C·p²).
    """
    def init(key, shape, dtype=jnp.float32):
        fan_in = math.prod(shape[:-1])
        return trunc_normal(math.sqrt(1.0 / fan_in) / _TRUNC2_STD)(key, shape, dtype)
    return init


def linear(din: int, dout: int, *, use_bias: bool, kernel_init: Callable, dtype, rngs: nnx.Rngs,
           bias_init: Callable = nnx.initializers.zeros) -> nnx.Linear:
    """An nnx.Linear with float32 params computing in `dtype`; bf16 matmuls accumulate into float32 outputs and
    their backward matmuls run in bf16 too (`mixed_dot_general`)."""
    if jnp.dtype(dtype) == jnp.dtype(jnp.float32):
        return nnx.Linear(din, dout, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                          kernel_init=kernel_init, bias_init=bias_init, rngs=rngs)
    return nnx.Linear(din, dout, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                      preferred_element_type=jnp.float32, dot_general=mixed_dot_general, kernel_init=kernel_init,
                      bias_init=bias_init, rngs=rngs)


class KeySeq:
    """A stateless stand-in for `nnx.Rngs` during construction: `params()` returns fold_in(key, i) for i = 0, 1, ...

    nnx.Rngs keeps its counter in a Variable whose every update, under `nnx.eval_shape`, inspects the tracer's
    sharding and costs ~9 ms (≈ 75 % of building Adventurer-L abstractly). Modules only call `rngs.params()`, so a
    Python counter gives the same determinism at a fraction of the cost; nothing of it is kept in the model.
    """

    def __init__(self, seed: int):
        self._key = jax.random.key(seed)
        self._count = 0

    def params(self) -> Array:
        self._count += 1
        return jax.random.fold_in(self._key, self._count - 1)


# ----------------------------------------------------------------------------------------------------------------
# patch embedding
# ----------------------------------------------------------------------------------------------------------------

def check_patch_size(patch_size: int, image_size: int) -> int:
    """Returns the grid side image_size // patch_size; ValueError when the patch size does not divide the image."""
    if patch_size < 1 or image_size < 1 or image_size % patch_size:
        raise ValueError(f"patch_size {patch_size} does not divide image_size {image_size}; "
                         f"valid patch sizes divide {image_size}")
    return image_size // patch_size


def patch_embed_conv(num_channels: int, width: int, patch_size: int, *, kernel_init: Callable,
                     bias_init: Callable, rngs: nnx.Rngs) -> nnx.Conv:
    """The patch embedding: a Conv with kernel = stride = p, kernel (p, p, C, d) plus bias (d,)."""
    return nnx.Conv(num_channels, width, (patch_size, patch_size), strides=(patch_size, patch_size),
                    padding="VALID", use_bias=True, param_dtype=jnp.float32, kernel_init=kernel_init,
                    bias_init=bias_init, rngs=rngs)


def embed_with_cls(model: nnx.Module, images: Array, *, cls_first: bool) -> Array:
    """Patch tokens plus the cls token, then the learned position embedding: (batch, n + 1, d) float32.

    `model` has patch_embed, cls_token, pos_embed, image_size, num_channels, patch_size, width and dtype. The cls
    token goes first (ViT, DeiT layout) or last (Adventurer, where the causal scan must have read every patch).
    """
    check_images(images, model.image_size, model.num_channels)
    x = embed_patches(model.patch_embed, images, model.patch_size, model.dtype)
    cls = jnp.broadcast_to(model.cls_token[...], (x.shape[0], 1, model.width))
    return jnp.concatenate([cls, x] if cls_first else [x, cls], axis=1) + model.pos_embed[...]


def patch_grid(patch_tokens: Array, grid: int) -> Array:
    """(batch, grid², d) patch tokens in row-major order -> (batch, grid, grid, d), the image's layout."""
    b, n, d = patch_tokens.shape
    if n != grid * grid:
        raise ValueError(f"{n} patch tokens do not form a {grid}x{grid} grid")
    return patch_tokens.reshape(b, grid, grid, d)


def embed_patches(conv: nnx.Conv, images: Array, patch_size: int, dtype) -> Array:
    """Applies the patch-embed conv as one matmul over row-major patches.

    Identical to `conv(images)` (stride = kernel, no overlap) but a plain GEMM, which XLA:CPU runs (and
    differentiates) much faster than a strided conv, and which can take bf16 inputs with float32 accumulation.

    Args:
      conv: the patch-embed nnx.Conv, kernel (p, p, C, d), bias (d,).
      images: (batch, H, W, C) float.
      patch_size: p.
      dtype: compute dtype of the matmul.

    Returns:
      (batch, (H/p)·(W/p), d) float32 tokens in row-major patch order.
    """
    b, h, w, c = images.shape
    p = patch_size
    gh, gw = h // p, w // p
    x = images.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p * p * c)
    kernel = conv.kernel[...].reshape(p * p * c, -1)
    out = jnp.einsum("bnk,kd->bnd", x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)
    return out + conv.bias[...]


# ----------------------------------------------------------------------------------------------------------------
# norms, drop-path, remat
# ----------------------------------------------------------------------------------------------------------------

class RMSNorm(nnx.Module):
    """RMSNorm over the last axis, computed in float32: y = x / sqrt(mean(x²) + eps) · scale.

    Attributes:
      scale: (dim,) weight, init 1 (docs/models.md, Adventurer initialisation).
    """

    def __init__(self, dim: int, *, eps: float = 1e-5, out_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps
        self.out_dtype = out_dtype

    def __call__(self, x: Array) -> Array:
        """x: (..., dim) any float dtype -> (..., dim) in out_dtype."""
        x = x.astype(jnp.float32)
        y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(self.out_dtype)


def drop_path(x: Array, rate: float | Array, rng: Array | None) -> Array:
    """Stochastic depth on a residual branch: per-sample keep mask (B, 1, ..., 1), kept samples scaled 1/(1-rate).

    Args:
      x: (batch, ...) branch output.
      rate: drop probability: a Python float (0 returns x unchanged) or a traced scalar (the per-layer rate inside
        a scan over layers; rate 0 keeps every sample with scale 1, i.e. returns x exactly, and any rate draws the
        same mask from the same key as the Python-float form).
      rng: PRNG key; None means evaluation (no dropping).
    """
    if rng is None:
        return x
    if isinstance(rate, (int, float)):
        if rate <= 0.0:
            return x
        keep = 1.0 - rate
    else:
        # bernoulli(p = 1) is uniform[0, 1) < 1: always kept, and x / 1 == x, so rate 0 is the identity.
        keep = 1.0 - jnp.asarray(rate, jnp.float32)
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    scale = keep if isinstance(keep, float) else keep.astype(x.dtype)     # same rounding as a weak Python float
    return jnp.where(mask, x / scale, 0.0).astype(x.dtype)


def drop_path_rates(rate: float, depth: int, schedule: str = "released_code") -> list[float]:
    """Per-layer drop-path rates.

    "released_code" reproduces the official Adventurer off-by-one (docs/models.md, "Drop-path schedule"):
    dpr = [0] + linspace(0, rate, depth), layer i uses dpr[i], so layers 0 and 1 get 0, layer i >= 1 gets
    rate·(i-1)/(depth-1) and `rate` itself is never reached. "linear" is the usual rate·i/(depth-1) (DeiT).
    """
    if schedule not in DROP_PATH_SCHEDULES:
        raise ValueError(f"drop_path_schedule {schedule!r} is unknown; valid: {', '.join(DROP_PATH_SCHEDULES)}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path {rate} must be in [0, 1)")
    lin = [float(v) for v in np.linspace(0.0, rate, depth)]
    if schedule == "linear":
        return lin
    return ([0.0] + lin)[:depth]


def remat_policy(remat) -> Callable | None | bool:
    """Maps the `remat` override to a jax.checkpoint policy.

    None / "" / False: no remat (returns None). True or "full": remat with no policy (save nothing but the block
    input). Otherwise the name of a `jax.checkpoint_policies` attribute, e.g. "nothing_saveable".
    """
    if remat is None or remat is False or remat == "":
        return None
    if remat is True or remat == "full":
        return True
    if not isinstance(remat, str) or not hasattr(jax.checkpoint_policies, remat):
        valid = sorted(n for n in dir(jax.checkpoint_policies) if not n.startswith("_"))
        raise ValueError(f"remat {remat!r} is not a jax.checkpoint_policies name; valid: '', 'full', "
                         f"{', '.join(v for v in valid if callable(getattr(jax.checkpoint_policies, v)))}")
    policy = getattr(jax.checkpoint_policies, remat)
    # Factories (save_only_these_names, ...) need arguments; only plain policies can be named.
    if "dots" in remat:  # also save the bf16 linear layers' matmuls, hidden in mixed_dot_general's custom_vjp
        return save_mixed_dots(policy)
    return policy


def run_block_stack(model: nnx.Module, x: Array, train: bool, rng: Array | None, **per_layer) -> Array:
    """Applies `model.blocks` to the residual stream (ViT and Adventurer share this).

    Drop-path is active only when training with a non-zero rate, and then needs `rng`. With remat or `scan_layers`
    the blocks run as a scan over layers (see `apply_blocks`); `per_layer` are extra per-layer arguments (flips).
    """
    use_drop = train and max(model.drop_rates) > 0.0
    if use_drop and rng is None:
        raise ValueError("train=True with drop_path > 0 needs an rng key")
    rates = model.drop_rates if use_drop else (0.0,) * model.depth
    return apply_blocks(model.blocks, x, model.remat_policy, rng=rng if use_drop else None, scan=model.scan_layers,
                        drop_rate=rates, **per_layer)


def apply_blocks(blocks: Sequence[nnx.Module], x: Array, policy, *, rng: Array | None = None,
                 scan: bool = False, **per_layer: Sequence) -> Array:
    """Applies a stack of blocks to the residual stream: `x = blocks[i](x, rng=keys[i], **{k: v[i]})` for each i.

    Without remat (`policy` None) and without `scan`, a Python loop (the fastest form on CPU, every per-layer value
    static). Otherwise `scan_blocks`: a `jax.lax.scan` over layers with a `jax.checkpoint` body. A checkpoint
    around each block of an unrolled loop saves no memory on XLA:CPU (its scheduler is free to run the
    recomputation early); inside a scan the saving is structural, as the scan keeps only its carry per layer.

    Both forms draw the per-layer keys the same way, `jax.random.split(rng, depth)` (key i to layer i), so drop-path
    masks, and hence losses and gradients, agree between them.

    Args:
      blocks: depth modules of one structure (an nnx.List); their parameter layout is left untouched.
      x: (batch, length, d) residual stream.
      policy: from `remat_policy`: None (no remat), True (save nothing but the block input) or a checkpoint policy.
      rng: PRNG key for drop-path (train), or None.
      scan: use the scan also without remat.
      **per_layer: keyword arguments of the block call, one value per layer (flip flags, drop-path rates).

    Returns:
      The residual stream after the last block, same shape.
    """
    depth = len(blocks)
    for name, values in per_layer.items():
        if len(values) != depth:
            raise ValueError(f"{name} has {len(values)} per-layer values; expected one per block ({depth})")
    if policy is None and not scan:
        keys = split_rngs(rng, depth)
        for i, block in enumerate(blocks):
            x = block(x, rng=keys[i], **{name: values[i] for name, values in per_layer.items()})
        return x
    return scan_blocks(blocks, x, policy, rng=rng, **per_layer)


def scan_blocks(blocks: Sequence[nnx.Module], x: Array, policy, *, rng: Array | None = None,
                **per_layer: Sequence) -> Array:
    """`apply_blocks` as `jax.lax.scan` over layers with the residual stream as carry.

    Each block is split into (graphdef, state); the graphdefs must be equal (anything that differs per layer is a
    per-layer argument, not a static attribute) and the states are stacked along a new leading axis on the fly
    (the stack's VJP unstacks the gradients, so `blocks/<i>/...` parameters keep their layout). A per-layer
    argument with the same value in every layer is closed over as a Python constant; otherwise it is stacked into
    an array and the block receives a traced scalar. With `policy` set the body is `jax.checkpoint`ed, so the
    backward pass keeps only each layer's input (plus what the policy saves) and recomputes the rest.
    """
    graphdefs, states = zip(*(nnx.split(block) for block in blocks))
    graphdef = graphdefs[0]
    if any(g != graphdef for g in graphdefs[1:]):
        raise ValueError("blocks differ in structure or static attributes; a scan over layers needs identical "
                         "blocks (pass per-layer differences as per_layer arguments)")
    static = {name: values[0] for name, values in per_layer.items() if all(v == values[0] for v in values)}
    xs = {name: jnp.asarray(values) for name, values in per_layer.items() if name not in static}
    xs["state"] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    if rng is not None:
        xs["rng"] = jax.random.split(rng, len(blocks))           # the keys of split_rngs, as one array

    def body(carry, layer):
        layer = dict(layer)
        block = nnx.merge(graphdef, layer.pop("state"))
        return block(carry, rng=layer.pop("rng", None), **static, **layer), None

    if policy is not None:
        body = jax.checkpoint(body) if policy is True else jax.checkpoint(body, policy=policy)
    x, _ = jax.lax.scan(body, x, xs)
    return x


def check_images(images: Array, image_size: int, num_channels: int) -> None:
    """ValueError unless images is (batch, image_size, image_size, num_channels)."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (image_size, image_size, num_channels):
        raise ValueError(f"images of shape {tuple(images.shape)} do not match the model; expected "
                         f"(batch, {image_size}, {image_size}, {num_channels})")


def split_rngs(rng: Array | None, n: int) -> Sequence[Array | None]:
    """n independent keys from rng (or n Nones)."""
    if rng is None:
        return [None] * n
    return list(jax.random.split(rng, n))
