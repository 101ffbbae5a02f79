"""'onednn': convolutions (and BatchNorm) by oneDNN's kernels, called from XLA through ``jax.ffi``.

XLA:CPU runs every bfloat16 convolution as a float32 Eigen one, and its 16-bit
data movement is slow (``shared/specs/CPU_BF16.md``).  oneDNN has real bf16
kernels for the forward pass and both gradients (AVX512-BF16/AMX), so this
lowering hands each NHWC x HWIO conv to them: forward, backward-data and
backward-weights as three FFI custom calls under a ``jax.custom_vjp``, bf16
accumulating in f32 (float32 works too, for testing).  ``batch_norm_train``
does the same for a training-mode BatchNorm (``jaxres/cpu/norm.py`` says why).
The C++ side is ``kernels.cc``, compiled on first use by ``build.py``.

Where oneDNN cannot be used (no compiler, no oneDNN, no bf16 instructions) the
lowering is im2col, and the reason is logged once.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import subprocess
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxres.cpu import conv as _conv

TARGETS = ('jaxres_onednn_conv_fwd', 'jaxres_onednn_conv_bwd_data',
           'jaxres_onednn_conv_bwd_weights', 'jaxres_onednn_bn_fwd', 'jaxres_onednn_bn_bwd')
DTYPES = (jnp.bfloat16, jnp.float32)
THREADS_ENV = 'JAXRES_ONEDNN_THREADS'
_lib: list[ctypes.CDLL] = []


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        with open('/proc/cpuinfo') as f:
            return any('avx512_bf16' in line or 'amx_bf16' in line
                       for line in f if line.startswith('flags'))
    except OSError:
        return False


@functools.cache
def _load() -> str | None:
    """Builds, loads and registers the FFI targets; None on success, else why not."""
    if not cpu_has_bf16():
        return 'this CPU has no bfloat16 instructions (avx512_bf16 / amx_bf16)'
    from jaxres.cpu.onednn import build
    try:
        lib = ctypes.cdll.LoadLibrary(str(build.library_path()))
    except (build.BuildError, OSError, subprocess.SubprocessError) as e:
        return str(e).splitlines()[0]
    try:
        lib.jaxres_onednn_init.restype = ctypes.c_char_p
        error = lib.jaxres_onednn_init()
        if error:
            return error.decode()
        capsules = [jax.ffi.pycapsule(getattr(lib, name)) for name in TARGETS]
    except AttributeError as e:  # a stale or foreign library without our symbols
        return str(e)
    for name, capsule in zip(TARGETS, capsules):
        jax.ffi.register_ffi_target(name, capsule, platform='cpu')
    _lib.append(lib)
    set_threads(int(os.environ.get(THREADS_ENV) or len(os.sched_getaffinity(0))))
    return None


def set_threads(n: int) -> None:
    """OpenMP threads per conv (``$JAXRES_ONEDNN_THREADS``; default: the cores
    this process may use, as XLA's own pool).

    With n > 1 one conv at a time runs on n threads: a ResNet's convs mostly
    wait on each other, so on a quiet machine this is the fast setting (2-core
    Xeon with AMX, ResNet-18 bf16 step: 0.75 s at 2 threads, 1.09 s at 1;
    ``benchmarks/RESULTS.md``).  With 1, XLA's pool runs independent convs side
    by side (a layer's two gradients) and no OpenMP team waits at a barrier for
    a core that another process holds: the setting for a loaded machine.
    ``kernels.cc`` says how.
    """
    if _lib:
        _lib[0].jaxres_onednn_set_threads(ctypes.c_int(n))


def unavailable_reason() -> str | None:
    """Why the oneDNN lowering cannot run here (None when it can)."""
    return _load()


def available() -> bool:
    """Whether the oneDNN lowering runs here; logs the reason once when it does not."""
    reason = _load()
    if reason:
        _warn_once(reason)
    return reason is None


@functools.cache
def _warn_once(reason: str) -> None:
    logging.warning('conv lowering onednn unavailable, using im2col: %s', reason)


def onednn_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                padding: Any, lhs_dilation: Sequence[int] | None = None,
                rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                feature_group_count: int = 1, batch_group_count: int = 1,
                precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """``lax.conv_general_dilated`` for NHWC x HWIO, run by oneDNN.

    Operands are cast to their common type, bfloat16 or float32; ``precision`` is
    not needed (bf16 products accumulate in f32, f32 ones are exact f32).  Other
    convs (dilation, groups, layouts, dtypes, negative padding) and a machine
    without oneDNN get ``im2col_conv``, one conv at a time.
    """
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    dtype = jnp.result_type(lhs, rhs)
    if not (_conv._plain_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                              feature_group_count, batch_group_count)
            and dtype in DTYPES and lhs.size and rhs.size and available()):
        return _conv.im2col_conv(*args)
    pads = _conv._explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], window_strides)
    if any(p < 0 for pair in pads for p in pair):
        return _conv.im2col_conv(*args)
    y = _onednn_conv(lhs.astype(dtype), rhs.astype(dtype), tuple(window_strides),
                     tuple(map(tuple, pads)))
    return y.astype(preferred_element_type or dtype)


def _output_shape(x_shape: Sequence[int], w_shape: Sequence[int], strides: tuple[int, int],
                  pads: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    n, h, w, _ = x_shape
    kh, kw, _, o = w_shape
    (t, b), (l, r) = pads
    return n, (h + t + b - kh) // strides[0] + 1, (w + l + r - kw) // strides[1] + 1, o


def _call(target: str, shape: Sequence[int], dtype: Any, a: jax.Array, b: jax.Array,
          strides: tuple[int, int], pads: tuple[tuple[int, int], ...]) -> jax.Array:
    return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(tuple(shape), dtype))(
        a, b, strides=np.asarray(strides, np.int64),
        padding=np.asarray([p for pair in pads for p in pair], np.int64))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _onednn_conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                 pads: tuple[tuple[int, int], ...]) -> jax.Array:
    return _call(TARGETS[0], _output_shape(x.shape, kernel.shape, strides, pads), x.dtype,
                 x, kernel, strides, pads)


def _onednn_conv_fwd(x, kernel, strides, pads):
    return _onednn_conv(x, kernel, strides, pads), (x, kernel)


def _onednn_conv_bwd(strides, pads, res, g):
    x, kernel = res
    g = g.astype(x.dtype)
    dx = _call(TARGETS[1], x.shape, x.dtype, g, kernel, strides, pads)
    dkernel = _call(TARGETS[2], kernel.shape, jnp.float32, x, g, strides, pads)
    # oneDNN sums the kernel gradient over the batch in f32, so it is rounded
    # once; it goes back in the kernel's dtype because a custom_vjp's cotangent
    # must have its primal's type.  Under bf16 training that primal is flax's
    # bf16 copy of the f32 parameter, and the convert's transpose takes the
    # gradient on to f32.
    return dx, dkernel.astype(kernel.dtype)


_onednn_conv.defvjp(_onednn_conv_fwd, _onednn_conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(y, batch mean, biased batch variance) of an NHWC ``x`` (bf16 or f32) by
    oneDNN's batch normalization; f32 ``scale``, ``bias`` and statistics.  The
    statistics' own cotangents are not used (``norm.batch_norm_train`` stops them)."""
    return _batch_norm_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_fwd(x, scale, bias, epsilon):
    c = jax.ShapeDtypeStruct((x.shape[-1],), jnp.float32)
    y, mean, var = jax.ffi.ffi_call(TARGETS[3], (jax.ShapeDtypeStruct(x.shape, x.dtype), c, c))(
        x, scale, bias, epsilon=np.float32(epsilon))
    return (y, mean, var), (x, mean, var, scale)


def _batch_norm_bwd(epsilon, res, cotangents):
    x, mean, var, scale = res
    c = jax.ShapeDtypeStruct((x.shape[-1],), jnp.float32)
    dx, dscale, dbias = jax.ffi.ffi_call(
        TARGETS[4], (jax.ShapeDtypeStruct(x.shape, x.dtype), c, c))(
        x, cotangents[0].astype(x.dtype), mean, var, scale, epsilon=np.float32(epsilon))
    return dx, dscale, dbias


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)
