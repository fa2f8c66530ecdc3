"""Models (docs/models.md): `create_model(name, ...)`, `count_params(model)`, and the name registry.

    model = create_model("adventurer_base", patch_size=16, image_size=224, num_classes=1000, depth=6, dtype="bfloat16")
    logits = model(images, train=False)          # (batch, H, W, C) -> (batch, num_classes) float32
"""

from __future__ import annotations

import jax
from flax import nnx

from pixeltok.models.adventurer import Adventurer, flip_layer_set, flip_layers
from pixeltok.models.common import KeySeq, drop_path_rates
from pixeltok.models.vit import ViT, vit_heads
from pixeltok.ops.resize import resize_patch_embed, resize_posemb

# name -> (architecture, width, depth); DeiT sizes for ViT, the paper's sizes for Adventurer (docs/models.md, "Sizes").
MODELS = {
    "vit_tiny": ("vit", 192, 12),
    "vit_small": ("vit", 384, 12),
    "vit_base": ("vit", 768, 12),
    "vit_large": ("vit", 1024, 24),
    "adventurer_tiny": ("adventurer", 256, 12),
    "adventurer_small": ("adventurer", 512, 12),
    "adventurer_base": ("adventurer", 768, 12),
    "adventurer_large": ("adventurer", 1024, 24),
}

COMMON_OVERRIDES = ("depth", "width", "dtype", "remat", "drop_path", "drop_path_schedule", "posemb", "head_dim",
                    "scan_layers", "head_type")
VIT_OVERRIDES = ("attn_impl", "mlp_ratio")
# Adventurer-only switches with their defaults. A ViT accepts them only at these values, so one shared `config.model`
# dict can feed both architectures while a real Adventurer-only setting on a ViT fails loudly.
ADVENTURER_DEFAULTS = {"d_state": 64, "expand": 2, "chunk_size": 128, "ssd_impl": "chunked",
                       "flip_rule": "alternate"}
ARCH = {"vit": ViT, "adventurer": Adventurer}


def model_names() -> list[str]:
    """The registered model names."""
    return list(MODELS)


def valid_overrides(name: str) -> tuple[str, ...]:
    """Override keys `create_model` accepts for a model name."""
    arch = _lookup(name)[0]
    extra = VIT_OVERRIDES if arch == "vit" else tuple(ADVENTURER_DEFAULTS)
    return COMMON_OVERRIDES + extra


def _lookup(name: str) -> tuple[str, int, int]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    return MODELS[name]


def resolve_architecture(name: str, **overrides) -> tuple[str, dict]:
    """(architecture, constructor kwargs) for a model name and overrides; ValueError on unknown keys/values.

    None-valued overrides mean "default"; width and depth overrides replace the size's own.
    """
    arch, width, depth = _lookup(name)
    valid = valid_overrides(name)
    kwargs = {"width": width, "depth": depth}
    for key, value in overrides.items():
        if key not in valid and not (arch == "vit" and key in ADVENTURER_DEFAULTS):
            raise ValueError(f"unknown override {key!r} for {name}; valid: {', '.join(valid)}")
        if value is None:
            continue
        if arch == "vit" and key in ADVENTURER_DEFAULTS:
            if value != ADVENTURER_DEFAULTS[key]:
                raise ValueError(f"override {key}={value!r} applies only to adventurer models, not {name}")
            continue
        kwargs[key] = value
    return arch, kwargs


def create_model(name: str, patch_size: int = 16, image_size: int = 224, num_classes: int = 1000,
                 num_channels: int = 3, seed: int = 0, **overrides) -> nnx.Module:
    """Builds a registered model (works under `nnx.eval_shape(lambda: create_model(...))`).

    Args:
      name: one of `MODELS` (vit_{tiny,small,base,large}, adventurer_{tiny,small,base,large}).
      patch_size: p, must divide image_size (ValueError naming both otherwise).
      image_size: square input side; inputs of another size raise ValueError at call time.
      num_classes, num_channels: head outputs and input channels.
      seed: parameter-init seed.
      **overrides: architecture switches, see `valid_overrides(name)`: depth, width, dtype ("float32" |
        "bfloat16" compute dtype), remat (None/"" or a jax.checkpoint_policies name), drop_path,
        drop_path_schedule ("released_code" | "linear"; ViT default "linear"), head_dim, posemb ("learned"),
        head_type (`heads.HEAD_TYPES`, default "classification");
        Adventurer: d_state, expand, chunk_size, ssd_impl ("chunked" | "recurrent"), flip_rule ("alternate" |
        "released_code" | "none"); ViT: attn_impl ("auto" | "xla" | "cudnn" | "chunked"), mlp_ratio.
    """
    arch, kwargs = resolve_architecture(name, **overrides)
    return ARCH[arch](patch_size=patch_size, image_size=image_size, num_classes=num_classes,
                      num_channels=num_channels, rngs=KeySeq(seed), **kwargs)


def _param_leaves(model) -> list[tuple[str, object]]:
    state = nnx.state(model, nnx.Param)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state)]


def count_params(model: nnx.Module, exclude_embeddings: bool = False) -> int:
    """Number of elements in every nnx.Param (also for eval_shape'd models: ShapeDtypeStruct sizes).

    exclude_embeddings=True drops the position embeddings only (the non-embedding count used by scaling fits;
    the patch-embed kernel, cls token and head stay in).
    """
    total = 0
    for path, leaf in _param_leaves(model):
        if exclude_embeddings and "'pos_embed'" in path:
            continue
        total += int(leaf.size)
    return total


__all__ = ["MODELS", "Adventurer", "ViT", "count_params", "create_model", "drop_path_rates", "flip_layer_set",
           "flip_layers", "model_names", "resize_patch_embed", "resize_posemb", "resolve_architecture",
           "valid_overrides", "vit_heads"]
