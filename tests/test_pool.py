"""cpu/pool.py: the tile max-pool equals Flax's, values and gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxres.cpu import pool


def test_max_pool_tiles_equals_flax_max_pool_values_and_gradient():
    # 31 x 31: the odd edge is dropped, as PyTorch's MaxPool2d(2) does.
    x = jax.random.normal(jax.random.key(0), (2, 31, 31, 3))
    w = jax.random.normal(jax.random.key(1), (2, 15, 15, 3))
    ours = lambda v: jnp.sum(pool.max_pool_tiles(v, 2) * w)
    flax_ = lambda v: jnp.sum(nn.max_pool(v, (2, 2), (2, 2)) * w)
    np.testing.assert_array_equal(pool.max_pool_tiles(x, 2), nn.max_pool(x, (2, 2), (2, 2)))
    g = jax.grad(ours)(x)
    np.testing.assert_allclose(g, jax.grad(flax_)(x), rtol=0, atol=0)
    assert float(jnp.abs(g[:, 30]).max()) == 0.0  # the dropped row gets no gradient
