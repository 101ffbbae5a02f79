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


def test_max_pool_tiles_equals_flax_max_pool_values_and_gradient():
    # 31 x 31: the odd edge is dropped, as PyTorch's MaxPool2d(2) does.
    x = jax.random.normal(jax.random.key(0), (2, 31, 31, 3))
    w = jax.random.normal(jax.random.key(1), (2, 15, 15, 3))
    ours = lambda v: jnp.sum(models.max_pool_tiles(v, 2) * w)
    flax_ = lambda v: jnp.sum(nn.max_pool(v, (2, 2), (2, 2)) * w)
    np.testing.assert_array_equal(models.max_pool_tiles(x, 2), nn.max_pool(x, (2, 2), (2, 2)))
    g = jax.grad(ours)(x)
    np.testing.assert_allclose(g, jax.grad(flax_)(x), rtol=0, atol=0)
    assert float(jnp.abs(g[:, 30]).max()) == 0.0  # the dropped row gets no gradient
