"""Analytic FLOPs per image (docs/ssd.md, "FLOPs"): the x-axis of compute-based scaling plots.

Forward FLOPs per token per layer (a multiply-add = 2 FLOPs), blocks only (embedding, head and norms ignored):

    ViT        F = 24·d² + 4·L·d                         (QKV + proj 8d², MLP 16d², QKᵀ and PV 2Ld each)
    Adventurer F = 2d(2D + 2GN + H) + 2K(D + 2GN)        (in_proj, depthwise conv)
                 + 2Q·G·N + 2Q·D + 4N·D                  (chunked SSD: C·Bᵀ, decay-weighted sum, states + y_off)
                 + 2D·d + 15d²                           (out_proj, SwiGLU with hidden 2.5d)

with D = expand·d, H = D / head_dim, G = 1, K = 4, Q = chunk_size. Training = 3 × forward; L = n + 1 for ViT and
n + 2 for Adventurer (the heading-average token).
"""

from __future__ import annotations

from pixeltok.models import ADVENTURER_DEFAULTS, MODELS, resolve_architecture, vit_heads
from pixeltok.models.common import check_patch_size


def sequence_length(arch: str, patch_size: int, image_size: int) -> int:
    """Sequence length inside the blocks: n + 1 (cls) for ViT, n + 2 (cls + heading token) for Adventurer."""
    n = check_patch_size(patch_size, image_size) ** 2
    return n + 1 if arch == "vit" else n + 2


def tokens_per_image(model_name: str, patch_size: int, image_size: int) -> int:
    """`sequence_length` of a registered model name."""
    arch = MODELS[model_name][0] if model_name in MODELS else resolve_architecture(model_name)[0]
    return sequence_length(arch, patch_size, image_size)


def vit_layer_flops(width: int, length: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs per token of one ViT block at sequence length `length`."""
    d = width
    return 8.0 * d * d + 4.0 * mlp_ratio * d * d + 4.0 * length * d


def adventurer_layer_flops(width: int, *, d_state: int = 64, expand: int = 2, head_dim: int = 64,
                           chunk_size: int = 128, ngroups: int = 1, conv_kernel: int = 4) -> float:
    """Forward FLOPs per token of one Adventurer block (independent of the sequence length)."""
    d, n, g, q = width, d_state, ngroups, chunk_size
    inner = expand * d
    heads = inner // min(head_dim, inner)
    in_proj = 2.0 * d * (2 * inner + 2 * g * n + heads)
    conv = 2.0 * conv_kernel * (inner + 2 * g * n)
    scan = 2.0 * q * g * n + 2.0 * q * inner + 4.0 * n * inner
    out_proj = 2.0 * inner * d
    swiglu = 6.0 * d * int(2.5 * d)          # three d × 2.5d matmuls = 15 d²
    return in_proj + conv + scan + out_proj + swiglu


def train_flops_per_image(model_name: str, patch_size: int, image_size: int, **overrides) -> float:
    """3 × forward FLOPs of all blocks for one image: 3 · depth · L · F(L).

    `overrides` are create_model's; width, depth, head_dim, mlp_ratio and the Adventurer switches d_state, expand,
    chunk_size (default 128) are honoured, the rest (dtype, remat, drop_path, ...) do not change the count.
    """
    arch, kw = resolve_architecture(model_name, **overrides)
    return block_train_flops(arch, kw, sequence_length(arch, patch_size, image_size))


def block_train_flops(arch: str, kw: dict, length: int) -> float:
    """`train_flops_per_image` from resolved constructor arguments (`models.resolve_architecture`)."""
    if arch == "vit":
        vit_heads(kw["width"], kw.get("head_dim"))      # validates the width/head split like create_model
        per_token = vit_layer_flops(kw["width"], length, kw.get("mlp_ratio", 4.0))
    else:
        arch_kw = {k: kw.get(k, ADVENTURER_DEFAULTS[k]) for k in ("d_state", "expand", "chunk_size")}
        per_token = adventurer_layer_flops(kw["width"], head_dim=kw.get("head_dim", 64), **arch_kw)
    return 3.0 * kw["depth"] * length * per_token
