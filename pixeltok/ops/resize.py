"""Resizing learned parameters to a new grid or patch size: position embeddings and patch-embed kernels.

Used when a checkpoint meets a model of another resolution or patch size (`pixeltok.models.pretrained`,
`pixeltok.evaluate --config.image_size=`, `init_from`). Both resizes are linear maps written as explicit matrices,
so they are exact, deterministic and testable against NumPy:

- `resize_posemb`: PyTorch's bicubic interpolation (`F.interpolate(mode="bicubic", align_corners=False)`, the
  operation DeiT/timm/Adventurer use) of the patch-grid rows, with the cls row kept on its layout's side;
- `resize_patch_embed`: FlexiViT's pseudo-inverse resize of a patch-embed kernel, so that a patch upsampled
  bilinearly to the new patch size gives the same token as the original patch under the original kernel.

See docs/pretrained.md.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

POSEMB_LAYOUTS = ("vit", "adventurer")
POSEMB_RESIZE_METHODS = ("correct", "released_code")


def keys_cubic_matrix(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
    """The (out_size, in_size) 1-D bicubic interpolation matrix of PyTorch (align_corners=False, no antialias).

    Keys kernel with a = -0.75, half-pixel centres (src = (i + 0.5)·in/out - 0.5, not clamped), four taps at
    floor(src) - 1 .. floor(src) + 2 clamped to the border (docs/models.md). float64.
    """
    def w(t):
        t = abs(t)
        if t <= 1.0:
            return ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
        if t < 2.0:
            return ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
        return 0.0

    m = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        src = (i + 0.5) * scale - 0.5
        x0 = math.floor(src)
        frac = src - x0
        for k, dist in zip(range(-1, 3), (frac + 1.0, frac, 1.0 - frac, 2.0 - frac)):
            m[i, min(max(x0 + k, 0), in_size - 1)] += w(dist)
    return m


def _grid_hw(grid) -> tuple[int, int]:
    if isinstance(grid, int):
        return grid, grid
    gh, gw = grid
    return int(gh), int(gw)


def resize_grid(grid_emb: Array, new_grid) -> Array:
    """Bicubically resizes (batch, gh, gw, d) to (batch, gh', gw', d) with PyTorch's interpolation matrices."""
    _, gh, gw, _ = grid_emb.shape
    nh, nw = _grid_hw(new_grid)
    mh = jnp.asarray(keys_cubic_matrix(gh, nh), jnp.float32)
    mw = jnp.asarray(keys_cubic_matrix(gw, nw), jnp.float32)
    hp = jax.lax.Precision.HIGHEST
    out = jnp.einsum("ih,bhwd->biwd", mh, grid_emb.astype(jnp.float32), precision=hp)
    out = jnp.einsum("jw,biwd->bijd", mw, out, precision=hp)
    return out.astype(grid_emb.dtype)


def resize_posemb(posemb: Array, new_grid, *, layout: str = "vit", method: str = "correct") -> Array:
    """Resizes a learned position embedding (1, n+1, d) to a new square (or (gh, gw)) patch grid.

    Args:
      posemb: (batch, n + 1, d) with n = g² grid rows plus one extra (cls) row.
      new_grid: g' or (gh', gw').
      layout: "vit" (cls row first) or "adventurer" (cls row last, docs/models.md).
      method: "correct" keeps the cls row on the architecture's side and resizes only the grid; "released_code"
        reproduces the released resize bug (docs/models.md): the FIRST row is always taken as the extra token and
        put first, whatever the layout — for Adventurer patch 0 is carried over unresized and the real cls row is
        interpolated as the bottom-right grid cell.

    Returns:
      (batch, gh'·gw' + 1, d), same dtype.
    """
    if layout not in POSEMB_LAYOUTS:
        raise ValueError(f"layout {layout!r} is unknown; valid: {', '.join(POSEMB_LAYOUTS)}")
    if method not in POSEMB_RESIZE_METHODS:
        raise ValueError(f"method {method!r} is unknown; valid: {', '.join(POSEMB_RESIZE_METHODS)}")
    b, n1, d = posemb.shape
    g = math.isqrt(n1 - 1)
    if g * g != n1 - 1:
        raise ValueError(f"posemb has {n1} rows; expected g*g + 1 for a square grid")
    cls_first = layout == "vit" or method == "released_code"
    extra, grid = (posemb[:, :1], posemb[:, 1:]) if cls_first else (posemb[:, -1:], posemb[:, :-1])
    nh, nw = _grid_hw(new_grid)
    grid = resize_grid(grid.reshape(b, g, g, d), (nh, nw)).reshape(b, nh * nw, d)
    return jnp.concatenate([extra, grid] if cls_first else [grid, extra], axis=1)


def bilinear_patch_resize_matrix(old: int, new: int) -> np.ndarray:
    """R: (new², old²) matrix of the bilinear resize (jax.image.resize, as FlexiViT) of an old×old patch."""
    basis = np.eye(old * old, dtype=np.float32).reshape(old * old, old, old)
    out = jax.image.resize(jnp.asarray(basis), (old * old, new, new), method="bilinear")
    return np.asarray(out, np.float64).reshape(old * old, new * new).T


def resize_patch_embed(kernel: Array, new_patch) -> Array:
    """FlexiViT pseudo-inverse resize of a patch-embed kernel (p, p, C, d) to (p', p', C, d).

    Solves min ||Rᵀ w' − w|| per (channel, output) with R the bilinear resize of a patch (p² -> p'²), so that
    <resize(x), w'> ≈ <x, w> (exact when p' >= p: the minimum-norm exact solution).
    """
    p, p2, c, d = kernel.shape
    if p != p2:
        raise ValueError(f"kernel {kernel.shape} is not square in its first two axes")
    nh = new_patch if isinstance(new_patch, int) else new_patch[0]
    r = bilinear_patch_resize_matrix(p, nh)                     # (p'², p²)
    pinv = np.linalg.pinv(r.T)                                   # (p'², p²): w' = pinv(Rᵀ) w
    w = jnp.asarray(kernel, jnp.float32).reshape(p * p, c * d)
    out = jnp.einsum("nk,km->nm", jnp.asarray(pinv, jnp.float32), w, precision=jax.lax.Precision.HIGHEST)
    return out.reshape(nh, nh, c, d).astype(kernel.dtype)
