"""The ResNet family: ``stem -> stages of blocks -> pooled linear head``.

Stems and blocks register themselves by name (``STEMS``, ``BLOCKS``), so the
seed variants (kuangliu CIFAR ResNets, ResNet-B bottlenecks, 3x3-shortcut nets,
seed 003's pre-activation units, the torchvision ImageNet layout) are
configuration, not copies.  Bag-of-Tricks tweaks are one option each: ResNet-B
is ``bottleneck_stride_on='3x3'`` (the original v1 block is ``'1x1'``), ResNet-C
the three-conv ``stem='deep'``, ResNet-D the ``shortcut='avgpool_conv1x1'``
projection.  Adding a block: a Module taking ``features, strides, conv, norm,
act`` plus any of the settings ``ResNet`` hands every block (it receives the
ones it declares), decorated with ``@register(BLOCKS, 'name')``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxres.models import layers
from jaxres.models.registry import FAMILIES, register

ModuleDef = Any
Array = jax.Array

STEMS: dict[str, Callable[..., Array]] = {}
BLOCKS: dict[str, type[nn.Module]] = {}

# Named depths of the kuangliu / torchvision family: (block, blocks per stage).
DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}


class Parts(NamedTuple):
    """What a stem builds with: the network's conv, biased conv, norm, activation."""

    conv: ModuleDef
    biased_conv: ModuleDef
    norm: ModuleDef
    act: Callable[[Array], Array]


# --------------------------------------------------------------------------- #
# Stems: functions (x, features, parts) -> x, run inside the 'stem' module
# --------------------------------------------------------------------------- #
@register(STEMS, 'cifar')
def cifar_stem(x: Array, features: int, p: Parts) -> Array:
    """conv3x3/1 + BN + act (kuangliu)."""
    return p.act(p.norm(name='bn')(p.conv(features, (3, 3), name='conv')(x)))


@register(STEMS, 'imagenet')
def imagenet_stem(x: Array, features: int, p: Parts) -> Array:
    """conv7x7/2 + BN + act + max-pool 3x3/2 (torchvision)."""
    x = p.conv(features, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name='conv')(x)
    x = p.act(p.norm(name='bn')(x))
    # -inf padding written out: the same reduce_window, and ONNX converters that drop
    # a pool's explicit padding (jax2onnx 0.17) still export it exactly.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2))


@register(STEMS, 'deep')
def deep_stem(x: Array, features: int, p: Parts) -> Array:
    """Three conv3x3 + BN + act, widths features/2, features/2, features (ResNet-C)."""
    for i, f in enumerate([features // 2, features // 2, features]):
        x = p.act(p.norm(name=f'bn{i}')(p.conv(f, (3, 3), name=f'conv{i}')(x)))
    return x


@register(STEMS, 'conv7x7_bias')
def biased_conv7x7_stem(x: Array, features: int, p: Parts) -> Array:
    """A single biased conv7x7/1, no BN, no activation (seed 003)."""
    return p.biased_conv(features, (7, 7), name='conv')(x)


@register(STEMS, 'conv3x3')
def conv3x3_stem(x: Array, features: int, p: Parts) -> Array:
    """A single conv3x3/1, no BN, no activation (Wide ResNets: the first unit's
    pre-activation normalises it)."""
    return p.conv(features, (3, 3), name='conv')(x)


class Stem(nn.Module):
    """``STEMS[kind]``, then Dropout2d at ``dropout_rate`` (whole channels)."""

    kind: str
    features: int
    parts: Parts
    dropout_rate: float = 0.0
    train: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = STEMS[self.kind](x, self.features, self.parts)
        return nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2),
                          deterministic=not self.train)(x)


# --------------------------------------------------------------------------- #
# Shortcuts and blocks
# --------------------------------------------------------------------------- #
class Shortcut(nn.Module):
    """Projection shortcut used where the block changes shape.

    kind: 'conv1x1' (ResNet v1/B, kuangliu, torchvision), 'conv3x3' (seed 004),
    'avgpool_conv1x1' (Bag-of-Tricks ResNet-D: avg-pool the stride, then 1x1).
    """

    features: int
    strides: int
    kind: str
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = (self.strides, self.strides)
        if self.kind == 'avgpool_conv1x1':
            if self.strides > 1:
                # As AvgPool2d(ceil_mode=True, count_include_pad=False) on odd sizes.
                x = nn.avg_pool(x, s, s, padding='SAME', count_include_pad=False)
            x = self.conv(self.features, (1, 1), name='conv')(x)
        else:
            size = {'conv1x1': 1, 'conv3x3': 3}[self.kind]
            x = self.conv(self.features, (size, size), s, name='conv')(x)
        return self.norm(name='bn')(x)


SHORTCUTS = ('conv1x1', 'conv3x3', 'avgpool_conv1x1')


class Block(nn.Module):
    """What every block takes: its width, its stride (on its first conv) and the
    network's conv, norm and activation.  Subclasses add their own settings."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[Array], Array]


@register(BLOCKS, 'basic')
class BasicBlock(Block):
    """Two 3x3 convs; stride on the first; projection shortcut on shape change."""

    shortcut: str = 'conv1x1'
    post_activation: bool = True
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0
    train: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        residual = x
        y = self.conv(self.features, (3, 3), (self.strides, self.strides), name='conv1')(x)
        y = self.act(self.norm(name='bn1')(y))
        y = self.conv(self.features, (3, 3), name='conv2')(y)
        y = self.norm(name='bn2', **layers.zero_scale(self.zero_init_residual))(y)
        if residual.shape != y.shape:
            residual = Shortcut(self.features, self.strides, self.shortcut, self.conv,
                                self.norm, name='shortcut')(residual)
        y = residual + layers.drop_path(y, self.drop_path_rate, self.train)
        return self.act(y) if self.post_activation else y


@register(BLOCKS, 'bottleneck')
class Bottleneck(Block):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4).

    stride_on='3x3' is ResNet-B (seed 000, torchvision v1.5); '1x1' is the
    original v1 block (stride on the first 1x1 conv, seed 000's baseline).
    """

    shortcut: str = 'conv1x1'
    post_activation: bool = True
    zero_init_residual: bool = False
    stride_on: str = '3x3'
    drop_path_rate: float = 0.0
    train: bool = False

    expansion = 4

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = (self.strides, self.strides)
        s1, s3 = ((1, 1), s) if self.stride_on == '3x3' else (s, (1, 1))
        residual = x
        y = self.act(self.norm(name='bn1')(self.conv(self.features, (1, 1), s1, name='conv1')(x)))
        y = self.act(self.norm(name='bn2')(self.conv(self.features, (3, 3), s3, name='conv2')(y)))
        y = self.conv(self.features * self.expansion, (1, 1), name='conv3')(y)
        y = self.norm(name='bn3', **layers.zero_scale(self.zero_init_residual))(y)
        if residual.shape != y.shape:
            residual = Shortcut(self.features * self.expansion, self.strides, self.shortcut,
                                self.conv, self.norm, name='shortcut')(residual)
        y = residual + layers.drop_path(y, self.drop_path_rate, self.train)
        return self.act(y) if self.post_activation else y


@register(BLOCKS, 'preact')
class PreActUnit(Block):
    """Seed 003's pre-activation unit: two single-conv halves.

    First half: x + conv3x3(act(BN(x))); in the first unit of a widening stage it
    is instead conv1x1(x) (widen, stride 1) then conv3x3/stride(act(BN(x))) with
    no skip.  Second half: x + Dropout(conv3x3(act(BN(x)))).
    """

    dropout_rate: float = 0.0
    train: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.shape[-1] != self.features or self.strides != 1:
            x = self.conv(self.features, (1, 1), name='widen')(x)
            x = self.conv(self.features, (3, 3), (self.strides, self.strides),
                          name='conv1')(self.act(self.norm(name='bn1')(x)))
        else:
            x = x + self.conv(self.features, (3, 3), name='conv1')(self.act(self.norm(name='bn1')(x)))
        y = self.conv(self.features, (3, 3), name='conv2')(self.act(self.norm(name='bn2')(x)))
        y = nn.Dropout(self.dropout_rate, deterministic=not self.train)(y)
        return x + y


def declared(cls: type, settings: dict[str, Any]) -> dict[str, Any]:
    """The ``settings`` that ``cls`` (a dataclass, e.g. a Flax module) declares."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in settings.items() if k in fields}


# --------------------------------------------------------------------------- #
# The network
# --------------------------------------------------------------------------- #
@register(FAMILIES, 'resnet')
class ResNet(nn.Module):
    """Generic ResNet: stem, stages of blocks, pooled linear head.

    Config keys (``config.model``, with ``family='resnet'``) are these fields:
      depth: 18/34/50/101/152 names the block and stage sizes when
        ``stage_sizes`` is empty; block: a ``BLOCKS`` name, used with stage_sizes.
      stage_widths: default stem_width * 2**i; stage_strides: default (1, 2, 2, ...).
      stem: a ``STEMS`` name; stem_dropout: Dropout2d after the stem.
      shortcut: 'conv1x1' | 'conv3x3' | 'avgpool_conv1x1'.
      bottleneck_stride_on: '3x3' (ResNet-B) | '1x1' (v1).
      block_dropout: dropout inside preact units.
      stochastic_depth: drop rate of the last block's residual branch; block i of
        N drops with rate * (i + 1) / N (Huang et al. 2016); basic/bottleneck.
      head_pool: 'avg' | 'max'; head_norm: BN (no activation) before pooling.
      conv_bias: every conv biased; kernel_init / dense_init: ``KERNEL_INITS`` names.
      bn_momentum: Flax convention (PyTorch momentum=0.1 is 0.9).
      bn_running_var: 'biased' (Flax) | 'unbiased' (PyTorch, Keras fused).
      conv_padding: 'symmetric' (k//2 each side, PyTorch) | 'same' (TF/Keras).
      bn_scale: False = BN learns only a bias.
    ``num_classes``, ``dtype`` and the lowering ``conv_impl`` come from the run, not
    the config (``create_model``).
    """

    # The registries and fixed sets each key chooses from (config_validation).
    choices: ClassVar[dict[str, Any]] = {
        'block': BLOCKS, 'stem': STEMS, 'shortcut': SHORTCUTS,
        'bottleneck_stride_on': ('3x3', '1x1'), 'activation': layers.ACTIVATIONS,
        'head_pool': ('avg', 'max'), 'kernel_init': layers.KERNEL_INITS,
        'dense_init': layers.KERNEL_INITS, 'bn_running_var': ('biased', 'unbiased'),
        'conv_padding': ('symmetric', 'same')}

    num_classes: int = 10
    depth: int = 18
    block: str = 'basic'
    stage_sizes: Sequence[int] = ()
    stage_widths: Sequence[int] = ()
    stage_strides: Sequence[int] = ()
    stem: str = 'cifar'
    stem_width: int = 64
    stem_dropout: float = 0.0
    shortcut: str = 'conv1x1'
    post_activation: bool = True
    bottleneck_stride_on: str = '3x3'
    block_dropout: float = 0.0
    stochastic_depth: float = 0.0
    activation: str = 'relu'
    head_pool: str = 'avg'
    head_norm: bool = False
    conv_bias: bool = False
    kernel_init: str = 'kaiming_fan_out'
    dense_init: str = 'pytorch'
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_running_var: str = 'biased'
    conv_padding: str = 'symmetric'
    zero_init_residual: bool = False
    bn_scale: bool = True
    head_bias: bool = True
    # How convs are lowered (not part of the model's definition: same parameters
    # either way); ``backend.choose`` picks it per backend.
    conv_impl: str = 'xla'
    dtype: Any = jnp.float32

    def layout(self) -> tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(block, stage sizes, widths, strides) with the defaults filled in."""
        block, sizes = self.block, tuple(self.stage_sizes)
        if not sizes:
            block, sizes = DEPTHS[self.depth]
        n = len(sizes)
        widths = tuple(self.stage_widths) or tuple(self.stem_width * 2 ** i for i in range(n))
        strides = tuple(self.stage_strides) or (1,) + (2,) * (n - 1)
        return block, sizes, widths, strides

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        act = layers.ACTIVATIONS[self.activation]
        conv, biased_conv = layers.conv_factories(self.kernel_init, self.conv_padding,
                                                  self.conv_impl, self.dtype)
        if self.conv_bias:
            conv = biased_conv
        norm = layers.norm_factory(train, self.bn_momentum, self.bn_epsilon,
                                   self.bn_running_var, self.bn_scale, self.dtype,
                                   fused=self.conv_impl == 'onednn')

        x = x.astype(self.dtype)
        x = Stem(self.stem, self.stem_width, Parts(conv, biased_conv, norm, act),
                 self.stem_dropout, train, name='stem')(x)
        block, sizes, widths, strides = self.layout()
        block_cls, total, done = BLOCKS[block], sum(sizes), 0
        for i, (n, width, stride) in enumerate(zip(sizes, widths, strides)):
            for j in range(n):
                done += 1
                settings = dict(shortcut=self.shortcut, post_activation=self.post_activation,
                                zero_init_residual=self.zero_init_residual,
                                stride_on=self.bottleneck_stride_on,
                                dropout_rate=self.block_dropout, train=train,
                                drop_path_rate=self.stochastic_depth * done / total)
                x = block_cls(width, stride if j == 0 else 1, conv, norm, act,
                              **declared(block_cls, settings),
                              name=f'stage{i + 1}_block{j + 1}')(x)
        if self.head_norm:  # seed 003: BN (no activation) before pooling
            x = norm(name='head_bn')(x)
        x = jnp.max(x, axis=(1, 2)) if self.head_pool == 'max' else jnp.mean(x, axis=(1, 2))
        x = layers.linear_head(x, self.num_classes, self.dense_init, self.head_bias, self.dtype)
        return x.astype(jnp.float32)
