"""Plain-PyTorch reference models in the original codes' layouts, for the converter's parity tests.

- `adventurer.Adventurer`: the official Adventurer / Patch_Scaling model (`models_mamba.py` structure and key names;
  the Mamba-2 mixer of mamba_ssm 2.0.4 with a plain sequential SSD recurrence in place of the Triton kernel);
- `vit.VisionTransformer`: timm's ViT / DeiT layout and key names (timm itself is not installed here).

Both take NCHW images, as the originals do. `perturb_` gives every tensor random values (no zeros or ones: those
hide transposition and mapping errors).
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def perturb_(module: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Adds noise to every parameter: p += scale·max(std(p), 0.05)·N(0, 1) (so zeros/ones inits move too)."""
    gen = torch.Generator().manual_seed(seed)
    for _, p in sorted(module.named_parameters()):
        std = float(p.std()) if p.numel() > 1 else 0.0
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        p.add_(scale * max(std, 0.05) * noise)
    return module


class PatchEmbed(nn.Module):
    """timm's / the official codes' patch embedding: a p x p stride-p Conv2d, tokens row-major (key `proj`)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)
