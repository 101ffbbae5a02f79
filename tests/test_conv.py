"""im2col and Winograd convolutions equal XLA's: values and both gradients, every shape
the models use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxres import models
from jaxres.cpu import conv

from conftest import tiny_config

DN = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize('size,cin,cout,kernel,stride,padding', [
    (16, 3, 8, 3, 1, ((1, 1), (1, 1))),     # CIFAR stem
    (16, 8, 16, 3, 2, ((1, 1), (1, 1))),    # strided 3x3, PyTorch padding
    (16, 8, 16, 3, 2, 'SAME'),              # Keras SAME (pads bottom/right only)
    (16, 8, 16, 1, 2, ((0, 0), (0, 0))),    # projection shortcut
    (15, 3, 8, 7, 2, ((3, 3), (3, 3))),     # ImageNet stem, odd size
    (8, 4, 4, 1, 1, 'VALID'),
    (7, 5, 6, 3, 1, 'SAME'),                # odd size: Winograd's padded last tile
    (31, 4, 8, 3, 1, ((1, 1), (1, 1))),     # airbench's 31x31 first group
    (9, 3, 5, 3, 1, ((0, 2), (1, 0))),      # asymmetric padding
    (6, 3, 5, 3, 1, 'VALID'),
    (8, 8, 4, 2, 1, 'VALID'),               # whitening stem (2x2)
])
@pytest.mark.parametrize('lowering', [conv.im2col_conv, conv.winograd_conv],
                         ids=['im2col', 'winograd'])
def test_lowerings_match_xla(lowering, size, cin, cout, kernel, stride, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout)), jnp.float32)

    def loss(impl):
        return lambda x, w: jnp.sum(jnp.sin(impl(x, w, (stride, stride), padding,
                                                 dimension_numbers=DN)))

    ref = lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)
    out = lowering(x, w, (stride, stride), padding, dimension_numbers=DN)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-5)
    g_ref = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    g_out = jax.grad(loss(lowering), (0, 1))(x, w)
    for a, b in zip(g_out, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize('lowering', [conv.im2col_conv, conv.winograd_conv],
                         ids=['im2col', 'winograd'])
def test_unsupported_convs_fall_back_to_xla(lowering):
    x = jnp.ones((1, 8, 8, 4))
    w = jnp.ones((3, 3, 4, 4))
    dilated = lowering(x, w, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=DN)
    ref = lax.conv_general_dilated(x, w, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=DN)
    np.testing.assert_array_equal(dilated, ref)


@pytest.mark.parametrize('lowering', [conv.im2col_conv, conv.winograd_conv],
                         ids=['im2col', 'winograd'])
def test_bfloat16_products_accumulate_in_float32(lowering):
    """16-bit operands, float32 accumulation: as close to the float32 conv as the
    rounding of the operands allows, and bfloat16 results and gradients."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((4, 8, 8, 64)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 64, 32)) / 24, jnp.float32)
    ref = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DN)
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    out = lowering(xb, wb, (1, 1), 'SAME', dimension_numbers=DN)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=0.06, rtol=0.02)
    dx, dw = jax.grad(lambda x, w: jnp.sum(lowering(x, w, (1, 1), 'SAME', dimension_numbers=DN)
                                           .astype(jnp.float32) ** 2), (0, 1))(xb, wb)
    assert dx.dtype == dw.dtype == jnp.bfloat16


def test_lowerings_by_name_and_unknown_names_are_refused():
    assert conv.conv_fn('xla') is lax.conv_general_dilated
    assert conv.conv_fn('im2col') is conv.im2col_conv
    assert conv.conv_fn('winograd') is conv.winograd_conv
    with pytest.raises(ValueError, match='fft'):
        conv.conv_fn('fft')


def test_model_lowerings_share_parameters_and_agree():
    config = tiny_config()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 8, 8, 3)), jnp.float32)
    outs = {}
    for impl in ('xla', 'im2col', 'winograd'):
        model = models.create_model(config.model, num_classes=10, conv_impl=impl)
        variables = model.init(jax.random.key(0), x, train=False)

        def loss(params):
            logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                                    mutable=['batch_stats'])
            return jnp.sum(logits ** 2)

        outs[impl] = (variables, jax.grad(loss)(variables['params']))
    v_xla, g_xla = outs.pop('xla')
    for v, g in outs.values():
        assert jax.tree.structure(v) == jax.tree.structure(v_xla)  # checkpoints interchange
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), g, g_xla)
