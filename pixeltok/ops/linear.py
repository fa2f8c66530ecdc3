"""Matmuls for mixed precision: `mixed_dot_general`, the `dot_general` of every bf16 linear layer.

A bf16 x bf16 matmul accumulating into float32 (`preferred_element_type`) whose backward matmuls also run in bf16;
see docs/models.md (mixed precision) for why and what it costs. `MIXED_DOT_NAME` / `save_mixed_dots` let the
`dots*` remat policies keep these matmuls' outputs although the custom VJP hides them from the policies.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

Array = jax.Array

MIXED_DOT_NAME = "pixeltok_mixed_dot"


def mixed_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None, preferred_element_type=None,
                      out_sharding=None) -> Array:
    """`lax.dot_general` whose backward pass multiplies in the operands' dtype.

    Why: a bf16 x bf16 -> float32 dot (`preferred_element_type`) hands autodiff a float32 cotangent, and JAX's
    transpose rule then runs both backward matmuls in float32: two thirds of a training step's FLOPs at the f32
    rate (half the bf16 rate on a GPU's tensor cores, a quarter on an AVX512-BF16 CPU). Here the cotangent is
    rounded to the operands' dtype first, as PyTorch autocast does, and the weight gradient leaves the dot in bf16
    before the cast back to the float32 parameter; the forward output stays float32-accumulated.
    """
    mixed = (preferred_element_type is not None and out_sharding is None
             and jnp.dtype(lhs.dtype) == jnp.dtype(rhs.dtype) != jnp.dtype(preferred_element_type))
    if not mixed:
        kwargs = {} if out_sharding is None else {"out_sharding": out_sharding}
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type, **kwargs)
    dn = tuple(tuple(tuple(d) for d in pair) for pair in dimension_numbers)
    out = _mixed_dot(lhs, rhs, dn, precision, jnp.dtype(preferred_element_type))
    # Inside a custom_vjp the matmul is invisible to the `dots*` remat policies; the name lets `remat_policy`
    # save it like any other dot.
    return checkpoint_name(out, MIXED_DOT_NAME)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _mixed_dot(lhs: Array, rhs: Array, dn, precision, out_dtype) -> Array:
    return jax.lax.dot_general(lhs, rhs, dn, precision=precision, preferred_element_type=out_dtype)


def _mixed_dot_fwd(lhs, rhs, dn, precision, out_dtype):
    return jax.lax.dot_general(lhs, rhs, dn, precision=precision, preferred_element_type=out_dtype), (lhs, rhs)


def _mixed_dot_bwd(dn, precision, out_dtype, residuals, g):
    lhs, rhs = residuals
    g = g.astype(lhs.dtype)
    if dn == (((lhs.ndim - 1,), (0,)), ((), ())) and rhs.ndim == 2:
        # A dense layer (x @ W): both products take bf16 operands and accumulate into float32 outputs, rounded to
        # bf16 once. XLA:CPU keeps only this form of a bf16 matmul in bf16 (a bf16-output dot is run in float32).
        dx = jnp.einsum("...o,io->...i", g, rhs, precision=precision, preferred_element_type=out_dtype)
        dw = jnp.einsum("...i,...o->io", lhs, g, precision=precision, preferred_element_type=out_dtype)
        return dx.astype(lhs.dtype), dw.astype(rhs.dtype)
    _, vjp = jax.vjp(lambda a, b: jax.lax.dot_general(a, b, dn, precision=precision), lhs, rhs)
    return vjp(g)


_mixed_dot.defvjp(_mixed_dot_fwd, _mixed_dot_bwd)


def save_mixed_dots(policy):
    """`policy` extended to also save the outputs of `mixed_dot_general` (by their checkpoint name).

    Why: the matmul inside the custom VJP is invisible to `jax.checkpoint_policies.dots*`, which would then save
    nothing more than `nothing_saveable` for a bf16 model.
    """
    names = jax.checkpoint_policies.save_only_these_names(MIXED_DOT_NAME)
    return jax.checkpoint_policies.save_from_both_policies(policy, names)
