"""Training-mode BatchNorm as one function with its own gradient, for bf16 on a CPU.

Written the plain way, a bf16 BatchNorm on XLA:CPU materialises float32 copies of
every activation: the converted input, ``x - mean`` kept for the backward pass,
and in the backward pass the float32 cotangent and its product with the scale.
Each is a full pass over memory, and with the convolutions on oneDNN's bf16
kernels those passes are most of what is left of a step.  As one function with
its own gradient, only the input and per-channel vectors are kept between the
passes, and on a CPU with the 'onednn' lowering the whole of it is oneDNN's
batch normalization (one kernel forward, one backward, reading bf16).
Statistics and sums are float32 whatever the activations' type, as in the
plain form.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def batch_norm_train(x: Array, scale: Array, bias: Array, epsilon: float
                     ) -> tuple[Array, Array, Array]:
    """(y, batch mean, biased batch variance) of ``x`` over all but its last axis.

    ``y = (x - mean) * scale / sqrt(var + epsilon) + bias`` in ``x``'s dtype; the
    statistics in float32 (variance as E[x^2] - E[x]^2, Flax's fast variance),
    returned for the running averages and not differentiated.  NHWC bf16 / f32
    runs on oneDNN's batch normalization where the 'onednn' lowering is
    available, else on ``batch_norm_xla``.
    """
    from jaxres.cpu import onednn  # pylint: disable=g-import-not-at-top
    if x.ndim == 4 and x.dtype in onednn.DTYPES and x.size and onednn.available():
        y, mean, var = onednn.batch_norm_train(x, scale, bias, epsilon)
    else:
        y, mean, var = batch_norm_xla(x, scale, bias, epsilon)
    return y, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_xla(x: Array, scale: Array, bias: Array, epsilon: float
                   ) -> tuple[Array, Array, Array]:
    """``batch_norm_train`` in XLA ops (any rank, any float dtype)."""
    return _forward(x, scale, bias, epsilon)[0]


def _statistics(x: Array) -> tuple[Array, Array]:
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axes)
    var = jnp.maximum(jnp.mean(jnp.square(x32), axes) - jnp.square(mean), 0.0)
    return mean, var


def _forward(x, scale, bias, epsilon):
    mean, var = _statistics(x)
    inv = jax.lax.rsqrt(var + epsilon)
    a = scale * inv
    y = (x.astype(jnp.float32) * a + (bias - mean * a)).astype(x.dtype)
    return (y, mean, var), (x, mean, inv, scale)


def _backward(epsilon, res, cotangents):
    del epsilon
    x, mean, inv, scale = res
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    g = cotangents[0].astype(jnp.float32)
    x32 = x.astype(jnp.float32)
    dbias = jnp.sum(g, axes)
    # sum(g * (x - mean)) from sum(g * x): no centred float32 copy of x is kept
    # for the two passes that use it.
    dscale = (jnp.sum(g * x32, axes) - mean * dbias) * inv
    a = scale * inv
    dx = a * (g - dbias / n) - (x32 - mean) * (a * inv * dscale / n)
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


batch_norm_xla.defvjp(_forward, _backward)


@jax.custom_vjp
def bias_add(y: Array, bias: Array) -> Array:
    """``y + bias`` in ``y``'s dtype (bias on the last axis, any float type) whose
    bias gradient is summed in float32 and returned in the bias's own type.

    JAX transposes the broadcast into a sum in ``y``'s dtype; for bf16, XLA:CPU
    runs that as a float32 copy of the cotangent and a windowed reduction, ~70x
    slower than ``jnp.sum(g, dtype=float32)``, which it fuses into one pass.
    """
    return y + bias.astype(y.dtype)


def _bias_add_fwd(y, bias):
    return bias_add(y, bias), bias  # kept for its dtype (one vector)


def _bias_add_bwd(bias, g):
    return g, jnp.sum(g, tuple(range(g.ndim - 1)), dtype=jnp.float32).astype(bias.dtype)


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)
