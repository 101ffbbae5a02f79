"""Convolution lowerings: XLA's own, or patches x matrix product ('im2col').

XLA:CPU runs the backward pass of a convolution an order of magnitude below the
machine's matrix-product speed (measured here: 8 GFLOP/s for a 3x3 64->64 conv at
batch 128 against 107 GFLOP/s for a matrix product).  Writing the conv as one
matrix product over gathered patches lets the forward *and* both gradients run
as matrix products.  On GPU/TPU XLA's convolutions are the fast path, so 'auto'
picks im2col only on CPU.
"""
from __future__ import annotations

import functools
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
    channels and contracted with the kernel reshaped to (kh*kw*C, O); both
    gradients are matrix products too (``_patches_matmul_bwd``).  Anything else
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
    pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], window_strides)
    return _patches_matmul(lhs, rhs, tuple(window_strides), tuple(map(tuple, pads)),
                           precision, preferred_element_type)


def patches(x: jax.Array, kernel_hw: Sequence[int], strides: Sequence[int],
            pads: Sequence[tuple[int, int]]) -> jax.Array:
    """The kh*kw shifted (strided) views of padded NHWC ``x``, concatenated on channels.

    Channel order (i, j, c), the order of an HWIO kernel reshaped to (kh*kw*C, O).
    """
    (kh, kw), (sh, sw) = kernel_hw, strides
    x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    ho = (x.shape[1] - kh) // sh + 1
    wo = (x.shape[2] - kw) // sw + 1
    views = [lax.slice(x, (0, i, j, 0), (x.shape[0], i + sh * (ho - 1) + 1,
                                          j + sw * (wo - 1) + 1, x.shape[3]), (1, sh, sw, 1))
             for i in range(kh) for j in range(kw)]
    return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _patches_matmul(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                    pads: tuple[tuple[int, int], ...], precision: Any,
                    preferred_element_type: Any) -> jax.Array:
    return _patches_matmul_fwd(x, kernel, strides, pads, precision, preferred_element_type)[0]


def _patches_matmul_fwd(x, kernel, strides, pads, precision, preferred_element_type):
    kh, kw, c, o = kernel.shape
    p = patches(x, (kh, kw), strides, pads)
    y = lax.dot_general(p, kernel.reshape(kh * kw * c, o), (((3,), (0,)), ((), ())),
                        precision=precision, preferred_element_type=preferred_element_type)
    return y, (x, p, kernel)


def _patches_matmul_bwd(strides, pads, precision, preferred_element_type, res, g):
    del preferred_element_type
    x, p, kernel = res
    kh, kw, c, o = kernel.shape
    p2 = p.reshape(-1, kh * kw * c)
    g2 = g.reshape(-1, o).astype(p.dtype)
    # The kernel gradient as one (M, K)^T x (M, O) product of 2-D operands: left to
    # autodiff, XLA:CPU wrote the (M, O) output gradient out transposed first, a
    # cache-hostile copy that cost as much as the product.
    dkernel = lax.dot_general(p2, g2, (((0,), (0,)), ((), ())), precision=precision)
    dp = lax.dot_general(g2, kernel.reshape(kh * kw * c, o).astype(g2.dtype),
                         (((1,), (1,)), ((), ())), precision=precision)
    # Scatter-add of the patch gradients back onto the input (autodiff of the gather).
    _, patches_vjp = jax.vjp(lambda v: patches(v, (kh, kw), strides, pads), x)
    (dx,) = patches_vjp(dp.reshape(p.shape))
    return dx, dkernel.reshape(kernel.shape).astype(kernel.dtype)


_patches_matmul.defvjp(_patches_matmul_fwd, _patches_matmul_bwd)


def conv_fn(impl: str) -> ConvFn:
    """The ``conv_general_dilated`` for ``model.conv_impl`` ('auto' -> im2col on CPU)."""
    if impl not in IMPLS:
        raise ValueError(f'model.conv_impl={impl!r} is not one of {IMPLS}.')
    if impl == 'auto':
        impl = 'im2col' if jax.default_backend() == 'cpu' else 'xla'
    return im2col_conv if impl == 'im2col' else lax.conv_general_dilated
