"""Convolution lowerings: XLA's own, or patches x matrix product ('im2col').

XLA:CPU runs the backward pass of a convolution an order of magnitude below the
machine's matrix-product speed (measured here: 8 GFLOP/s for a 3x3 64->64 conv at
batch 128 against 107 GFLOP/s for a matrix product).  Writing the conv as one
matrix product over gathered patches lets the forward *and* both gradients run
as matrix products.  On GPU/TPU XLA's convolutions are the fast path, so 'auto'
picks im2col only on CPU.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

ConvFn = Callable[..., jax.Array]
IMPLS = ('auto', 'xla', 'im2col')


def _explicit_padding(padding: Any, in_hw: Sequence[int], kernel_hw: Sequence[int],
                      strides: Sequence[int]) -> list[tuple[int, int]]:
    if isinstance(padding, str):
        return list(lax.padtype_to_pads(in_hw, kernel_hw, strides, padding))
    return [tuple(p) for p in padding]


def im2col_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                padding: Any, lhs_dilation: Sequence[int] | None = None,
                rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                feature_group_count: int = 1, batch_group_count: int = 1,
                precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """``lax.conv_general_dilated`` for NHWC x HWIO as one matrix product.

    The kh*kw shifted (strided) views of the padded input are concatenated along
    channels and contracted with the kernel reshaped to (kh*kw*C, O); autodiff of
    slice/concat/dot gives both gradients as matrix products too.  Anything else
    (dilation, groups, other layouts) falls back to ``lax.conv_general_dilated``.
    """
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    nhwc = dn == lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    dilated = any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ()))
    if (not nhwc or dilated or feature_group_count != 1 or batch_group_count != 1
            or lhs.ndim != 4):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    kh, kw, c, o = rhs.shape
    sh, sw = window_strides
    pads = _explicit_padding(padding, lhs.shape[1:3], (kh, kw), (sh, sw))
    x = jnp.pad(lhs, ((0, 0), pads[0], pads[1], (0, 0)))
    ho = (x.shape[1] - kh) // sh + 1
    wo = (x.shape[2] - kw) // sw + 1
    views = [lax.slice(x, (0, i, j, 0), (x.shape[0], i + sh * (ho - 1) + 1,
                                          j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
             for i in range(kh) for j in range(kw)]
    patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    return lax.dot_general(patches, rhs.reshape(kh * kw * c, o), (((3,), (0,)), ((), ())),
                           precision=precision, preferred_element_type=preferred_element_type)


def conv_fn(impl: str) -> ConvFn:
    """The ``conv_general_dilated`` for ``model.conv_impl`` ('auto' -> im2col on CPU)."""
    if impl not in IMPLS:
        raise ValueError(f'model.conv_impl={impl!r} is not one of {IMPLS}.')
    if impl == 'auto':
        impl = 'im2col' if jax.default_backend() == 'cpu' else 'xla'
    return im2col_conv if impl == 'im2col' else lax.conv_general_dilated
