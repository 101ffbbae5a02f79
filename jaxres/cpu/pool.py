"""Non-overlapping max-pooling with its gradient as an elementwise mask (for XLA:CPU)."""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _tiles(x: Array, size: int) -> Array:
    n, h, w, c = x.shape
    hh, ww = h // size, w // size
    return x[:, :hh * size, :ww * size, :].reshape(n, hh, size, ww, size, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool_tiles(x: Array, size: int) -> Array:
    """Max over non-overlapping ``size`` x ``size`` tiles (PyTorch ``MaxPool2d(size)``).

    Equal to ``nn.max_pool(x, (size, size), (size, size))`` (odd edges dropped).
    Its gradient is written out as an elementwise mask: XLA:CPU expands
    ``reduce_window``'s gradient (select-and-scatter) into index-tracking
    reductions and a scatter, a large part of this net's step there
    (benchmarks/RESULTS.md).  A tie passes the gradient to every maximal element
    (PyTorch: the first).
    """
    return jnp.max(_tiles(x, size), axis=(2, 4))


def _max_pool_tiles_fwd(x: Array, size: int) -> tuple[Array, tuple[Array, Array]]:
    y = max_pool_tiles(x, size)
    return y, (x, y)


def _max_pool_tiles_bwd(size: int, res: tuple[Array, Array], g: Array) -> tuple[Array]:
    x, y = res
    n, h, w, c = x.shape
    hh, ww = y.shape[1:3]
    hit = _tiles(x, size) == y[:, :, None, :, None]
    dx = jnp.where(hit, g[:, :, None, :, None], 0).reshape(n, hh * size, ww * size, c)
    return (jnp.pad(dx, ((0, 0), (0, h - hh * size), (0, w - ww * size), (0, 0))),)


max_pool_tiles.defvjp(_max_pool_tiles_fwd, _max_pool_tiles_bwd)


def tile_pool_fn(impl: str) -> Callable[[Array, int], Array]:
    """Non-overlapping ``size`` x ``size`` max-pooling: 'tiles' (``max_pool_tiles``,
    for XLA:CPU) or 'xla' (``nn.max_pool``); ``backend.choose`` picks one."""
    if impl == 'tiles':
        return max_pool_tiles
    if impl == 'xla':
        # Keywords: converters (jax2onnx) patch nn.max_pool with a keyword-only signature.
        return lambda x, size: nn.max_pool(x, window_shape=(size, size), strides=(size, size))
    raise ValueError(f'max-pool lowering {impl!r} is not one of (\'xla\', \'tiles\').')
