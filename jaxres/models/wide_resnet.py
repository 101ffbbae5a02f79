"""Wide ResNets (Zagoruyko & Komodakis 2016), WRN-depth-k.

``conv3x3(16) -> 3 stages of (depth - 4) / 6 pre-activation blocks of widths
16k, 32k, 64k (strides 1, 2, 2) -> BN -> ReLU -> global average pool -> linear``.
The block is BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3; where the shape changes,
the shortcut is a 1x1 conv (no BN) of the *activated* input, as in the authors'
code.  WRN-28-10 on CIFAR-10: 36,479,194 parameters.  The block registers as
``BLOCKS['wide']``, so a ``resnet`` family config can use it as well.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxres.models import layers
from jaxres.models.registry import FAMILIES, register
from jaxres.models.resnet import BLOCKS, Block, Parts, Stem

Array = jax.Array


@register(BLOCKS, 'wide')
class WideBlock(Block):
    """Pre-activation basic block with dropout between its convs."""

    dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    train: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = (self.strides, self.strides)
        y = self.act(self.norm(name='bn1')(x))
        # A projection reads the activated input; an identity the raw one.
        project = x.shape[-1] != self.features or self.strides != 1
        residual = self.conv(self.features, (1, 1), s, name='shortcut')(y) if project else x
        y = self.conv(self.features, (3, 3), s, name='conv1')(y)
        y = self.act(self.norm(name='bn2')(y))
        y = nn.Dropout(self.dropout_rate, deterministic=not self.train)(y)
        y = self.conv(self.features, (3, 3), name='conv2')(y)
        return residual + layers.drop_path(y, self.drop_path_rate, self.train)


@register(FAMILIES, 'wide_resnet')
class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``.

    Config keys (``config.model``, with ``family='wide_resnet'``):
      depth: 6n + 4 (28: four blocks per stage); widen_factor: k.
      dropout_rate: between each block's convs (the paper: 0.3 on CIFAR).
      stochastic_depth: drop rate of the last block's residual branch, linear in
        the block index (as the ResNet family).
      activation: ``layers.ACTIVATIONS`` name (the paper: relu).
      bn_momentum (Flax convention), bn_epsilon, kernel_init, dense_init.
    """

    choices: ClassVar[dict[str, Any]] = {
        'activation': layers.ACTIVATIONS, 'kernel_init': layers.KERNEL_INITS,
        'dense_init': layers.KERNEL_INITS}

    num_classes: int = 10
    depth: int = 28
    widen_factor: int = 10
    dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    activation: str = 'relu'
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    kernel_init: str = 'kaiming_fan_out'
    dense_init: str = 'pytorch'
    conv_impl: str = 'xla'
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        if (self.depth - 4) % 6:
            raise ValueError(f'a Wide ResNet has depth 6n + 4 (e.g. 16, 22, 28, 40); got '
                             f'{self.depth}.')
        n = (self.depth - 4) // 6
        act = layers.ACTIVATIONS[self.activation]
        conv, biased_conv = layers.conv_factories(self.kernel_init, 'symmetric',
                                                  self.conv_impl, self.dtype)
        norm = layers.norm_factory(train, self.bn_momentum, self.bn_epsilon, 'biased', True,
                                   self.dtype, fused=self.conv_impl == 'onednn')
        x = Stem('conv3x3', 16, Parts(conv, biased_conv, norm, act), name='stem')(
            x.astype(self.dtype))
        for i, stride in enumerate((1, 2, 2)):
            for j in range(n):
                done = i * n + j + 1
                x = WideBlock(16 * 2 ** i * self.widen_factor, stride if j == 0 else 1, conv,
                              norm, act, self.dropout_rate,
                              self.stochastic_depth * done / (3 * n), train,
                              name=f'stage{i + 1}_block{j + 1}')(x)
        x = act(norm(name='head_bn')(x))
        x = layers.linear_head(jnp.mean(x, axis=(1, 2)), self.num_classes, self.dense_init,
                               dtype=self.dtype)
        return x.astype(jnp.float32)
