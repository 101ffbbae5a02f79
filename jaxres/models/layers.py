"""The parts every model family is built from: inits, convs, BatchNorm, the head.

Families (``resnet``, ``airbench``, ``wide_resnet``) never construct a conv or a
norm themselves: they call ``conv_factories`` and ``norm_factory`` once and pass
the resulting partials down to their stems and blocks, so the padding
convention, the initialiser, the lowering and the BatchNorm flavour are one
setting each for the whole network.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxres.cpu import norm
from jaxres.cpu.conv import conv_fn

ModuleDef = Any
Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'relu': nn.relu,
    'elu': nn.elu,
    'gelu': nn.gelu,
    'silu': nn.silu,
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


_PYTORCH_DEFAULT = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')

# Initialisers by the name the seeds use for them.
#   pytorch: PyTorch's default for Conv/Linear, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
#   kaiming_fan_out: torchvision's ResNet conv init, N(0, 2/fan_out).
#   he_normal: Keras' he_normal, truncated N(0, 2/fan_in).
#   dirac: pytorch, then an identity on the first channels (airbench).
KERNEL_INITS: dict[str, Callable[..., Any]] = {
    'pytorch': _PYTORCH_DEFAULT,
    'kaiming_fan_out': nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
    'he_normal': nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal'),
    'lecun_normal': nn.initializers.lecun_normal(),
    'dirac': dirac_init(_PYTORCH_DEFAULT),
}


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
    # The bf16 CPU path's bias gradient (``Conv``); nn.Conv everywhere else.
    sum_bias_grad_in_f32: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fan_in = x.shape[-1] * self.kernel_size[0] * self.kernel_size[1]
        bias_init = (pytorch_bias_init(fan_in) if self.bias_init_kind == 'pytorch'
                     else nn.initializers.zeros)
        conv_cls = Conv if self.sum_bias_grad_in_f32 else nn.Conv
        return conv_cls(self.features, self.kernel_size, self.strides, self.padding,
                        use_bias=True, kernel_init=self.kernel_init,
                        bias_init=bias_init, dtype=self.dtype,
                        conv_general_dilated=self.conv_general_dilated)(x)


class Conv(nn.Module):
    """``nn.Conv`` with a bias, for NHWC x HWIO (same name, variables and result),
    whose bias gradient is summed by ``norm.bias_add``.

    Transposing nn.Conv's bf16 ``y + bias`` gives a bf16 sum over the batch, which
    XLA:CPU runs as a float32 copy of the cotangent and a slow windowed reduction
    (39 ms against 0.5 ms for one 128x32x32x64 gradient; the bf16 CPU path only).
    """

    features: int
    kernel_size: tuple[int, int]
    strides: Any = (1, 1)
    padding: Any = 'SAME'
    use_bias: bool = True  # always: nn.Conv's keyword, so that both take one call
    kernel_init: Callable[..., Any] = KERNEL_INITS['pytorch']
    bias_init: Callable[..., Any] = nn.initializers.zeros
    dtype: Any = jnp.float32
    conv_general_dilated: Callable[..., Array] = jax.lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param('kernel', self.kernel_init,
                            (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
        bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        padding = ([(self.padding, self.padding)] * 2 if isinstance(self.padding, int)
                   else self.padding)
        y = self.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), strides,
                                      padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        return norm.bias_add(y, bias)


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


def conv_factories(kernel_init: str, padding: str, conv_impl: str, dtype: Any
                   ) -> tuple[ModuleDef, ModuleDef]:
    """(plain conv, biased conv) partials: ``kernel_init`` by name, ``padding``
    as ``with_padding``, lowered by ``conv_impl`` (``conv.conv_fn``)."""
    kinit = KERNEL_INITS[kernel_init]
    lowering = conv_fn(conv_impl)
    biased = with_padding(functools.partial(
        BiasConv, kernel_init=kinit, dtype=dtype, conv_general_dilated=lowering,
        bias_init_kind='zeros' if kernel_init == 'he_normal' else 'pytorch',
        sum_bias_grad_in_f32=conv_impl == 'onednn'), padding)
    plain = with_padding(functools.partial(
        nn.Conv, use_bias=False, kernel_init=kinit, dtype=dtype,
        conv_general_dilated=lowering), padding)
    return plain, biased


class BatchNorm(nn.Module):
    """BatchNorm that tracks the *unbiased* batch variance, as PyTorch does.

    Normalises with the biased batch variance (like nn.BatchNorm) but updates
    ``var`` with ``var * n / (n - 1)``, PyTorch's (and Keras' fused kernel's)
    rule.  Same variables as nn.BatchNorm, so checkpoints are interchangeable.
    ``unbiased=False`` tracks the biased variance, as nn.BatchNorm does.
    ``fused=True`` trains through ``cpu.norm.batch_norm_train`` (the bf16 CPU
    path's BatchNorm: no float32 copies of the activations).
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    scale_init: Callable[..., Any] = nn.initializers.ones
    use_scale: bool = True
    unbiased: bool = True
    fused: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
        scale = (self.param('scale', self.scale_init, (c,), jnp.float32) if self.use_scale
                 else jnp.ones((c,), jnp.float32))
        bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
        x32 = x.astype(jnp.float32)  # statistics in float32 whatever the compute dtype
        y = None
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        elif self.fused:
            y, mean, var = norm.batch_norm_train(x.astype(self.dtype), scale, bias,
                                                 self.epsilon)
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axes)
            var = jnp.mean(jnp.square(x32 - mean), axes)
        if not self.use_running_average and not self.is_initializing():
            n = x.size // c
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * mean
            ra_var.value = m * ra_var.value + (1 - m) * var * (
                n / max(n - 1, 1) if self.unbiased else 1)
        if y is None:
            y = (x32 - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
        return y.astype(self.dtype)


def norm_factory(train: bool, momentum: float, epsilon: float, running_var: str,
                 use_scale: bool, dtype: Any, fused: bool = False) -> ModuleDef:
    """The BatchNorm partial: ``running_var='unbiased'`` tracks the running variance
    as PyTorch/Keras do (``BatchNorm``), 'biased' as Flax's ``nn.BatchNorm``.
    ``fused``: ``BatchNorm(fused=True)`` for either (same variables)."""
    kwargs = dict(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                  use_scale=use_scale, dtype=dtype)
    if fused:
        return functools.partial(BatchNorm, unbiased=running_var == 'unbiased', fused=True,
                                 **kwargs)
    norm_cls = BatchNorm if running_var == 'unbiased' else nn.BatchNorm
    return functools.partial(norm_cls, **kwargs)


def zero_scale(enabled: bool) -> dict:
    """``norm`` kwargs that start a BN's scale at zero (a residual branch starts off)."""
    return {'scale_init': nn.initializers.zeros} if enabled else {}


def drop_path(branch: Array, rate: float, train: bool) -> Array:
    """Stochastic depth: the whole residual branch of an example dropped with
    probability ``rate`` in training, the kept ones scaled by 1 / (1 - rate), so
    evaluation uses the branch as it is (timm's ``DropPath``)."""
    if rate == 0.0:
        return branch
    # One draw per example: the mask broadcasts over height, width and channels.
    return nn.Dropout(rate, broadcast_dims=tuple(range(1, branch.ndim)),
                      deterministic=not train, name='drop_path')(branch)


def linear_head(x: Array, num_classes: int, dense_init: str, use_bias: bool = True,
                dtype: Any = jnp.float32) -> Array:
    """The classifier: ``Dense`` named 'head', PyTorch's bias init when
    ``dense_init='pytorch'``.  Families return its logits as float32 (the loss
    and softmax are taken in float32 whatever the compute dtype)."""
    bias_init = (pytorch_bias_init(x.shape[-1]) if dense_init == 'pytorch'
                 else nn.initializers.zeros)
    return nn.Dense(num_classes, use_bias=use_bias, kernel_init=KERNEL_INITS[dense_init],
                    bias_init=bias_init, dtype=dtype, name='head')(x)
