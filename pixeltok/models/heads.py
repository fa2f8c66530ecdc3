"""Output heads on a model's final tokens: the one place that knows which head a `head_type` builds.

Both models build their head with `make_head` (always the parameter subtree `head/`, so loading pretrained weights
can reset it by path) and apply it with `apply_head(model, tokens)` to the output of `model.features`. A new head
type adds a case to both functions and its name to HEAD_TYPES; the models need no change.

    "classification": Linear(width, num_classes) on the cls token -> logits (batch, num_classes) float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pixeltok.models import common

Array = jax.Array

HEAD_TYPES = ("classification",)


def check_head_type(head_type: str) -> str:
    """Returns head_type if it is one of HEAD_TYPES; ValueError naming the valid ones otherwise."""
    if head_type not in HEAD_TYPES:
        raise ValueError(f"head_type {head_type!r} is unknown; valid: {', '.join(HEAD_TYPES)}")
    return head_type


def make_head(head_type: str, width: int, num_classes: int, *, patch_size: int, dtype, rngs) -> nnx.Module:
    """The head module for `head_type` on width-d tokens (patch_size is for heads that predict per pixel).

    classification: Linear(width, num_classes), weight trunc_normal(0.02), bias 0.
    """
    del patch_size  # used by per-pixel heads only
    check_head_type(head_type)
    return common.linear(width, num_classes, use_bias=True, kernel_init=common.trunc_normal(), dtype=dtype,
                         rngs=rngs)


def apply_head(model: nnx.Module, tokens: Array) -> Array:
    """The model's output from its final tokens `model.features(...)` (batch, length, d) float32.

    `model` provides `head_type`, `head`, `dtype`, `cls_index` (the cls token's position in `tokens`) and
    `patch_grid(tokens)` (the patch tokens as a (batch, gh, gw, d) image grid).
    """
    check_head_type(model.head_type)
    cls = tokens[:, model.cls_index]
    return model.head(cls.astype(model.dtype)).astype(jnp.float32)
