"""The bf16 CPU path's BatchNorm and bias (``jaxres/cpu/norm.py``) against the plain
forms: values, gradients, running statistics and variables."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxres.cpu import norm, onednn
from jaxres.models import layers

ONEDNN = onednn.available()
# (N, H, W, C) of BatchNorms in the shipped nets: odd sizes (airbench), 1x1 and
# wide ones (ResNet heads), the stem's.
SHAPES = [(4, 8, 8, 16), (3, 7, 7, 24), (8, 1, 1, 64), (2, 4, 4, 512)]


def plain(x, scale, bias, epsilon):
    """Training BatchNorm as written out, in float32."""
    x32 = x.astype(jnp.float32)
    mean, var = x32.mean((0, 1, 2)), x32.var((0, 1, 2))
    return (x32 - mean) * scale / jnp.sqrt(var + epsilon) + bias, mean, var


def implementations():
    yield 'xla', norm.batch_norm_xla
    if ONEDNN:
        yield 'onednn', onednn.batch_norm_train


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('shape', SHAPES)
def test_batch_norm_train_matches_the_plain_form(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, dtype)
    scale, bias = (jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32) for _ in range(2))
    g = jnp.asarray(rng.standard_normal(shape), dtype)
    (y0, m0, v0), vjp0 = jax.vjp(lambda *a: plain(*a, 1e-3), x, scale, bias)
    grads0 = vjp0((g.astype(jnp.float32), jnp.zeros_like(m0), jnp.zeros_like(v0)))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == 'float32' else dict(rtol=2e-2, atol=2e-2)
    for name, fn in implementations():
        (y, m, v), vjp = jax.vjp(lambda *a: fn(*a, 1e-3), x, scale, bias)
        grads = vjp((g, jnp.zeros_like(m), jnp.zeros_like(v)))
        assert y.dtype == x.dtype and m.dtype == v.dtype == jnp.float32, name
        assert [a.dtype for a in grads] == [x.dtype, jnp.float32, jnp.float32], name
        np.testing.assert_allclose(m, m0, rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(v, v0, rtol=1e-4, atol=1e-5, err_msg=name)
        for part, a, b in zip(('y', 'dx', 'dscale', 'dbias'), (y, *grads), (y0, *grads0)):
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            s = max(float(np.max(np.abs(b))), 1.0)
            np.testing.assert_allclose(a / s, b / s, err_msg=f'{name} {part}', **tol)


@pytest.mark.parametrize('running_var', ['biased', 'unbiased'])
def test_fused_batch_norm_module_is_the_plain_one(running_var):
    """Same variables, outputs, gradients and running averages as the module it
    stands in for (float32; ``fused=True`` is the bf16 CPU path's BatchNorm)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 6, 6, 8)) * 2 + 0.5,
                    jnp.float32)
    plain_bn = layers.norm_factory(True, 0.9, 1e-5, running_var, True, jnp.float32)
    fused_bn = layers.norm_factory(True, 0.9, 1e-5, running_var, True, jnp.float32,
                                   fused=True)
    variables = plain_bn().init(jax.random.key(0), x)
    assert jax.tree.structure(fused_bn().init(jax.random.key(0), x)) == \
        jax.tree.structure(variables)
    variables = {'params': {'scale': jnp.linspace(0.5, 2, 8), 'bias': jnp.linspace(-1, 1, 8)},
                 'batch_stats': variables['batch_stats']}

    def run(bn):
        def loss(params):
            y, updates = bn().apply({**variables, 'params': params}, x,
                                    mutable=['batch_stats'])
            return jnp.sum(jnp.sin(y)), updates
        return jax.value_and_grad(loss, has_aux=True)(variables['params'])

    (l0, s0), g0 = run(plain_bn)
    (l1, s1), g1 = run(fused_bn)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for a, b in zip(jax.tree.leaves((g1, s1)), jax.tree.leaves((g0, s0))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bias_add_sums_its_gradient_in_float32():
    y = jnp.full((3, 32, 32, 2), 1.0, jnp.bfloat16)
    bias = jnp.asarray([0.5, -0.25], jnp.float32)
    out, vjp = jax.vjp(norm.bias_add, y, bias)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out[0, 0, 0], [1.5, 0.75])
    g = jnp.full(y.shape, 1 + 2 ** -7, jnp.bfloat16)  # exact in bf16; its sums are not
    dy, dbias = vjp(g)
    assert dy is g or bool(jnp.all(dy == g))
    assert dbias.dtype == jnp.float32
    # 3,072 * (1 + 2^-7) = 3,096 is exact in float32; bf16 has only 3,088 and 3,104.
    np.testing.assert_allclose(dbias, [3096.0, 3096.0], rtol=1e-7)


def test_conv_module_is_nn_conv():
    """``layers.Conv`` (the bf16 CPU path's biased conv) has nn.Conv's name,
    variables, initial values and result."""
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 9, 5)), jnp.float32)
    kwargs = dict(kernel_init=nn.initializers.lecun_normal(),
                  bias_init=nn.initializers.uniform(0.5))

    class Wrap(nn.Module):
        cls: type

        @nn.compact
        def __call__(self, x):
            return self.cls(7, (3, 3), strides=2, padding=[(1, 1), (1, 1)], **kwargs)(x)

    v0 = Wrap(nn.Conv).init(jax.random.key(3), x)
    v1 = Wrap(layers.Conv).init(jax.random.key(3), x)
    assert jax.tree.map(jnp.shape, v1) == jax.tree.map(jnp.shape, v0)
    for a, b in zip(jax.tree.leaves(v1), jax.tree.leaves(v0)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(Wrap(layers.Conv).apply(v0, x), Wrap(nn.Conv).apply(v0, x),
                               rtol=1e-5, atol=1e-5)
