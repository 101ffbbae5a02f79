"""Each seed's model against a PyTorch reference written from the seed's code.

The references (jaxres/tools/torch_ports.py, shared with the twin runs) are
small nn.Modules that follow each seed's own code
(kuangliu's CIFAR ResNet for seeds 000-002, the Keras pre-activation network of
seed 003 rewritten in PyTorch with TF 'same' padding, Zhenye Na's network and
torchvision's ResNet-18 layout for seed 004).  Their submodules carry the Flax
module names, so one generic function ports any of them.  For each seed config
the PyTorch weights (with random BN statistics and affine parameters) are copied
into the Flax variables and we check, in float32:
  * eval-mode logits agree (max abs diff < 1e-4);
  * train-mode logits agree (batch statistics), dropout off in both;
  * the BN running statistics after that train step agree (PyTorch's rule:
    the running variance tracks the *unbiased* batch variance).
Also the v1 bottleneck (seed 000's baseline) and the Bag-of-Tricks ResNet-C/D
parts mixed with ELU, on an odd input size.
"""

import functools

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
nn = torch.nn
F = torch.nn.functional

from jaxres.tools.torch_ports import (CifarResNet, KerasPreActNet, KuangliuBasic,  # noqa: E402
                                      KuangliuBottleneck, Pair, flax_node, port)
from configs import (cifar10_preact, cifar10_resnet2111, cifar10_resnet9,  # noqa: E402
                     cifar10_resnet_b, cifar100_finetune_resnet18, cifar100_preact,
                     cifar100_resnet)
from jaxres import models  # noqa: E402

TOL = 1e-4


# --------------------------------------------------------------------------- #
# Porting and running
# --------------------------------------------------------------------------- #
def _randomize_bn(module, seed=0):
    """Non-trivial BN affine parameters and running statistics (eval is then a real test)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(1 + 0.5 * torch.rand(c, generator=g))


def _torch_bn_stats(torch_model):
    out = {}
    for name, m in torch_model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            out[name] = (m.running_mean.detach().numpy(), m.running_var.detach().numpy())
    return out


def _check(config_module, torch_model_fn, num_classes, size, dropout_keys=()):
    """Eval logits, train logits and BN running statistics, Flax vs PyTorch."""
    config = config_module.get_config()
    x_np = np.random.default_rng(0).normal(size=(4, 3, size, size)).astype(np.float32)
    x_torch = torch.from_numpy(x_np)
    x_jax = jnp.asarray(x_np.transpose(0, 2, 3, 1))

    for train in (False, True):
        model_cfg = config.model.copy_and_resolve_references()
        if train:  # random dropout masks cannot match across frameworks
            for key in dropout_keys:
                model_cfg[key] = 0.0
        torch.manual_seed(0)
        ref = torch_model_fn(dropout=not train)
        _randomize_bn(ref)
        model = models.create_model(model_cfg, num_classes)
        shapes = jax.eval_shape(functools.partial(model.init, jax.random.key(0),
                                                  jnp.zeros((1, size, size, 3)), train=False))
        variables = port(ref, shapes)
        assert models.count_params(variables['params']) == sum(
            p.numel() for p in ref.parameters())
        if not train:
            ref.eval()
            with torch.no_grad():
                want = ref(x_torch).numpy()
            got = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x_jax)
            np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg='eval logits')
        else:
            ref.train()
            with torch.no_grad():
                want = ref(x_torch).numpy()
            got, updates = jax.jit(lambda v, x: model.apply(
                v, x, train=True, mutable=['batch_stats']))(variables, x_jax)
            np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg='train logits')
            stats = _torch_bn_stats(ref)
            assert stats
            for name, (mean, var) in stats.items():
                node = flax_node(updates['batch_stats'], name.split('.'))
                np.testing.assert_allclose(node['mean'], mean, atol=1e-5, rtol=1e-5,
                                           err_msg=f'{name} running mean')
                np.testing.assert_allclose(node['var'], var, atol=1e-5, rtol=1e-5,
                                           err_msg=f'{name} running var')


# --------------------------------------------------------------------------- #
# One test per seed model
# --------------------------------------------------------------------------- #
def test_seed000_resnet_b_bottleneck():
    _check(cifar10_resnet_b, lambda dropout: CifarResNet(
        KuangliuBottleneck, (3, 3, 3), (32, 64, 128), 32, 10), 10, 32)


def test_seed000_baseline_v1_bottleneck():
    """The report's baseline: stride on the first 1x1 conv (one config key away)."""

    class V1:
        @staticmethod
        def get_config():
            c = cifar10_resnet_b.get_config()
            c.model.bottleneck_stride_on = '1x1'
            return c

    _check(V1, lambda dropout: CifarResNet(
        KuangliuBottleneck, (3, 3, 3), (32, 64, 128), 32, 10, stride_on='1x1'), 10, 32)


def test_seed001_resnet_2111():
    _check(cifar10_resnet2111, lambda dropout: CifarResNet(
        KuangliuBasic, (2, 1, 1, 1), (64, 128, 256, 512), 64, 10), 10, 32)


def test_seed002_resnet9():
    _check(cifar10_resnet9, lambda dropout: CifarResNet(
        KuangliuBasic, (1, 1, 1, 1), (64, 128, 256, 512), 64, 10), 10, 32)


@pytest.mark.parametrize('config_module,num_classes', [(cifar10_preact, 10),
                                                        (cifar100_preact, 100)])
def test_seed003_keras_preact(config_module, num_classes):
    _check(config_module, lambda dropout: KerasPreActNet(num_classes, 0.1 if dropout else 0.0),
           num_classes, 32, dropout_keys=('block_dropout',))


def test_seed004_cifar100_resnet():
    _check(cifar100_resnet, lambda dropout: CifarResNet(
        KuangliuBasic, (2, 4, 4, 2), (32, 64, 128, 256), 32, 100,
        stem_dropout=0.02 if dropout else 0.0, head_pool='max', shortcut_kernel=3,
        post_relu=False), 100, 32, dropout_keys=('stem_dropout',))


def test_seed004_torchvision_resnet18_finetune():
    # torchvision's layout at 64x64 (the config trains at 224; the layout is the same).
    _check(cifar100_finetune_resnet18, lambda dropout: CifarResNet(
        KuangliuBasic, (2, 2, 2, 2), (64, 128, 256, 512), 64, 100, stem='imagenet'),
        100, 64)


class MixedNet(nn.Module):
    """Parts from different papers in one net: ResNet-C deep stem, ResNet-D
    avg-pool shortcut, BasicBlocks, ELU (the Bag-of-Tricks tweaks are options)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Module()
        for i, (cin, cout) in enumerate([(3, 8), (8, 8), (8, 16)]):
            setattr(self.stem, f'conv{i}', nn.Conv2d(cin, cout, 3, 1, 1, bias=False))
            setattr(self.stem, f'bn{i}', nn.BatchNorm2d(cout))
        self.stage1_block1 = KuangliuBasic(16, 16, 1, act=F.elu)
        self.stage2_block1 = KuangliuBasic(16, 32, 2, act=F.elu)
        # ResNet-D: AvgPool2d(2, ceil_mode=True, count_include_pad=False) + conv1x1 + BN.
        self.stage2_block1.shortcut = Pair(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        for i in range(3):
            x = F.elu(getattr(self.stem, f'bn{i}')(getattr(self.stem, f'conv{i}')(x)))
        x = self.stage1_block1(x)
        b = self.stage2_block1
        out = b.bn2(b.conv2(F.elu(b.bn1(b.conv1(x)))))
        pooled = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
        x = F.elu(out + b.shortcut(pooled))
        return self.head(x.mean((2, 3)))


def test_bag_of_tricks_parts_mix_in_one_model():
    """ResNet-C stem + ResNet-D shortcut + ELU, on odd-sized (17x17) inputs."""

    class Mixed:
        @staticmethod
        def get_config():
            c = cifar10_resnet9.get_config()
            m = c.model
            m.stage_sizes, m.stem_width, m.stem = (1, 1), 16, 'deep'
            m.shortcut, m.activation = 'avgpool_conv1x1', 'elu'
            return c

    _check(Mixed, lambda dropout: MixedNet(), 10, 17)


# --------------------------------------------------------------------------- #
# The BatchNorm running-variance rule
# --------------------------------------------------------------------------- #
def test_batchnorm_running_variance_unbiased_vs_flax_biased():
    """'unbiased' tracks var * n/(n-1) (PyTorch); Flax's nn.BatchNorm the biased var."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 5)) * 2 + 1  # n = 18 per channel
    n = 18
    batch_var = np.var(np.asarray(x).reshape(-1, 5), axis=0)
    outs = {}
    for name, cls in (('unbiased', models.BatchNorm), ('biased', flax.linen.BatchNorm)):
        module = cls(use_running_average=False, momentum=0.9)
        variables = module.init(jax.random.key(1), x)
        y, upd = module.apply(variables, x, mutable=['batch_stats'])
        outs[name] = (np.asarray(y), np.asarray(upd['batch_stats']['var']))
    np.testing.assert_allclose(outs['unbiased'][0], outs['biased'][0], atol=1e-5)  # same output
    np.testing.assert_allclose(outs['biased'][1], 0.9 + 0.1 * batch_var, rtol=1e-5)
    np.testing.assert_allclose(outs['unbiased'][1], 0.9 + 0.1 * batch_var * n / (n - 1), rtol=1e-5)
    bn = nn.BatchNorm2d(5, momentum=0.1)
    bn.train()
    bn(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(outs['unbiased'][1], bn.running_var.numpy(), rtol=1e-5)
