"""Tests of the segmentation heads (pixeltok/models/heads.py): output shapes at p = 1 and odd grids, the per-pixel
numbers against float64 NumPy references built from the head's parameters and the backbone's patch-token grid, the
bilinear upsampling against PyTorch's `interpolate(align_corners=False)`, parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from pixeltok.models import count_params, create_model, heads

K = 5


def small(name, p, res, head_type, seed=0):
    return create_model(name, patch_size=p, image_size=res, num_classes=K, num_channels=3, seed=seed, width=32,
                        depth=1, head_type=head_type)


def head_numpy(model):
    w = np.asarray(model.head.kernel.value, np.float64)
    b = np.asarray(model.head.bias.value, np.float64)
    return w, b


def torch_bilinear(x, out_h, out_w):
    """(B, h, w, K) -> (B, out_h, out_w, K) with PyTorch, float64."""
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    y = torch.nn.functional.interpolate(t, size=(out_h, out_w), mode="bilinear", align_corners=False)
    return y.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("n_in, n_out", [(1, 4), (2, 32), (3, 48), (5, 20), (8, 8), (7, 3)])
def test_bilinear_matches_torch(n_in, n_out):
    x = np.random.default_rng(0).normal(size=(2, n_in, n_in, 3))
    out = np.asarray(heads.upsample_bilinear(jnp.asarray(x, jnp.float32), n_out, n_out))
    np.testing.assert_allclose(out, torch_bilinear(x, n_out, n_out), atol=1e-5)


@pytest.mark.parametrize("name, p, res", [("adventurer_tiny", 1, 8), ("adventurer_tiny", 16, 48), ("vit_tiny", 1, 8),
                                         ("vit_tiny", 4, 20)])  # grids 8x8 at p=1, odd 3x3 and 5x5
def test_seg_heads_shapes_and_values(name, p, res):
    x = jax.random.normal(jax.random.key(1), (2, res, res, 3))
    for head_type in ("seg_linear", "seg_pixel_shuffle"):
        model = small(name, p, res, head_type)
        out = model(x, train=False)
        assert out.shape == (2, res, res, K) and out.dtype == jnp.float32
        grid = np.asarray(model.patch_grid(model.features(x)), np.float64)  # (2, g, g, d)
        g = res // p
        assert grid.shape[1:3] == (g, g)
        w, b = head_numpy(model)
        per_token = grid @ w + b
        if head_type == "seg_linear":
            assert w.shape == (32, K)
            ref = torch_bilinear(per_token, res, res) if p > 1 else per_token
        else:
            assert w.shape == (32, p * p * K)
            ys, xs = np.meshgrid(np.arange(res), np.arange(res), indexing="ij")
            chan = ((ys % p) * p + (xs % p))[..., None] * K + np.arange(K)          # (res, res, K)
            tok = per_token[:, ys // p, xs // p]                                     # (2, res, res, p*p*K)
            ref = np.take_along_axis(tok, np.broadcast_to(chan, tok.shape[:3] + (K,)), axis=-1)
        np.testing.assert_allclose(np.asarray(out), ref, atol=2e-4, rtol=1e-4)


def test_head_param_counts_and_subtree():
    d = 32
    for p in (1, 4, 16):
        res = 16 * 3 if p == 16 else 16
        lin = small("adventurer_tiny", p, res, "seg_linear")
        shuf = small("adventurer_tiny", p, res, "seg_pixel_shuffle")
        cls = small("adventurer_tiny", p, res, "classification")
        assert count_params(lin) - count_params(cls) == 0  # Linear(d, K) either way
        assert count_params(shuf) - count_params(lin) == (p * p - 1) * (d * K + K)
        assert count_params(lin.head) == d * K + K
    with pytest.raises(ValueError, match=r"head_type 'seg_conv' is unknown; valid: classification, seg_linear, "
                                         r"seg_pixel_shuffle"):
        small("vit_tiny", 4, 16, "seg_conv")
