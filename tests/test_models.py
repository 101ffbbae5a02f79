"""Model family: exact parameter counts (no compilation) and pure-function behaviour."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from jaxres import models

from conftest import tiny_config


def _count(model_cfg, num_classes=10, size=32):
    model = models.create_model(model_cfg, num_classes)
    variables = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    return models.count_params(variables['params'])


def _model(**kw):
    c = default.get_config().model
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.mark.parametrize('depth,expected', [(18, 11_173_962), (34, 21_282_122),
                                            (50, 23_520_842)])
def test_named_depths_parameter_counts(depth, expected):
    assert _count(_model(depth=depth)) == expected


def test_kuangliu_stage_variants_parameter_counts():
    assert _count(_model(stage_sizes=(2, 1, 1, 1))) == 4_977_226
    assert _count(_model(stage_sizes=(1, 1, 1, 1))) == 4_903_242


def test_train_flag_controls_batch_stats_and_dropout():
    cfg = tiny_config(**{'model.stem_dropout': 0.5}).model
    model = models.create_model(cfg, num_classes=4)
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    eval_a = model.apply(variables, x, train=False)
    eval_b = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)  # deterministic, no mutation needed
    logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'],
                                  rngs={'dropout': jax.random.key(2)})
    assert logits.shape == (6, 4) and logits.dtype == jnp.float32
    before = jax.tree_util.tree_leaves(variables['batch_stats'])
    after = jax.tree_util.tree_leaves(updates['batch_stats'])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    other, _ = model.apply(variables, x, train=True, mutable=['batch_stats'],
                           rngs={'dropout': jax.random.key(3)})
    assert not np.allclose(logits, other)  # dropout active only in training


def test_bfloat16_computes_in_bf16_with_float32_params():
    cfg = tiny_config().model
    model = models.create_model(cfg, num_classes=4, dtype=jnp.bfloat16)
    x = jnp.ones((2, 8, 8, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    assert {p.dtype for p in jax.tree_util.tree_leaves(variables)} == {jnp.dtype('float32')}
    logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
    assert logits.dtype == jnp.float32
    assert {p.dtype for p in jax.tree_util.tree_leaves(updates)} == {jnp.dtype('float32')}
    # Both conv lowerings multiply in bf16 (XLA's convolution, im2col's dot_general).
    for impl, op in (('xla', 'stablehlo.convolution'), ('im2col', 'stablehlo.dot_general')):
        lowered = model.clone(conv_impl=impl)
        hlo = jax.jit(lambda v, x: lowered.apply(v, x, train=False)).lower(variables, x).as_text()
        conv_ops = [line for line in hlo.splitlines() if op in line]
        assert len(conv_ops) >= 3, impl  # stem + two blocks' convs
        assert all('bf16' in line.rsplit(' : ', 1)[1].split('->')[0] for line in conv_ops), impl


@pytest.mark.parametrize('w', [128, 256])  # airbench93's and airbench94's nets
def test_airbench_style_net_from_parts(w):
    # By hand: whiten 2x2x3x24 (+24 bias); convs 3x3 24->64, 64->64, 64->w, then
    # w->w three times (+ one BN bias per conv output channel, no BN scale);
    # head w x 10, no bias.
    from configs import cifar10_speedrun_sgd
    config = cifar10_speedrun_sgd.get_config()
    config.model.stage_widths = (64, w, w)
    model = models.create_model(config.model, num_classes=10)
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    convs = 9 * (24 * 64 + 64 * 64 + 64 * w + 3 * w * w)
    bn_biases = 64 * 2 + w * 4
    assert models.count_params(variables['params']) == 2 * 2 * 3 * 24 + 24 + convs + bn_biases + 10 * w
    assert 'scale' not in variables['params']['stage1_block1']['bn1']
    assert 'bias' not in variables['params']['head']
    logits = model.apply(model.init(jax.random.key(0), x, train=False), x, train=False)
    assert logits.shape == (2, 10)


def test_dirac_init_passes_the_input_channels_through():
    init = models.KERNEL_INITS['dirac']
    w = init(jax.random.key(0), (3, 3, 4, 6))
    x = jax.random.normal(jax.random.key(1), (1, 5, 5, 4))
    y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    np.testing.assert_allclose(y[..., :4], x, atol=1e-6)  # identity on the first 4
    assert float(jnp.abs(w[..., 4:]).sum()) > 0  # the rest keep the random init


def test_whitening_kernel_decorrelates_patches():
    rng = np.random.default_rng(0)
    # Correlated channels and neighbouring pixels.
    base = rng.normal(size=(64, 9, 9, 1))
    images = np.concatenate([base, base * 0.5 + 0.1 * rng.normal(size=base.shape),
                             rng.normal(size=base.shape)], -1)
    images = images + np.roll(images, 1, axis=2)
    kernel = models.whitening_kernel(images, 2, eps=0.0)
    assert kernel.shape == (2, 2, 3, 24)
    out = jax.lax.conv_general_dilated(jnp.asarray(images, jnp.float32), kernel, (1, 1), 'VALID',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    first = np.asarray(out[..., :12]).reshape(-1, 12)
    np.testing.assert_allclose(first.T @ first / len(first), np.eye(12), atol=1e-3)
    np.testing.assert_allclose(out[..., 12:], -out[..., :12], atol=1e-6)


def _wrn_count_by_hand(depth, k, num_classes):
    """WRN-depth-k from the paper's layout, counted without the model: 3x3 convs
    without bias, BN scale + bias, 1x1 projections where the width changes."""
    n, total, c_in = (depth - 4) // 6, 3 * 3 * 3 * 16, 16
    for width in (16 * k, 32 * k, 64 * k):
        for _ in range(n):
            total += 2 * c_in + 9 * c_in * width + 2 * width + 9 * width * width
            total += c_in * width if c_in != width else 0
            c_in = width
    return total + 2 * c_in + c_in * num_classes + num_classes


@pytest.mark.parametrize('num_classes,published', [(10, 36_479_194), (100, 36_536_884)])
def test_wide_resnet_28_10_parameter_count(num_classes, published):
    cfg = models.model_config('wide_resnet', depth=28, widen_factor=10)
    assert _count(cfg, num_classes) == _wrn_count_by_hand(28, 10, num_classes) == published


def test_wide_resnet_configs_build_wrn_28_10():
    from configs import cifar10_wrn28_10, cifar100_wrn28_10
    assert _count(cifar10_wrn28_10.get_config().model, 10) == 36_479_194
    assert _count(cifar100_wrn28_10.get_config().model, 100) == 36_536_884


def test_stochastic_depth_drops_whole_branches_in_training_only():
    cfg = _model(stage_sizes=(1, 1), stem_width=4, stochastic_depth=0.5)
    model = models.create_model(cfg, num_classes=3)
    x = jax.random.normal(jax.random.key(1), (64, 8, 8, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    plain = models.create_model(_model(stage_sizes=(1, 1), stem_width=4), num_classes=3)
    # Same parameters; evaluation is the plain network's.
    np.testing.assert_array_equal(model.apply(variables, x, train=False),
                                  plain.apply(variables, x, train=False))
    # In training, the last block (rate 0.5) keeps its branch x2 or drops it: per example.
    branch = models.layers.drop_path

    class Probe(nn.Module):
        @nn.compact
        def __call__(self, y):
            return branch(y, 0.5, train=True)

    y = Probe().apply({}, jnp.ones((256, 2, 2, 3)), rngs={'dropout': jax.random.key(2)})
    per_example = np.asarray(y).reshape(256, -1)
    assert set(np.unique(per_example)) == {0.0, 2.0}
    assert (per_example == per_example[:, :1]).all()  # a whole example, never part of one
    assert 0.35 < (per_example[:, 0] == 0).mean() < 0.65
    trained = model.apply(variables, x, train=True, mutable=['batch_stats'],
                          rngs={'dropout': jax.random.key(3)})[0]
    plain_trained = plain.apply(variables, x, train=True, mutable=['batch_stats'])[0]
    assert not np.allclose(trained, plain_trained)


def test_families_and_parts_come_from_the_registries():
    assert {'resnet', 'airbench', 'wide_resnet'} <= set(models.FAMILIES)
    assert {'basic', 'bottleneck', 'preact', 'wide'} <= set(models.BLOCKS)
    assert {'cifar', 'imagenet', 'deep', 'conv7x7_bias', 'conv3x3'} <= set(models.STEMS)
    # A family's config keys are its module's fields; the model is Family(**keys).
    cfg = models.model_config('airbench', stage_widths=(8, 8), pool_sizes=(1, 2))
    assert set(cfg) == {'family'} | set(models.config_keys(models.FAMILIES['airbench']))
    model = models.create_model(cfg, num_classes=5)
    assert isinstance(model, models.FAMILIES['airbench']) and model.stage_widths == (8, 8)
    with pytest.raises(ValueError, match=r"has no keys \['depth'\]"):
        models.model_config('airbench', depth=18)
    with pytest.raises(ValueError, match="family='vit' is not valid"):
        models.create_model({'family': 'vit'}, num_classes=5)


def test_a_registered_block_is_a_valid_choice_at_once():
    from jaxres import config_validation
    from jaxres.models import registry

    @registry.register(models.BLOCKS, 'test_plain')
    class Plain(nn.Module):  # two convs, no skip
        features: int
        strides: int
        conv: object
        norm: object
        act: object

        @nn.compact
        def __call__(self, x):
            x = self.conv(self.features, (3, 3), (self.strides, self.strides), name='conv1')(x)
            return self.act(self.norm(name='bn1')(x))

    try:
        config = tiny_config(**{'model.block': 'test_plain'})
        config_validation.validate(config)
        # stem conv + BN, stage 1 conv 8->8 + BN, stage 2 conv 8->16 + BN, head.
        assert _count(config.model, size=8) == (3 * 3 * 3 * 8 + 16 + 9 * 8 * 8 + 16
                                                + 9 * 8 * 16 + 32 + 16 * 10 + 10)
    finally:
        del models.BLOCKS['test_plain']
    with pytest.raises(config_validation.ConfigError, match="'test_plain' is not valid"):
        config_validation.validate(config)
