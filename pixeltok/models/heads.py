"""Output heads on a model's final tokens: the one place that knows which head a `head_type` builds.

Both models build their head with `make_head` (always the parameter subtree `head/`, so loading pretrained weights
can reset it by path) and apply it with `apply_head(model, tokens)` to the output of `model.features`. A new head
type adds a case to both functions and its name to HEAD_TYPES; the models need no change.

    "classification": Linear(width, num_classes) on the cls token -> logits (batch, num_classes) float32.
    "seg_linear": Linear(width, K) on every patch token -> (batch, gh, gw, K) -> bilinear upsampling by the patch size
        (half-pixel centres, edge-clamped) -> per-pixel logits (batch, H, W, K) float32 (docs/segmentation.md).
    "seg_pixel_shuffle": Linear(width, p*p*K) on every patch token, output channel (i*p + j)*K + k = class k of pixel
        (i, j) of the token's patch -> (batch, H, W, K) float32, exact per-pixel logits without interpolation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pixeltok.models import common

Array = jax.Array

HEAD_TYPES = ("classification", "seg_linear", "seg_pixel_shuffle")
SEG_HEAD_TYPES = ("seg_linear", "seg_pixel_shuffle")


def check_head_type(head_type: str) -> str:
    """Returns head_type if it is one of HEAD_TYPES; ValueError naming the valid ones otherwise."""
    if head_type not in HEAD_TYPES:
        raise ValueError(f"head_type {head_type!r} is unknown; valid: {', '.join(HEAD_TYPES)}")
    return head_type


def make_head(head_type: str, width: int, num_classes: int, *, patch_size: int, dtype, rngs) -> nnx.Module:
    """The head module for `head_type` on width-d tokens (patch_size is for heads that predict per pixel).

    classification / seg_linear: Linear(width, num_classes); seg_pixel_shuffle: Linear(width, p*p*num_classes);
    weight trunc_normal(0.02), bias 0.
    """
    check_head_type(head_type)
    out = num_classes * patch_size * patch_size if head_type == "seg_pixel_shuffle" else num_classes
    return common.linear(width, out, use_bias=True, kernel_init=common.trunc_normal(), dtype=dtype, rngs=rngs)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 interpolation weights of a 1-D bilinear resize with half-pixel centres and clamped
    edges (PyTorch's `interpolate(mode="bilinear", align_corners=False)`): output o samples the input at
    max((o + 0.5) * n_in / n_out - 0.5, 0)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - w1)
    np.add.at(m, (np.arange(n_out), i1), w1)
    return m.astype(np.float32)


def upsample_bilinear(x: Array, out_h: int, out_w: int) -> Array:
    """(batch, h, w, K) float32 -> (batch, out_h, out_w, K): the separable bilinear resize of `bilinear_matrix`
    as two small matmuls (exact float32 weights; the identity when the sizes already match)."""
    b, h, w, k = x.shape
    if (h, w) == (out_h, out_w):
        return x
    hi = jax.lax.Precision.HIGHEST  # logits feed an argmax: no reduced-precision matmul passes
    x = jnp.einsum("yh,bhwk->bywk", jnp.asarray(bilinear_matrix(h, out_h)), x, precision=hi)
    return jnp.einsum("xw,bywk->byxk", jnp.asarray(bilinear_matrix(w, out_w)), x, precision=hi)


def apply_head(model: nnx.Module, tokens: Array) -> Array:
    """The model's output from its final tokens `model.features(...)` (batch, length, d) float32.

    `model` provides `head_type`, `head`, `dtype`, `cls_index` (the cls token's position in `tokens`) and
    `patch_grid(tokens)` (the patch tokens as a (batch, gh, gw, d) image grid).
    """
    check_head_type(model.head_type)
    if model.head_type == "classification":
        cls = tokens[:, model.cls_index]
        return model.head(cls.astype(model.dtype)).astype(jnp.float32)
    grid = model.patch_grid(tokens)                                     # (batch, gh, gw, d)
    out = model.head(grid.astype(model.dtype)).astype(jnp.float32)      # (batch, gh, gw, K or p*p*K)
    b, gh, gw, c = out.shape
    p = model.patch_size
    if model.head_type == "seg_linear":
        return upsample_bilinear(out, gh * p, gw * p)
    k = c // (p * p)
    out = out.reshape(b, gh, gw, p, p, k).transpose(0, 1, 3, 2, 4, 5)  # (batch, gh, i, gw, j, K)
    return out.reshape(b, gh * p, gw * p, k)
