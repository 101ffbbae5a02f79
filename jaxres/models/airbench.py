"""The airbench family: Keller Jordan's CIFAR-10 speedrun network.

``whitening stem -> conv groups (conv, max-pool, BN, act, conv, BN, act) ->
global max-pool -> linear head x head_scale``: no skip connections (each conv
starts as an identity on its first channels, ``kernel_init='dirac'``), BN
without a learned scale, a head without bias.  The stem's kernel is not
learned from a random start: ``kernels_from_data`` computes it from
``whiten_samples`` training images spread evenly over the split (train.py picks
them, ``datasets.spread_sample``, and calls it at initialisation), and the
speedrun configs freeze it.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxres.cpu.conv import patches
from jaxres.cpu.pool import max_pool_tiles, tile_pool_fn
from jaxres.models import layers
from jaxres.models.registry import FAMILIES, register

ModuleDef = Any
Array = jax.Array


def whitening_kernel(images: Array, kernel_size: int, eps: float = 5e-4) -> Array:
    """The whitening stem's kernel from (N, H, W, C) normalised images (HWIO).

    The eigenvectors of the covariance of all k x k patches, each scaled by
    1/sqrt(eigenvalue + eps), largest first, followed by their negatives: the
    conv's outputs are decorrelated, unit-variance patch coordinates.
    """
    images = jnp.asarray(images, jnp.float32)
    c, k = images.shape[-1], kernel_size
    # (i, j, c) order: the order of an HWIO kernel's (k*k*C) rows.
    flat = patches(images, (k, k), (1, 1), ((0, 0), (0, 0))).reshape(-1, k * k * c)
    cov = flat.T @ flat / flat.shape[0]
    eigenvalues, eigenvectors = jnp.linalg.eigh(cov)  # ascending
    vectors = (eigenvectors / jnp.sqrt(eigenvalues + eps))[:, ::-1]  # (k*k*C, k*k*C)
    kernel = vectors.reshape(k, k, c, k * k * c)
    return jnp.concatenate([kernel, -kernel], axis=-1)


class WhiteningStem(nn.Module):
    """``kernel`` x ``kernel`` conv, no padding, 2 * C * k * k filters (each
    whitening direction and its negative) and a bias, then act."""

    kernel: int
    conv: ModuleDef
    act: Callable[[Array], Array]

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.kernel
        x = self.conv(2 * x.shape[-1] * k * k, (k, k), padding=[(0, 0), (0, 0)],
                      use_bias=True, name='conv')(x)
        return self.act(x)


class ConvPoolBlock(nn.Module):
    """airbench's conv group: conv3x3 -> max-pool -> BN -> act -> conv3x3 -> BN -> act.

    No skip connection: with ``kernel_init='dirac'`` each conv starts as an
    identity on its first channels instead.
    """

    features: int
    pool_size: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[Array], Array]
    pool: Callable[[Array, int], Array] = max_pool_tiles

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = self.conv(self.features, (3, 3), name='conv1')(x)
        if self.pool_size > 1:
            x = self.pool(x, self.pool_size)
        x = self.act(self.norm(name='bn1')(x))
        x = self.conv(self.features, (3, 3), name='conv2')(x)
        return self.act(self.norm(name='bn2')(x))


@register(FAMILIES, 'airbench')
class Airbench(nn.Module):
    """airbench94's network; the defaults are its settings.

    Config keys (``config.model``, with ``family='airbench'``):
      stage_widths: channels of each conv group (airbench93: (64, 128, 128)).
      pool_sizes: each group's max-pool size (the resolution's reduction).
      whiten_kernel / whiten_samples: the stem's patch size and how many training
        images its kernel is computed from.
      activation, kernel_init, dense_init: ``layers`` names.
      bn_momentum: Flax convention (the share of the old running statistics kept per
        batch). airbench's ``BatchNorm(momentum=0.6)`` is PyTorch's 0.4, Flax's 0.6; the
        0.4 default keeps less (measured without effect on the speedrun: RESULTS.md).
      head_scale: multiplies the logits (1/9: tempers them at its high lr).
    ``num_classes``, ``dtype`` and the lowerings (``conv_impl``, ``max_pool``) come
    from the run (``create_model``).
    """

    choices: ClassVar[dict[str, Any]] = {
        'activation': layers.ACTIVATIONS, 'kernel_init': layers.KERNEL_INITS,
        'dense_init': layers.KERNEL_INITS}

    num_classes: int = 10
    stage_widths: Sequence[int] = (64, 256, 256)
    pool_sizes: Sequence[int] = (2, 2, 2)
    whiten_kernel: int = 2
    whiten_samples: int = 5000
    activation: str = 'gelu'
    kernel_init: str = 'dirac'
    dense_init: str = 'pytorch'
    bn_momentum: float = 0.4
    bn_epsilon: float = 1e-12
    head_scale: float = 1 / 9
    conv_impl: str = 'xla'
    max_pool: str = 'xla'
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        act = layers.ACTIVATIONS[self.activation]
        conv, _ = layers.conv_factories(self.kernel_init, 'symmetric', self.conv_impl,
                                        self.dtype)
        norm = layers.norm_factory(train, self.bn_momentum, self.bn_epsilon, 'biased',
                                   use_scale=False, dtype=self.dtype,
                                   fused=self.conv_impl == 'onednn')
        pool = tile_pool_fn(self.max_pool)
        x = WhiteningStem(self.whiten_kernel, conv, act, name='stem')(x.astype(self.dtype))
        for i, (width, size) in enumerate(zip(self.stage_widths, self.pool_sizes)):
            x = ConvPoolBlock(width, size, conv, norm, act, pool,
                              name=f'stage{i + 1}_block1')(x)
        x = jnp.max(x, axis=(1, 2))
        x = layers.linear_head(x, self.num_classes, self.dense_init, use_bias=False,
                               dtype=self.dtype)
        return (x * self.head_scale).astype(jnp.float32)

    def kernels_from_data(self, images: Array) -> dict[str, Any]:
        """The parameters computed from normalised training images at initialisation:
        the stem's whitening kernel, as a params subtree to overwrite."""
        return {'stem': {'conv': {'kernel': whitening_kernel(images, self.whiten_kernel)}}}
