"""The 'onednn' conv lowering against float32 ``lax.conv_general_dilated``: the
forward pass and both gradients, for the conv shapes of the shipped configs."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxres.cpu import conv, onednn

pytestmark = pytest.mark.skipif(not onednn.available(),
                                reason=f'oneDNN lowering unavailable: {onednn.unavailable_reason()}')

DN = ('NHWC', 'HWIO', 'NHWC')
# (input NHWC, kernel HWIO, stride, padding): ResNet's 3x3 convs (stride 1 and 2),
# its 1x1 stride-2 shortcut, the 7x7 stride-2 ImageNet stem, the 3x3 CIFAR stem.
SHAPES = {
    '3x3s1': ((4, 8, 8, 16), (3, 3, 16, 32), (1, 1), ((1, 1), (1, 1))),
    '3x3s1_16x16': ((4, 16, 16, 16), (3, 3, 16, 32), (1, 1), ((1, 1), (1, 1))),
    '3x3s2': ((4, 16, 16, 16), (3, 3, 16, 32), (2, 2), ((1, 1), (1, 1))),
    '1x1s2': ((4, 16, 16, 16), (1, 1, 16, 32), (2, 2), ((0, 0), (0, 0))),
    '7x7s2': ((4, 16, 16, 3), (7, 7, 3, 16), (2, 2), ((3, 3), (3, 3))),
    'stem3x3': ((4, 16, 16, 3), (3, 3, 3, 16), (1, 1), ((1, 1), (1, 1))),
    'same_s2': ((4, 16, 16, 16), (3, 3, 16, 32), (2, 2), 'SAME'),  # pads (0, 1)
}


def conv_and_grads(fn, x, w, strides, padding, cotangent):
    """(y, dx, dw), all float32, of ``fn`` at (x, w) with the given output cotangent."""
    y, vjp = jax.vjp(lambda x, w: fn(x, w, strides, padding, dimension_numbers=DN), x, w)
    dx, dw = vjp(cotangent.astype(y.dtype))
    return [a.astype(jnp.float32) for a in (y, dx, dw)]


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('name', sorted(SHAPES))
def test_forward_and_gradients_match_float32_xla(name, dtype):
    x_shape, w_shape, strides, padding = SHAPES[name]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[:3])), jnp.float32)
    ref = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)
    g = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
    want = conv_and_grads(lax.conv_general_dilated, x, w, strides, padding, g)
    if dtype == 'bfloat16':
        # Compared with the float32 conv of the rounded operands, so what is left
        # is the rounding of the results (bf16: 8 bits of mantissa).
        x, w, g = (a.astype(jnp.bfloat16) for a in (x, w, g))
        want = conv_and_grads(lax.conv_general_dilated, x.astype(jnp.float32),
                              w.astype(jnp.float32), strides, padding,
                              g.astype(jnp.float32))
    got = conv_and_grads(onednn.onednn_conv, x, w, strides, padding, g)  # eager
    jit_got = jax.jit(lambda x, w, g: conv_and_grads(onednn.onednn_conv, x, w, strides,
                                                     padding, g))(x, w, g)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == 'float32' else dict(rtol=2e-2, atol=3e-2)
    for part, a, b, c in zip(('y', 'dx', 'dw'), got, jit_got, want):
        assert a.shape == c.shape, part
        scale = float(jnp.max(jnp.abs(c)))
        np.testing.assert_allclose(a / scale, c / scale, err_msg=part, **tol)
        np.testing.assert_allclose(b / scale, c / scale, err_msg=part, **tol)


def test_dtypes_follow_the_operands():
    x = jnp.ones((2, 8, 8, 4), jnp.bfloat16)
    w = jnp.ones((3, 3, 4, 8), jnp.bfloat16)
    f = lambda x, w: onednn.onednn_conv(x, w, (1, 1), 'SAME', dimension_numbers=DN)
    assert f(x, w).dtype == jnp.bfloat16
    dx, dw = jax.grad(lambda x, w: jnp.sum(f(x, w).astype(jnp.float32)), (0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    # every output sees 3*3*4 ones
    assert float(f(x, w)[0, 4, 4, 0]) == 36.0


def test_other_convs_fall_back_to_im2col():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 2, 4)), jnp.float32)
    kwargs = dict(dimension_numbers=DN, feature_group_count=2)  # grouped
    np.testing.assert_allclose(onednn.onednn_conv(x, w, (1, 1), 'SAME', **kwargs),
                               lax.conv_general_dilated(x, w, (1, 1), 'SAME', **kwargs),
                               rtol=1e-5, atol=1e-5)


class TinyNet(nn.Module):
    impl: str
    dtype: str = 'bfloat16'

    @nn.compact
    def __call__(self, x):
        c = lambda *a, **k: nn.Conv(*a, **k, use_bias=False, dtype=self.dtype,
                                    conv_general_dilated=conv.conv_fn(self.impl))
        x = nn.relu(c(8, (3, 3), padding=1)(x))
        y = c(16, (3, 3), strides=2, padding=1)(x)
        x = nn.relu(y + c(16, (1, 1), strides=2, padding=0)(x))
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2)) @ jnp.ones((16, 3))


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_jitted_model_gradient_matches_im2col(dtype):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 16, 16, 3)), jnp.float32)
    params = TinyNet('im2col', dtype).init(jax.random.key(0), x)
    assert conv.conv_fn('onednn') is onednn.onednn_conv

    def grads(impl):
        loss = lambda p: jnp.sum(TinyNet(impl, dtype).apply(p, x) ** 2)
        return jax.jit(jax.value_and_grad(loss))(params)

    (la, ga), (lb, gb) = grads('onednn'), grads('im2col')
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == 'float32' else dict(rtol=5e-2, atol=2e-2)
    np.testing.assert_allclose(la, lb, **tol)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        assert a.dtype == b.dtype == jnp.float32  # parameters stay float32
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a / scale, b / scale, **tol)


def shipped_conv_shapes() -> list[tuple]:
    """(input HWC, kernel HWIO, strides, explicit pads) of every conv in every
    shipped config's model, as its 'onednn' lowering sees them (traced, not run)."""
    import glob
    import os
    from jaxres import main as jaxres_main, models
    from jaxres.data import datasets
    seen = {}
    real = onednn.onednn_conv

    def record(lhs, rhs, window_strides, padding, *args, **kwargs):
        pads = conv._explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], window_strides)
        seen[tuple(lhs.shape[1:]), tuple(rhs.shape), tuple(window_strides),
             tuple(map(tuple, pads))] = None
        return real(lhs, rhs, window_strides, padding, *args, **kwargs)

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    onednn.onednn_conv = record
    try:
        for path in sorted(glob.glob(os.path.join(root, 'configs', '*.py'))):
            if path.endswith('__init__.py'):
                continue
            config = jaxres_main.load_config(path)
            num_classes, image_shape = datasets.KNOWN_SHAPES[config.dataset]
            model = models.create_model(config.model, num_classes, jnp.bfloat16, 'onednn')
            hwc = datasets.model_input_shape(image_shape, config.data.image_size or 0)
            x = jax.ShapeDtypeStruct((2, *hwc), jnp.float32)
            jax.eval_shape(lambda x: model.init(
                {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x, train=True), x)
    finally:
        onednn.onednn_conv = real
    return list(seen)


def test_every_conv_of_every_shipped_config():
    """Forward and both gradients in bf16 against float32 ``lax.conv`` on the
    bf16-rounded operands, for each distinct conv shape of configs/*.py (batch 2)."""
    shapes = shipped_conv_shapes()
    assert len(shapes) > 50  # all 15 configs' nets, ImageNet's ResNet-50 included
    rng = np.random.default_rng(3)
    for hwc, w_shape, strides, pads in shapes:
        x = jnp.asarray(rng.standard_normal((2, *hwc)), jnp.bfloat16)
        w = jnp.asarray(rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[:3])),
                        jnp.bfloat16)
        ref = lambda x, w: lax.conv_general_dilated(
            x.astype(jnp.float32), w.astype(jnp.float32), strides, pads, dimension_numbers=DN)
        y0, vjp0 = jax.vjp(ref, x, w)
        g = jnp.asarray(rng.standard_normal(y0.shape), jnp.bfloat16)
        y1, vjp1 = jax.vjp(lambda x, w: onednn.onednn_conv(x, w, strides, pads,
                                                           dimension_numbers=DN), x, w)
        for part, a, b in zip(('y', 'dx', 'dw'), (y1, *vjp1(g)),
                              (y0, *vjp0(g.astype(jnp.float32)))):
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            s = float(np.max(np.abs(b)))
            np.testing.assert_allclose(a / s, b / s, rtol=2e-2, atol=2e-2,
                                       err_msg=f'{part} of {hwc} x {w_shape} {strides} {pads}')


def test_train_step_matches_xla_in_float32():
    """A whole step of a net with biased convs, BatchNorm and a shortcut (the
    preact config's parts, small): 'onednn' (its convs, fused BatchNorm, bias
    sums) against XLA's lowering, both float32: loss, gradients, running stats."""
    from jaxres import models
    from jaxres.main import load_config
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(os.path.join(root, 'configs', 'cifar10_preact.py'))
    m = config.model
    m.stage_sizes, m.stage_widths, m.stem_width, m.block_dropout = (1, 1), (8, 16), 8, 0.0
    x = jnp.asarray(np.random.default_rng(4).standard_normal((4, 16, 16, 3)), jnp.float32)
    labels = jnp.arange(4) % 10

    def step(impl):
        model = models.create_model(m, 10, jnp.float32, impl)
        variables = model.init(jax.random.key(0), x, train=False)

        def loss(params):
            logits, updates = model.apply({**variables, 'params': params}, x, train=True,
                                          mutable=['batch_stats'])
            one_hot = jax.nn.one_hot(labels, 10)
            return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * one_hot, -1)), updates
        return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])

    (l0, s0), g0 = step('xla')
    (l1, s1), g1 = step('onednn')
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    assert jax.tree.structure(g1) == jax.tree.structure(g0)
    # A conv bias that a BatchNorm follows has a zero gradient: both sides are
    # rounding noise there, so gradients are compared on the largest one's scale.
    scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(g0))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a / scale, b / scale, rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
