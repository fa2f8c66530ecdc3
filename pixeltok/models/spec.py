"""A model resolved once from a config: architecture, constructor arguments, tokens and FLOPs per image.

The trainer, the memory estimate and the FLOP counts all need the same facts about a run's model; `ModelSpec` is
them, resolved from the name and overrides a single time and handed on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

from pixeltok import flops
from pixeltok.models import ARCH, resolve_architecture
from pixeltok.models.common import KeySeq, check_patch_size


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything `create_model` needs, resolved: `build()` makes the nnx module."""
    name: str
    arch: str                         # "vit" | "adventurer"
    kwargs: dict[str, Any]            # constructor arguments: width, depth and the validated overrides
    patch_size: int
    image_size: int
    num_classes: int
    num_channels: int
    seed: int = 0

    @classmethod
    def create(cls, name: str, *, patch_size: int, image_size: int, num_classes: int, num_channels: int,
               seed: int = 0, **overrides) -> "ModelSpec":
        """Resolves a registered name and overrides (ValueError for unknown ones or a patch not dividing the image)."""
        check_patch_size(patch_size, image_size)
        arch, kwargs = resolve_architecture(name, **overrides)
        return cls(name=name, arch=arch, kwargs=kwargs, patch_size=patch_size, image_size=image_size,
                   num_classes=num_classes, num_channels=num_channels, seed=seed)

    @classmethod
    def from_config(cls, config, **extra_overrides) -> "ModelSpec":
        """From a run config: `config.model` overrides plus the top-level `dtype` and `remat` (and a task's extras)."""
        overrides = dict(config.model.to_dict()) if config.get("model") is not None else {}
        overrides.update(dtype=config.dtype, remat=config.remat or None, **extra_overrides)
        return cls.create(config.model_name, patch_size=config.patch_size, image_size=config.image_size,
                          num_classes=config.num_classes, num_channels=config.num_channels, seed=config.seed,
                          **overrides)

    def build(self) -> nnx.Module:
        return ARCH[self.arch](patch_size=self.patch_size, image_size=self.image_size, num_classes=self.num_classes,
                               num_channels=self.num_channels, rngs=KeySeq(self.seed), **self.kwargs)

    @property
    def tokens_per_image(self) -> int:
        """Sequence length inside the blocks: patches + cls (ViT), patches + cls + heading token (Adventurer)."""
        return flops.sequence_length(self.arch, self.patch_size, self.image_size)

    @property
    def train_flops_per_image(self) -> float:
        return flops.block_train_flops(self.arch, self.kwargs, self.tokens_per_image)
