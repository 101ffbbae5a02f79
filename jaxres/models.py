"""ResNet family in Flax Linen, assembled from small interchangeable parts.

Every model is ``stem -> stages of blocks -> head``.  Convolution, normalisation,
activation, the shortcut kind and the block kind are all passed in, so the seed
variants (kuangliu CIFAR ResNets, ResNet-B bottlenecks, 3x3-shortcut nets,
pre-activation units, torchvision ImageNet layout) are configuration, not copies.
Bag-of-Tricks tweaks are one option each: ResNet-B is ``bottleneck_stride_on='3x3'``
(the original v1 block is ``'1x1'``), ResNet-C the three-conv ``stem='deep'``,
ResNet-D the ``shortcut='avgpool_conv1x1'`` projection.

Usage (pure functions, explicit ``train`` flag)::

    model = create_model(config.model, num_classes=10)
    variables = model.init(rng, images, train=False)
    logits, updates = model.apply(variables, images, train=True,
                                  mutable=['batch_stats'], rngs={'dropout': key})
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxres.conv import conv_fn, patches

ModuleDef = Any
Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'relu': nn.relu,
    'elu': nn.elu,
    'gelu': nn.gelu,
    'silu': nn.silu,
}

# Initialisers by the name the seeds use for them.
#   pytorch: PyTorch's default for Conv/Linear, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
#   kaiming_fan_out: torchvision's ResNet conv init, N(0, 2/fan_out).
#   he_normal: Keras' he_normal, truncated N(0, 2/fan_in).
KERNEL_INITS: dict[str, Callable[..., Any]] = {
    'pytorch': nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
    'kaiming_fan_out': nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
    'he_normal': nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal'),
    'lecun_normal': nn.initializers.lecun_normal(),
}


def dirac_init(base: Callable[..., Any]) -> Callable[..., Any]:
    """``base`` init, then the first min(in, out) filters set to the identity.

    PyTorch's ``nn.init.dirac_`` on ``weight[:in_channels]`` (airbench): each conv
    starts as an implicit residual, passing its input channels straight through.
    """

    def init(key, shape, dtype=jnp.float32):
        w = base(key, shape, dtype)
        if len(shape) != 4:  # dense layers: nothing to pass through
            return w
        kh, kw, cin, cout = shape
        n = min(cin, cout)
        identity = jnp.zeros((kh, kw, cin, n), dtype).at[kh // 2, kw // 2].set(jnp.eye(cin, n))
        return w.at[..., :n].set(identity)

    return init


KERNEL_INITS['dirac'] = dirac_init(KERNEL_INITS['pytorch'])


def pytorch_bias_init(fan_in: int) -> Callable[..., Array]:
    """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / jnp.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class BiasConv(nn.Module):
    """Conv whose bias init depends on fan-in (PyTorch/Keras-style biased conv)."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Any = 'SAME'
    kernel_init: Callable[..., Any] = KERNEL_INITS['pytorch']
    bias_init_kind: str = 'pytorch'
    dtype: Any = jnp.float32
    conv_general_dilated: Callable[..., Array] | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fan_in = x.shape[-1] * self.kernel_size[0] * self.kernel_size[1]
        bias_init = (pytorch_bias_init(fan_in) if self.bias_init_kind == 'pytorch'
                     else nn.initializers.zeros)
        return nn.Conv(self.features, self.kernel_size, self.strides, self.padding,
                       use_bias=True, kernel_init=self.kernel_init,
                       bias_init=bias_init, dtype=self.dtype,
                       conv_general_dilated=self.conv_general_dilated)(x)


def with_padding(conv: ModuleDef, mode: str) -> ModuleDef:
    """``conv`` whose default padding follows ``mode``.

    'symmetric': k//2 on every side, PyTorch's ``padding=k//2`` (kuangliu,
    torchvision).  'same': TF/Keras 'SAME' (seed 003), which under stride 2 on an
    even input pads only the bottom/right, so the two disagree on every strided
    3x3 conv (the parameter counts do not change).
    """
    if mode == 'same':
        return conv

    def make(features, kernel_size, strides=(1, 1), padding=None, **kwargs):
        if padding is None:
            padding = [(k // 2, k // 2) for k in kernel_size]
        return conv(features, kernel_size, strides, padding, **kwargs)

    return make


class BatchNorm(nn.Module):
    """BatchNorm that tracks the *unbiased* batch variance, as PyTorch does.

    Normalises with the biased batch variance (like nn.BatchNorm) but updates
    ``var`` with ``var * n / (n - 1)``, PyTorch's (and Keras' fused kernel's)
    rule.  Same variables as nn.BatchNorm, so checkpoints are interchangeable.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    scale_init: Callable[..., Any] = nn.initializers.ones
    use_scale: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
        scale = (self.param('scale', self.scale_init, (c,), jnp.float32) if self.use_scale
                 else jnp.ones((c,), jnp.float32))
        bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
        x32 = x.astype(jnp.float32)  # statistics in float32 whatever the compute dtype
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axes)
            var = jnp.mean(jnp.square(x32 - mean), axes)
            if not self.is_initializing():
                n = x.size // c
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * var * (n / max(n - 1, 1))
        y = (x32 - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
        return y.astype(self.dtype)


# --------------------------------------------------------------------------- #
# Shortcuts
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
        if self.kind == 'conv1x1':
            x = self.conv(self.features, (1, 1), s, name='conv')(x)
        elif self.kind == 'conv3x3':
            x = self.conv(self.features, (3, 3), s, name='conv')(x)
        elif self.kind == 'avgpool_conv1x1':
            if self.strides > 1:
                # As AvgPool2d(ceil_mode=True, count_include_pad=False) on odd sizes.
                x = nn.avg_pool(x, s, s, padding='SAME', count_include_pad=False)
            x = self.conv(self.features, (1, 1), name='conv')(x)
        else:
            raise ValueError(f'unknown shortcut kind {self.kind!r}')
        return self.norm(name='bn')(x)


# --------------------------------------------------------------------------- #
# Blocks
# --------------------------------------------------------------------------- #
class BasicBlock(nn.Module):
    """Two 3x3 convs; stride on the first; projection shortcut on shape change."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[Array], Array]
    shortcut: str = 'conv1x1'
    post_activation: bool = True
    zero_init_residual: bool = False

    expansion = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        residual = x
        y = self.conv(self.features, (3, 3), (self.strides, self.strides), name='conv1')(x)
        y = self.act(self.norm(name='bn1')(y))
        y = self.conv(self.features, (3, 3), name='conv2')(y)
        y = self.norm(name='bn2', **_zero_scale(self.zero_init_residual))(y)
        if residual.shape != y.shape:
            residual = Shortcut(self.features, self.strides, self.shortcut, self.conv,
                                self.norm, name='shortcut')(residual)
        y = residual + y
        return self.act(y) if self.post_activation else y


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4).

    stride_on='3x3' is ResNet-B (seed 000, torchvision v1.5); '1x1' is the
    original v1 block (stride on the first 1x1 conv, seed 000's baseline).
    """

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[Array], Array]
    shortcut: str = 'conv1x1'
    post_activation: bool = True
    zero_init_residual: bool = False
    stride_on: str = '3x3'

    expansion = 4

    @nn.compact
    def __call__(self, x: Array) -> Array:
        s = (self.strides, self.strides)
        s1, s3 = ((1, 1), s) if self.stride_on == '3x3' else (s, (1, 1))
        residual = x
        y = self.act(self.norm(name='bn1')(self.conv(self.features, (1, 1), s1, name='conv1')(x)))
        y = self.act(self.norm(name='bn2')(self.conv(self.features, (3, 3), s3, name='conv2')(y)))
        y = self.conv(self.features * self.expansion, (1, 1), name='conv3')(y)
        y = self.norm(name='bn3', **_zero_scale(self.zero_init_residual))(y)
        if residual.shape != y.shape:
            residual = Shortcut(self.features * self.expansion, self.strides, self.shortcut,
                                self.conv, self.norm, name='shortcut')(residual)
        y = residual + y
        return self.act(y) if self.post_activation else y


class PreActUnit(nn.Module):
    """Seed 003's pre-activation unit: two single-conv halves.

    First half: x + conv3x3(act(BN(x))); in the first unit of a widening stage it
    is instead conv1x1(x) (widen, stride 1) then conv3x3/stride(act(BN(x))) with
    no skip.  Second half: x + Dropout(conv3x3(act(BN(x)))).
    """

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[Array], Array]
    dropout_rate: float = 0.0
    train: bool = False

    expansion = 1

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
    reductions and a scatter that took a quarter of the airbench step's time
    here.  A tie passes the gradient to every maximal element (PyTorch: the first).
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
        return lambda x, size: nn.max_pool(x, (size, size), (size, size))
    raise ValueError(f'max-pool lowering {impl!r} is not one of (\'xla\', \'tiles\').')


class ConvPoolBlock(nn.Module):
    """airbench's conv group: conv3x3 -> max-pool -> BN -> act -> conv3x3 -> BN -> act.

    No skip connection: with ``kernel_init='dirac'`` each conv starts as an
    identity on its first channels instead.  ``strides`` is the pool size, so the
    same stage settings describe where the resolution halves.
    """

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[Array], Array]
    pool: Callable[[Array, int], Array] = max_pool_tiles

    expansion = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = self.conv(self.features, (3, 3), name='conv1')(x)
        if self.strides > 1:
            x = self.pool(x, self.strides)
        x = self.act(self.norm(name='bn1')(x))
        x = self.conv(self.features, (3, 3), name='conv2')(x)
        return self.act(self.norm(name='bn2')(x))


def _zero_scale(enabled: bool) -> dict:
    return {'scale_init': nn.initializers.zeros} if enabled else {}


BLOCKS: dict[str, type[nn.Module]] = {
    'basic': BasicBlock,
    'bottleneck': Bottleneck,
    'preact': PreActUnit,
    'conv_pool': ConvPoolBlock,
}


# --------------------------------------------------------------------------- #
# Stems and heads
# --------------------------------------------------------------------------- #
class Stem(nn.Module):
    """Input stem.

    kind: 'cifar' conv3x3/1 + BN + act (kuangliu); 'imagenet' conv7x7/2 + BN +
    act + maxpool3x3/2 (torchvision); 'deep' three 3x3 convs (ResNet-C);
    'conv7x7_bias' a single biased 7x7/1 conv with no BN (seed 003); 'whiten'
    airbench's patch-whitening conv: ``whiten_kernel`` x ``whiten_kernel``, no
    padding, 2 * C * k * k filters (each whitening direction and its negative) and
    a bias, then act.  Its kernel is computed from data (``whitening_kernel``) and
    usually frozen (``optimizer.freeze``).
    """

    features: int
    kind: str
    conv: ModuleDef
    biased_conv: ModuleDef
    norm: ModuleDef
    act: Callable[[Array], Array]
    dropout_rate: float = 0.0
    train: bool = False
    whiten_kernel: int = 2

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.kind == 'whiten':
            k = self.whiten_kernel
            x = self.conv(2 * x.shape[-1] * k * k, (k, k), padding=[(0, 0), (0, 0)],
                          use_bias=True, name='conv')(x)
            x = self.act(x)
        elif self.kind == 'cifar':
            x = self.act(self.norm(name='bn')(self.conv(self.features, (3, 3), name='conv')(x)))
        elif self.kind == 'imagenet':
            x = self.conv(self.features, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name='conv')(x)
            x = self.act(self.norm(name='bn')(x))
            x = nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
        elif self.kind == 'deep':
            half = self.features // 2
            for i, (f, s) in enumerate([(half, 1), (half, 1), (self.features, 1)]):
                x = self.conv(f, (3, 3), (s, s), name=f'conv{i}')(x)
                x = self.act(self.norm(name=f'bn{i}')(x))
        elif self.kind == 'conv7x7_bias':
            x = self.biased_conv(self.features, (7, 7), name='conv')(x)
        else:
            raise ValueError(f'unknown stem kind {self.kind!r}')
        # Dropout2d: drop whole channels (mask broadcast over height and width).
        return nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2),
                          deterministic=not self.train)(x)


# --------------------------------------------------------------------------- #
# The network
# --------------------------------------------------------------------------- #
class ResNet(nn.Module):
    """Generic ResNet: stem, stages of blocks, pooled linear head."""

    num_classes: int
    stage_sizes: Sequence[int]
    stage_widths: Sequence[int]
    stage_strides: Sequence[int]
    block: str = 'basic'
    stem: str = 'cifar'
    stem_width: int = 64
    stem_dropout: float = 0.0
    shortcut: str = 'conv1x1'
    post_activation: bool = True
    bottleneck_stride_on: str = '3x3'
    block_dropout: float = 0.0
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
    # How convs and max-pools are lowered (not part of the model's definition:
    # same parameters either way); ``backend.choose`` picks them per backend.
    conv_impl: str = 'xla'
    max_pool: str = 'xla'
    zero_init_residual: bool = False
    bn_scale: bool = True
    head_bias: bool = True
    head_scale: float = 1.0
    whiten_kernel: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        act = ACTIVATIONS[self.activation]
        kinit = KERNEL_INITS[self.kernel_init]
        conv_general_dilated = conv_fn(self.conv_impl)
        biased_conv = with_padding(functools.partial(
            BiasConv, kernel_init=kinit, dtype=self.dtype,
            conv_general_dilated=conv_general_dilated,
            bias_init_kind='zeros' if self.kernel_init == 'he_normal' else 'pytorch'),
            self.conv_padding)
        if self.conv_bias:
            conv = biased_conv
        else:
            conv = with_padding(functools.partial(
                nn.Conv, use_bias=False, kernel_init=kinit, dtype=self.dtype,
                conv_general_dilated=conv_general_dilated), self.conv_padding)
        # 'unbiased': running variance as PyTorch/Keras track it; 'biased': Flax's.
        norm_cls = BatchNorm if self.bn_running_var == 'unbiased' else nn.BatchNorm
        norm = functools.partial(norm_cls, use_running_average=not train,
                                 momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                 use_scale=self.bn_scale, dtype=self.dtype)

        x = x.astype(self.dtype)
        x = Stem(self.stem_width, self.stem, conv, biased_conv, norm, act,
                 dropout_rate=self.stem_dropout, train=train,
                 whiten_kernel=self.whiten_kernel, name='stem')(x)
        block_cls = BLOCKS[self.block]
        for i, (n, width, stride) in enumerate(zip(self.stage_sizes, self.stage_widths,
                                                    self.stage_strides)):
            for j in range(n):
                kwargs = dict(features=width, strides=stride if j == 0 else 1, conv=conv,
                              norm=norm, act=act, name=f'stage{i + 1}_block{j + 1}')
                if self.block == 'preact':
                    kwargs.update(dropout_rate=self.block_dropout, train=train)
                elif self.block == 'conv_pool':
                    kwargs.update(pool=tile_pool_fn(self.max_pool))
                else:
                    kwargs.update(shortcut=self.shortcut, post_activation=self.post_activation,
                                  zero_init_residual=self.zero_init_residual)
                    if self.block == 'bottleneck':
                        kwargs.update(stride_on=self.bottleneck_stride_on)
                x = block_cls(**kwargs)(x)
        if self.head_norm:  # seed 003: BN (no activation) before pooling
            x = norm(name='head_bn')(x)
        x = jnp.max(x, axis=(1, 2)) if self.head_pool == 'max' else jnp.mean(x, axis=(1, 2))
        dense_init = KERNEL_INITS[self.dense_init]
        bias_init = (pytorch_bias_init(x.shape[-1]) if self.dense_init == 'pytorch'
                     else nn.initializers.zeros)
        x = nn.Dense(self.num_classes, use_bias=self.head_bias, kernel_init=dense_init,
                     bias_init=bias_init, dtype=self.dtype, name='head')(x)
        if self.head_scale != 1.0:  # airbench's 1/9: tempers the logits at its high lr
            x = x * self.head_scale
        # The loss and softmax are taken in float32 whatever the compute dtype.
        return x.astype(jnp.float32)


# Named depths of the kuangliu / torchvision family.
DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}


def create_model(model_config: ml_collections.ConfigDict, num_classes: int,
                 dtype: Any = jnp.float32, conv_impl: str = 'xla', max_pool: str = 'xla'
                 ) -> ResNet:
    """Builds the ResNet described by ``config.model``.

    ``model.depth`` (18/34/50/101/152) fills in block kind and stage sizes unless
    ``model.stage_sizes`` is given explicitly (e.g. [2, 1, 1, 1]).  ``conv_impl``
    and ``max_pool`` are the backend's lowerings (``backend.choose``).
    """
    cfg = model_config
    block, sizes = cfg.block, tuple(cfg.stage_sizes)
    if not sizes:
        block, sizes = DEPTHS[cfg.depth]
    n = len(sizes)
    widths = tuple(cfg.stage_widths) or tuple(cfg.stem_width * 2 ** i for i in range(n))
    strides = tuple(cfg.stage_strides) or (1,) + (2,) * (n - 1)
    return ResNet(
        num_classes=num_classes,
        stage_sizes=sizes,
        stage_widths=widths,
        stage_strides=strides,
        block=block,
        stem=cfg.stem,
        stem_width=cfg.stem_width,
        stem_dropout=cfg.stem_dropout,
        shortcut=cfg.shortcut,
        post_activation=cfg.post_activation,
        bottleneck_stride_on=cfg.bottleneck_stride_on,
        block_dropout=cfg.block_dropout,
        activation=cfg.activation,
        head_pool=cfg.head_pool,
        head_norm=cfg.head_norm,
        conv_bias=cfg.conv_bias,
        kernel_init=cfg.kernel_init,
        dense_init=cfg.dense_init,
        bn_momentum=cfg.bn_momentum,
        bn_epsilon=cfg.bn_epsilon,
        bn_running_var=cfg.bn_running_var,
        conv_padding=cfg.conv_padding,
        conv_impl=conv_impl,
        max_pool=max_pool,
        zero_init_residual=cfg.zero_init_residual,
        bn_scale=cfg.bn_scale,
        head_bias=cfg.head_bias,
        head_scale=cfg.head_scale,
        whiten_kernel=cfg.whiten_kernel,
        dtype=dtype,
    )


def whitening_kernel(images: Array, kernel_size: int, eps: float = 5e-4) -> Array:
    """The 'whiten' stem's kernel from (N, H, W, C) normalised images (HWIO).

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


def count_params(params: Any) -> int:
    """Number of trainable scalars in a params pytree (works on ShapeDtypeStructs)."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def compute_dtype(name: str) -> Any:
    """``config.dtype`` ('float32' | 'bfloat16') -> the activations' dtype."""
    return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[name]


def input_shape(image_shape: tuple[int, ...], image_size: int = 0) -> tuple[int, int, int]:
    """The model's input (H, W, C): ``image_size`` square when set, else the images'."""
    h, w, c = image_shape
    return (image_size, image_size, c) if image_size else (h, w, c)
