"""PyTorch ports of the seeds' models, and their weights to and from jaxres.

One copy for tests/test_seed_models.py (each seed model against jaxres's, layer
by layer) and ``jaxres.tools.twin`` (whole training runs side by side).  Needs the
torch extra.  The
modules follow each seed's own code: kuangliu's CIFAR ResNet (seeds 000-002),
Zhenye Na's net and torchvision's ResNet-18 layout (seed 004), and seed 003's
Keras pre-activation network rewritten in PyTorch with TF 'same' padding.
Their submodules carry the Flax module names, so ``port`` (PyTorch -> Flax) and
``load_flax`` (Flax -> PyTorch) map any of them with one generic rule:
OIHW conv kernels <-> HWIO, the Linear weight transposed, BN weight/bias <->
scale/bias and running_mean/var <-> batch_stats mean/var.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from jaxres import models

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {'relu': F.relu, 'elu': F.elu}


def keras_bn(channels: int) -> nn.BatchNorm2d:
    """Keras BatchNormalization(momentum=0.99, epsilon=1e-3): PyTorch's momentum=0.01."""
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)


# --------------------------------------------------------------------------- #
# Models
# --------------------------------------------------------------------------- #
class Pair(nn.Module):
    """conv + BN, registered as 'conv' and 'bn' (the Flax shortcut/stem layout)."""

    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):
        return self.bn(self.conv(x))


class KuangliuBasic(nn.Module):
    """kuangliu BasicBlock; seed 004's variant: 3x3 shortcut, no ReLU after the add."""

    def __init__(self, cin, planes, stride, shortcut_kernel=1, post_relu=True, act=F.relu):
        super().__init__()
        self.act = act
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.post_relu = post_relu
        self.shortcut = None
        if stride != 1 or cin != planes:
            k = shortcut_kernel
            self.shortcut = Pair(nn.Conv2d(cin, planes, k, stride, k // 2, bias=False),
                                 nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return self.act(out) if self.post_relu else out


class KuangliuBottleneck(nn.Module):
    """kuangliu Bottleneck (stride on the 3x3: ResNet-B); stride_on='1x1' is v1."""

    def __init__(self, cin, planes, stride, stride_on='3x3', act=F.relu):
        super().__init__()
        self.act = act
        s1, s3 = (1, stride) if stride_on == '3x3' else (stride, 1)
        self.conv1 = nn.Conv2d(cin, planes, 1, s1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, s3, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = None
        if stride != 1 or cin != 4 * planes:
            self.shortcut = Pair(nn.Conv2d(cin, 4 * planes, 1, stride, bias=False),
                                 nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + (self.shortcut(x) if self.shortcut is not None else x))


class CifarResNet(nn.Module):
    """kuangliu ResNet (seeds 000-002) and Zhenye Na's net (seed 004 part 1).

    ``stem='imagenet'`` gives torchvision's layout (conv7x7/2, maxpool3x3/2).
    """

    def __init__(self, block, sizes, widths, stem_width, num_classes, stem='cifar',
                 stem_dropout=0.0, head_pool='avg', act=F.relu, **block_kw):
        super().__init__()
        if stem == 'cifar':
            self.stem = Pair(nn.Conv2d(3, stem_width, 3, 1, 1, bias=False),
                             nn.BatchNorm2d(stem_width))
        else:
            self.stem = Pair(nn.Conv2d(3, stem_width, 7, 2, 3, bias=False),
                             nn.BatchNorm2d(stem_width))
        self.stem_kind = stem
        self.act = act
        self.stem_dropout = nn.Dropout2d(stem_dropout)
        cin = stem_width
        expansion = 4 if block is KuangliuBottleneck else 1
        for i, (n, w) in enumerate(zip(sizes, widths)):
            for j in range(n):
                stride = (1 if i == 0 else 2) if j == 0 else 1
                setattr(self, f'stage{i + 1}_block{j + 1}',
                        block(cin, w, stride, act=act, **block_kw))
                cin = w * expansion
        self.names = [f'stage{i + 1}_block{j + 1}' for i, n in enumerate(sizes) for j in range(n)]
        self.head_pool = head_pool
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = self.act(self.stem(x))
        if self.stem_kind == 'imagenet':
            out = F.max_pool2d(out, 3, 2, 1)
        out = self.stem_dropout(out)
        for name in self.names:
            out = getattr(self, name)(out)
        # kuangliu: avg_pool2d(out, 4) (seed 000: 8) on the last map = a global pool.
        k = out.shape[-1]
        out = F.max_pool2d(out, k) if self.head_pool == 'max' else F.avg_pool2d(out, k)
        return self.head(out.flatten(1))


class TFSameConv(nn.Conv2d):
    """Conv2d with TF/Keras padding='same' (under stride 2: the extra pad at the end)."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class KerasPreActUnit(nn.Module):
    """One iteration of seed 003's Keras loop (bias everywhere, Keras BN).

    The first unit of a widening group widens with a conv1x1 and takes the
    strided conv3x3 with no skip connection.
    """

    def __init__(self, cin, filters, stride, dropout, act=F.relu):
        super().__init__()
        self.first = cin != filters or stride != 1
        self.act = act
        if self.first:
            self.widen = TFSameConv(cin, filters, 1)
        self.bn1 = keras_bn(filters)
        self.conv1 = TFSameConv(filters, filters, 3, stride=stride)
        self.bn2 = keras_bn(filters)
        self.conv2 = TFSameConv(filters, filters, 3)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        if self.first:
            x = self.widen(x)
            x = self.conv1(self.act(self.bn1(x)))  # no skip connection
        else:
            x = x + self.conv1(self.act(self.bn1(x)))
        return x + self.dropout(self.conv2(self.act(self.bn2(x))))


class KerasPreActNet(nn.Module):
    """Seed 003: biased conv7x7 stem, pre-activation units in groups (the seed's
    12 units in 3 groups of 4 at 32/64/128), BN + global average pool + dense."""

    def __init__(self, num_classes, dropout, sizes=(4, 4, 4), widths=(32, 64, 128),
                 stem_width=32, act=F.relu):
        super().__init__()
        self.stem = nn.Module()
        self.stem.conv = TFSameConv(3, stem_width, 7)
        cin, self.names = stem_width, []
        for i, (n, w) in enumerate(zip(sizes, widths)):
            for j in range(n):
                name = f'stage{i + 1}_block{j + 1}'
                stride = 2 if i > 0 and j == 0 else 1
                setattr(self, name, KerasPreActUnit(cin, w, stride, dropout, act))
                self.names.append(name)
                cin = w
        self.head_bn = keras_bn(cin)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stem.conv(x)
        for name in self.names:
            x = getattr(self, name)(x)
        x = F.avg_pool2d(self.head_bn(x), x.shape[-1])  # the seed's 8x8 pool: global
        return self.head(x.flatten(1))


def from_config(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The seed port that builds the same network as jaxres's ``config.model``.

    Raises ValueError naming the settings no seed's code has (they have no port).
    """
    m = model_config
    block, sizes = m.block, tuple(m.stage_sizes)
    if not sizes:
        block, sizes = models.DEPTHS[m.depth]
    widths = tuple(m.stage_widths) or tuple(m.stem_width * 2 ** i for i in range(len(sizes)))
    unported = _unported(m, block, len(sizes))
    if unported:
        # Flax's biased running variance (e.g. cifar10_resnet18's) is one override away.
        hint = ('' if m.get('bn_running_var', 'unbiased') == 'unbiased' else
                "; PyTorch's BatchNorm tracks the unbiased variance: run the twin with "
                '--config.model.bn_running_var=unbiased (a factor n/(n-1) on the running '
                'variance, n = batch x height x width)')
        raise ValueError('no seed port for ' + ', '.join(unported) + " (the seeds' networks "
                         f'only{hint}).')
    act = ACTIVATIONS[m.activation]
    if block == 'preact':
        net = KerasPreActNet(num_classes, m.block_dropout, sizes, widths, m.stem_width, act)
    elif block == 'basic':
        net = CifarResNet(KuangliuBasic, sizes, widths, m.stem_width, num_classes, m.stem,
                          m.stem_dropout, m.head_pool, act,
                          shortcut_kernel=3 if m.shortcut == 'conv3x3' else 1,
                          post_relu=m.post_activation)
    else:
        net = CifarResNet(KuangliuBottleneck, sizes, widths, m.stem_width, num_classes, m.stem,
                          m.stem_dropout, m.head_pool, act, stride_on=m.bottleneck_stride_on)
    for bn in net.modules():  # jaxres's BN settings in PyTorch's convention
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum, bn.eps = 1.0 - m.bn_momentum, m.bn_epsilon
    return net


def _unported(m: ml_collections.ConfigDict, block: str, num_stages: int) -> list[str]:
    """``config.model`` settings that ``from_config``'s ports do not build, as 'key=value'."""
    preact = block == 'preact'
    fixed = {'family': 'resnet', 'conv_bias': preact, 'head_norm': preact,
             'conv_padding': 'same' if preact else 'symmetric', 'bn_running_var': 'unbiased',
             'bn_scale': True, 'head_bias': True, 'head_scale': 1.0, 'stochastic_depth': 0.0}
    choices = {'activation': tuple(ACTIVATIONS),
               'stem': ('conv7x7_bias',) if preact else ('cifar', 'imagenet'),
               'shortcut': ('conv1x1', 'conv3x3') if block == 'basic' else ('conv1x1',),
               'stage_strides': ((), (1,) + (2,) * (num_stages - 1))}
    if preact:
        fixed['stem_dropout'] = 0.0
    if block == 'bottleneck':
        fixed['post_activation'] = True
    bad = [k for k, v in fixed.items() if m.get(k, v) != v]
    bad += [k for k, v in choices.items() if hashable(m.get(k)) not in v]
    if block not in ('basic', 'bottleneck', 'preact'):
        bad.append('block')
    return [f'model.{k}={m.get(k)!r}' for k in bad]


def hashable(v: Any) -> Any:
    """Lists and tuples (a config's sequences) as tuples, to compare and look up."""
    return tuple(v) if isinstance(v, (list, tuple)) else v


# --------------------------------------------------------------------------- #
# Weights, both ways
# --------------------------------------------------------------------------- #
def flax_node(tree, path):
    for p in path:
        tree = tree[p]
    if 'kernel' not in tree and 'scale' not in tree and 'mean' not in tree and len(tree) == 1:
        (tree,) = tree.values()  # models.BiasConv wraps its nn.Conv
    return tree


def _to_dicts(tree):
    if isinstance(tree, dict) or hasattr(tree, 'items'):
        return {k: _to_dicts(v) for k, v in tree.items()}
    return tree


def _weights(torch_model: nn.Module):
    """(collection, module path, Flax name, PyTorch tensor) of every weight."""
    names = {nn.Conv2d: {'weight': 'kernel', 'bias': 'bias'},
             nn.Linear: {'weight': 'kernel', 'bias': 'bias'},
             nn.BatchNorm2d: {'weight': 'scale', 'bias': 'bias'}}
    for name, m in torch_model.named_modules():
        kind = next((k for k in names if isinstance(m, k)), None)
        if kind is None:
            continue
        path = name.split('.')
        for torch_name, flax_name in names[kind].items():
            if getattr(m, torch_name) is not None:
                yield 'params', path, flax_name, getattr(m, torch_name)
        if kind is nn.BatchNorm2d:
            yield 'batch_stats', path, 'mean', m.running_mean
            yield 'batch_stats', path, 'var', m.running_var


def to_flax_layout(w: np.ndarray) -> np.ndarray:
    """A PyTorch weight in Flax's layout: OIHW -> HWIO, a Linear weight transposed."""
    return w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T if w.ndim == 2 else w


def to_torch_layout(w: np.ndarray) -> np.ndarray:
    """The inverse of ``to_flax_layout``: HWIO -> OIHW, a dense kernel transposed."""
    w = w.transpose(3, 2, 0, 1) if w.ndim == 4 else w.T if w.ndim == 2 else w
    return np.array(w, np.float32, order='C')  # a writable copy: torch shares its memory


def port(torch_model: nn.Module, shapes: Any) -> dict:
    """Flax variables (same structure as ``shapes``) filled from the PyTorch weights.

    Every Flax leaf must be filled exactly once.
    """
    variables = _to_dicts(shapes)  # plain mutable dicts, leaves still ShapeDtypeStructs
    for collection, path, key, tensor in _weights(torch_model):
        node = flax_node(variables[collection], path)
        value = to_flax_layout(tensor.detach().numpy().copy())  # JAX may alias numpy memory
        expected = node[key].shape
        assert value.shape == expected, (path, key, value.shape, expected)
        assert isinstance(node[key], jax.ShapeDtypeStruct), ('filled twice', path, key)
        node[key] = jnp.asarray(value, jnp.float32)
    left = [p for p, x in jax.tree_util.tree_flatten_with_path(variables)[0]
            if isinstance(x, jax.ShapeDtypeStruct)]
    assert not left, f'Flax variables with no PyTorch counterpart: {left}'
    return variables


def load_flax(torch_model: nn.Module, variables: Any) -> nn.Module:
    """Copies jaxres ``{'params', 'batch_stats'}`` into ``torch_model``: the inverse of
    ``port``.  Every Flax leaf must be used exactly once.  Returns the model."""
    used = 0
    with torch.no_grad():
        for collection, path, key, tensor in _weights(torch_model):
            value = to_torch_layout(np.asarray(flax_node(variables[collection], path)[key]))
            if value.shape != tuple(tensor.shape):
                raise ValueError(f'{".".join(path)}.{key}: Flax gives {value.shape} in '
                                 f'PyTorch layout, the PyTorch model has {tuple(tensor.shape)}.')
            tensor.copy_(torch.from_numpy(value))
            used += 1
    total = len(jax.tree_util.tree_leaves([variables[k] for k in ('params', 'batch_stats')
                                           if k in variables]))
    if used != total:
        raise ValueError(f'{total - used} Flax variables have no PyTorch counterpart.')
    return torch_model


def torchvision_transforms():
    """torchvision.transforms, also from a CUDA wheel next to a CPU-only torch.

    Such a wheel's _C.so cannot load, and registering fake kernels for its
    missing detection ops then fails at import; the transforms do not need them.
    """
    try:
        return importlib.import_module('torchvision.transforms')
    except RuntimeError:
        for name in [m for m in sys.modules if m == 'torchvision' or m.startswith('torchvision.')]:
            del sys.modules[name]
        sys.modules['torchvision._meta_registrations'] = types.ModuleType(
            'torchvision._meta_registrations')
        return importlib.import_module('torchvision.transforms')
