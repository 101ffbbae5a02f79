"""im2col convolutions equal XLA's: values and both gradients, every shape the models use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxres import conv, models

from conftest import tiny_config

DN = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize('size,cin,cout,kernel,stride,padding', [
    (16, 3, 8, 3, 1, ((1, 1), (1, 1))),     # CIFAR stem
    (16, 8, 16, 3, 2, ((1, 1), (1, 1))),    # strided 3x3, PyTorch padding
    (16, 8, 16, 3, 2, 'SAME'),              # Keras SAME (pads bottom/right only)
    (16, 8, 16, 1, 2, ((0, 0), (0, 0))),    # projection shortcut
    (15, 3, 8, 7, 2, ((3, 3), (3, 3))),     # ImageNet stem, odd size
    (8, 4, 4, 1, 1, 'VALID'),
])
def test_im2col_matches_xla(size, cin, cout, kernel, stride, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout)), jnp.float32)

    def loss(impl):
        return lambda x, w: jnp.sum(jnp.sin(impl(x, w, (stride, stride), padding,
                                                 dimension_numbers=DN)))

    ref = lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)
    out = conv.im2col_conv(x, w, (stride, stride), padding, dimension_numbers=DN)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-5)
    g_ref = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    g_out = jax.grad(loss(conv.im2col_conv), (0, 1))(x, w)
    for a, b in zip(g_out, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-4)


def test_unsupported_convs_fall_back_to_xla():
    x = jnp.ones((1, 8, 8, 4))
    w = jnp.ones((3, 3, 4, 4))
    dilated = conv.im2col_conv(x, w, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=DN)
    ref = lax.conv_general_dilated(x, w, (1, 1), 'SAME', rhs_dilation=(2, 2), dimension_numbers=DN)
    np.testing.assert_array_equal(dilated, ref)


def test_auto_is_im2col_on_cpu_and_unknown_names_are_refused():
    expected = conv.im2col_conv if jax.default_backend() == 'cpu' else lax.conv_general_dilated
    assert conv.conv_fn('auto') is expected
    assert conv.conv_fn('xla') is lax.conv_general_dilated
    with pytest.raises(ValueError, match='conv_impl'):
        conv.conv_fn('winograd')


def test_model_lowerings_share_parameters_and_agree():
    config = tiny_config()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 8, 8, 3)), jnp.float32)
    outs = {}
    for impl in ('xla', 'im2col'):
        config.model.conv_impl = impl
        model = models.create_model(config.model, num_classes=10)
        variables = model.init(jax.random.key(0), x, train=False)

        def loss(params):
            logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                                    mutable=['batch_stats'])
            return jnp.sum(logits ** 2)

        outs[impl] = (variables, jax.grad(loss)(variables['params']))
    (v_xla, g_xla), (v_col, g_col) = outs['xla'], outs['im2col']
    assert jax.tree.structure(v_xla) == jax.tree.structure(v_col)  # checkpoints interchange
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), g_col, g_xla)
