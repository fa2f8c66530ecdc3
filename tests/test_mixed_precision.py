"""Mixed-precision matmuls (`ops.linear.mixed_dot_general`) and length-padded fused attention
(`ops.attention.padded_attention`).

References are float64 NumPy; the structural checks read the lowered StableHLO, so they fail if a float32 matmul
sneaks back into the backward pass of a bf16 model.
"""

import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from pixeltok.models import common, create_model
from pixeltok.ops.attention import padded_attention
from pixeltok.ops.linear import mixed_dot_general

DN = (((1,), (0,)), ((), ()))


def _bf16(x: np.ndarray) -> np.ndarray:
    """Rounds to bfloat16 and back to float64 (what a bf16 operand holds)."""
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def test_mixed_dot_forward_is_float32_accumulated_bf16_product():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(7, 33)), rng.normal(size=(33, 5))
    xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    y = mixed_dot_general(xb, wb, DN, preferred_element_type=jnp.float32)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y, np.float64), _bf16(x) @ _bf16(w), rtol=1e-5, atol=1e-5)


def test_mixed_dot_gradients_match_float64_reference_of_bf16_cotangent():
    rng = np.random.default_rng(1)
    x, w, g = rng.normal(size=(6, 40)), rng.normal(size=(40, 9)), rng.normal(size=(6, 9))
    xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)

    def loss(a, b):
        y = mixed_dot_general(a, b, DN, preferred_element_type=jnp.float32)
        return jnp.sum(y * jnp.asarray(g, jnp.float32))

    dx, dw = jax.grad(loss, argnums=(0, 1))(xb, wb)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    gb = _bf16(g)  # the cotangent is rounded to bf16 before the backward matmuls
    ref_dx, ref_dw = gb @ _bf16(w).T, _bf16(x).T @ gb
    # Outputs are bf16 (8 significant bits): relative error up to 2^-8 per element, plus accumulation rounding.
    np.testing.assert_allclose(np.asarray(dx, np.float64), ref_dx, rtol=1e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(dw, np.float64), ref_dw, rtol=1e-2, atol=2e-2)


def test_mixed_dot_falls_back_to_plain_dot_for_float32():
    a = jnp.ones((3, 4), jnp.float32)
    b = jnp.ones((4, 2), jnp.float32)
    y = mixed_dot_general(a, b, DN, preferred_element_type=jnp.float32)
    np.testing.assert_array_equal(np.asarray(y), np.full((3, 2), 4.0))
    g = jax.grad(lambda a: mixed_dot_general(a, b, DN).sum())(a)
    assert g.dtype == jnp.float32


def _dot_operand_dtypes(hlo: str) -> list[tuple[str, str]]:
    pattern = r"stablehlo.dot_general[^:]*: \(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\)"
    return re.findall(pattern, hlo)


def _grad_hlo(name: str) -> str:
    from flax import nnx
    model = create_model(name, patch_size=8, image_size=16, num_classes=10, depth=2, width=64, dtype="bfloat16")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    images = jnp.ones((2, 16, 16, 3), jnp.float32)

    def loss(params):
        return nnx.merge(graphdef, params, rest)(images, train=False).sum()

    return jax.jit(jax.grad(loss)).lower(params).as_text()


def _plain_dot_general(lhs, rhs, dn, precision=None, preferred_element_type=None, out_sharding=None):
    return jax.lax.dot_general(lhs, rhs, dn, precision=precision, preferred_element_type=preferred_element_type)


# Linear layers per block (ViT: qkv, proj, fc1, fc2; Adventurer: in_proj, out_proj, w1, w2, w3) and the head.
LINEARS = {"vit_tiny": 4 * 2 + 1, "adventurer_tiny": 5 * 2 + 1}


@pytest.mark.parametrize("name", ["vit_tiny", "adventurer_tiny"])
def test_bf16_model_backward_matmuls_of_every_linear_layer_are_bf16(name, monkeypatch):
    """With the plain dot, each linear layer's two backward matmuls run float32 x float32; with
    mixed_dot_general they run bf16 x bf16. (The SSD's own state matmuls stay float32 by design.)"""
    mixed = _dot_operand_dtypes(_grad_hlo(name))
    monkeypatch.setattr(common, "mixed_dot_general", _plain_dot_general)   # the name `common.linear` calls
    plain = _dot_operand_dtypes(_grad_hlo(name))
    f32 = lambda pairs: sum(p == ("f32", "f32") for p in pairs)  # noqa: E731
    bf16 = lambda pairs: sum(p == ("bf16", "bf16") for p in pairs)  # noqa: E731
    assert len(mixed) == len(plain)
    assert f32(plain) - f32(mixed) == 2 * LINEARS[name], (plain, mixed)
    assert bf16(mixed) - bf16(plain) == 2 * LINEARS[name], (plain, mixed)


@pytest.mark.parametrize("length,multiple", [(37, 16), (32, 16), (5, 8)])
def test_padded_attention_equals_unpadded_float64_reference(length, multiple):
    rng = np.random.default_rng(length)
    q, k, v = (rng.normal(size=(2, length, 3, 8)) for _ in range(3))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = np.einsum("bhqk,bkhd->bqhd", p, v)
    out = padded_attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)), implementation="xla",
                           multiple=multiple)
    assert out.shape == (2, length, 3, 8)
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, rtol=1e-4, atol=1e-5)


def test_padded_attention_gradients_ignore_padding():
    """Gradients through the padded, masked attention equal those of plain attention on the true length."""
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 21, 2, 8)), jnp.float32) for _ in range(3))
    w = jnp.asarray(rng.normal(size=(1, 21, 2, 8)), jnp.float32)

    def f(attn):
        return jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v) * w), argnums=(0, 1, 2))(q, k, v)

    padded = f(lambda q, k, v: padded_attention(q, k, v, implementation="xla", multiple=16))
    plain = f(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"))
    for a, b in zip(padded, plain):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_dots_remat_policies_still_save_the_bf16_linear_matmuls():
    """mixed_dot_general hides its matmul in a custom_vjp; without its checkpoint name a `dots*` remat policy saved
    nothing more than `nothing_saveable` (measured: identical compiled memory). Saving the dots must cost memory,
    and saving all dots at least as much as those without batch dimensions."""
    from pixeltok import memory
    kw = dict(batch=2, dtype="bfloat16", depth=4)
    temp = {r: memory.measure_compiled("adventurer_tiny", 2, 32, remat=r, **kw)["temp_bytes"]
            for r in ("nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable")}
    assert temp["dots_with_no_batch_dims_saveable"] > 1.15 * temp["nothing_saveable"], temp
    assert temp["dots_saveable"] >= temp["dots_with_no_batch_dims_saveable"], temp
