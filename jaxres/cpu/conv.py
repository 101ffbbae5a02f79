"""Convolution lowerings: XLA's own, patches x matrix ('im2col'), Winograd, or
oneDNN's kernels through an FFI call ('onednn', ``jaxres/cpu/onednn``).

XLA:CPU runs the backward pass of a convolution far below the machine's
matrix-product speed.  Writing the conv as one matrix product over gathered
patches lets the forward *and* both gradients run as matrix products; for 3x3
stride-1 convs Winograd's F(2x2, 3x3) needs 2.25x fewer multiplications than
that product (``benchmarks/RESULTS.md`` has the measured speeds).  On GPU/TPU
XLA's convolutions are the fast path, so 'auto' picks Winograd (and im2col for
the other convs) only on CPU.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

ConvFn = Callable[..., jax.Array]
IMPLS = ('xla', 'im2col', 'winograd', 'onednn')


def _explicit_padding(padding: Any, in_hw: Sequence[int], kernel_hw: Sequence[int],
                      strides: Sequence[int]) -> list[tuple[int, int]]:
    if isinstance(padding, str):
        return list(lax.padtype_to_pads(in_hw, kernel_hw, strides, padding))
    return [tuple(p) for p in padding]


def _plain_nhwc(lhs: jax.Array, rhs: jax.Array, lhs_dilation: Sequence[int] | None,
                rhs_dilation: Sequence[int] | None, dimension_numbers: Any,
                feature_group_count: int, batch_group_count: int) -> bool:
    """A 2-D NHWC x HWIO convolution without dilation or groups (what the
    matrix-product lowerings handle)."""
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return (lhs.ndim == 4
            and dn == lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
            and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
            and feature_group_count == 1 and batch_group_count == 1)


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
    if not _plain_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                       feature_group_count, batch_group_count):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], window_strides)
    return _patches_matmul(lhs, rhs, tuple(window_strides), tuple(map(tuple, pads)),
                           precision, preferred_element_type)


def winograd_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                  padding: Any, lhs_dilation: Sequence[int] | None = None,
                  rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                  feature_group_count: int = 1, batch_group_count: int = 1,
                  precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """``im2col_conv``, with 3x3 stride-1 convolutions done by Winograd's F(2x2, 3x3).

    Winograd's minimal filtering (Lavin & Gray 2016) computes each 2x2 output tile
    from a 4x4 input tile with 16 multiplications instead of 36, so the matrix
    products of the forward pass and of both gradients (autodiff of the linear
    transforms around one batched product) do 2.25x fewer FLOPs, and the
    transformed tensors (4x the input) are smaller than im2col's patches (9x).
    """
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    if not (_plain_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                        feature_group_count, batch_group_count)
            and rhs.shape[:2] == (3, 3) and tuple(window_strides) == (1, 1)):
        return im2col_conv(*args)
    pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], window_strides)
    return winograd_3x3(lhs, rhs, pads, precision, preferred_element_type)


def _winograd_input_rows(d: list[jax.Array]) -> list[jax.Array]:
    """B^T of F(2x2, 3x3) applied to four input rows (or columns)."""
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _winograd_kernel_rows(k: list[jax.Array]) -> list[jax.Array]:
    """G of F(2x2, 3x3) applied to three kernel rows (or columns)."""
    return [k[0], (k[0] + k[1] + k[2]) * 0.5, (k[0] - k[1] + k[2]) * 0.5, k[2]]


def winograd_3x3(x: jax.Array, kernel: jax.Array, pads: Sequence[tuple[int, int]],
                 precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """Stride-1 3x3 correlation of NHWC ``x`` with HWIO ``kernel`` by F(2x2, 3x3).

    Odd output sizes are computed on one more row/column (zero-padded) and cropped.
    """
    n, h, w, c = x.shape
    o = kernel.shape[-1]
    (top, bottom), (left, right) = pads
    ho, wo = h + top + bottom - 2, w + left + right - 2
    th, tw = -(-ho // 2), -(-wo // 2)  # 2x2 output tiles per column / row
    x = jnp.pad(x, ((0, 0), (top, bottom + 2 * th - ho), (left, right + 2 * tw - wo), (0, 0)))
    # Input tiles (4x4, stride 2) transformed as B^T d B: rows, then columns.
    rows = _winograd_input_rows([x[:, i:i + 2 * th - 1:2] for i in range(4)])
    v = jnp.stack([col for r in rows for col in _winograd_input_rows(
        [r[:, :, j:j + 2 * tw - 1:2] for j in range(4)])]).reshape(16, n * th * tw, c)
    # Kernel transform G k G^T, element-wise (as an einsum XLA:CPU made it a slow
    # product with 3-long rows).
    u = jnp.stack([col for r in _winograd_kernel_rows([kernel[i] for i in range(3)])
                   for col in _winograd_kernel_rows([r[j] for j in range(3)])])
    u = u.reshape(16, c, o).astype(v.dtype)
    out_dtype = preferred_element_type or jnp.result_type(x, kernel)
    m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))), precision=precision,
                        preferred_element_type=_accumulation_dtype(v.dtype) or out_dtype)
    # Output tiles A^T m A as one product with the 4x16 matrix A^T (x) A^T: stacking
    # the four outputs element-wise made XLA:CPU pad and add each one separately.
    at = jnp.array([[1, 1, 1, 0], [0, 1, -1, -1]], m.dtype)
    y = jnp.einsum('kq,qto->kto', jnp.einsum('pa,qb->pqab', at, at).reshape(4, 16), m,
                   precision=precision)
    y = y.reshape(2, 2, n, th, tw, o).transpose(2, 3, 0, 4, 1, 5).reshape(n, 2 * th, 2 * tw, o)
    return y[:, :ho, :wo].astype(out_dtype)


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


def _accumulation_dtype(dtype: Any) -> Any:
    """float32 for 16-bit operands: XLA:CPU's fast bfloat16 matrix product is the
    one with a float32 result; asked for a bfloat16 result, it converts both
    operands to float32 first (``benchmarks/RESULTS.md`` has the speeds)."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else None


def _patches_matmul_fwd(x, kernel, strides, pads, precision, preferred_element_type):
    kh, kw, c, o = kernel.shape
    p = patches(x, (kh, kw), strides, pads)
    out_dtype = preferred_element_type or jnp.result_type(p, kernel)
    y = lax.dot_general(p, kernel.reshape(kh * kw * c, o).astype(p.dtype),
                        (((3,), (0,)), ((), ())), precision=precision,
                        preferred_element_type=_accumulation_dtype(p.dtype) or out_dtype)
    return y.astype(out_dtype), (x, p, kernel)


def _patches_matmul_bwd(strides, pads, precision, preferred_element_type, res, g):
    del preferred_element_type
    x, p, kernel = res
    kh, kw, c, o = kernel.shape
    p2 = p.reshape(-1, kh * kw * c)
    g2 = g.reshape(-1, o).astype(p.dtype)
    # The kernel gradient as one (M, K)^T x (M, O) product of 2-D operands: left to
    # autodiff, XLA:CPU wrote the (M, O) output gradient out transposed first, a
    # cache-hostile copy that cost as much as the product.
    acc = _accumulation_dtype(p.dtype)
    dkernel = lax.dot_general(p2, g2, (((0,), (0,)), ((), ())), precision=precision,
                              preferred_element_type=acc)
    dp = lax.dot_general(g2, kernel.reshape(kh * kw * c, o).astype(g2.dtype),
                         (((1,), (1,)), ((), ())), precision=precision,
                         preferred_element_type=acc)
    # Scatter-add of the patch gradients back onto the input (autodiff of the gather),
    # in the accumulation dtype: XLA:CPU's 16-bit adds are slower than float32 ones.
    _, patches_vjp = jax.vjp(lambda v: patches(v, (kh, kw), strides, pads),
                             x.astype(dp.dtype))
    (dx,) = patches_vjp(dp.reshape(p.shape))
    return dx.astype(x.dtype), dkernel.reshape(kernel.shape).astype(kernel.dtype)


_patches_matmul.defvjp(_patches_matmul_fwd, _patches_matmul_bwd)


def conv_fn(impl: str) -> ConvFn:
    """The ``conv_general_dilated`` for a lowering ('xla', 'im2col', 'winograd',
    'onednn'; ``backend.choose`` picks one per backend)."""
    if impl not in IMPLS:
        raise ValueError(f'conv lowering {impl!r} is not one of {IMPLS}.')
    if impl == 'onednn':  # imported here: it builds on this module
        from jaxres.cpu.onednn import onednn_conv
        return onednn_conv
    return {'im2col': im2col_conv, 'winograd': winograd_conv}.get(impl, lax.conv_general_dilated)
