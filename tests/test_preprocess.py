"""Preprocessing ops and specs: what each op does to a known input, the spec
grammar and its errors, and every config's first batches as before the specs."""

import colorsys
import hashlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxres.step import batch_loss
from jaxres import config_validation, main, sharding
from jaxres.data import datasets, preprocess, resident

from conftest import ROOT, tiny_config


def test_crop_and_flip():
    x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.uint8).reshape(2, 4, 4, 1)
    keys = jax.random.split(jax.random.key(0), 2)
    np.testing.assert_array_equal(preprocess.random_crop(x, keys, 0, 'constant'), x)
    cropped = preprocess.random_crop(x, keys, 2, 'reflect')
    assert cropped.shape == x.shape
    flipped = preprocess.random_hflip(x, keys)
    for i in range(2):
        assert (np.array_equal(flipped[i], x[i]) or np.array_equal(flipped[i], x[i, :, ::-1]))


@pytest.mark.parametrize('mode', ['constant', 'reflect'])
def test_crop_is_pad_then_slice_at_the_drawn_offset(mode):
    """The crop takes exactly the pixels of a padded copy's window."""
    x = jax.random.randint(jax.random.key(3), (6, 5, 7, 3), 0, 256).astype(jnp.uint8)
    keys = jax.random.split(jax.random.key(4), 6)
    got = preprocess.random_crop(x, keys, 3, mode)
    padded = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)), mode)
    for img, pad_img, key in zip(got, padded, keys):
        dy, dx = jax.random.randint(key, (2,), 0, 7)
        np.testing.assert_array_equal(img, pad_img[dy:dy + 5, dx:dx + 7])


# --------------------------------------------------------------------------- #
# The seed augmentations (rotation/shift, flips, colour jitter, resized crop,
# standardisation): shapes, determinism, identity at zero strength.
# --------------------------------------------------------------------------- #


def _images(n=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(1, 256, (n, size, size, 3)), jnp.uint8)


def _keys(n=6, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def _norm(**kw):
    return preprocess.Normalization((0.5,) * 3, (0.25,) * 3, **kw)


def _pp(spec, **normalization):
    """A training pipeline of ``spec`` with mean 0.5 / std 0.25."""
    return preprocess.Preprocess.from_spec(spec, _norm(**normalization))


def _augment(spec, x, keys, flips=None):
    return preprocess.augment(x, keys, _pp(spec).pixel_steps, flips)


def test_default_augment_draws_the_same_crop_and_flip_as_before():
    """Only crop + flip configured: the exact batches of earlier jaxres versions."""
    x, keys = _images(), _keys()
    crop_keys, flip_keys = jax.vmap(lambda k: jax.random.split(k, 2), out_axes=1)(keys)
    want = preprocess.random_hflip(
        preprocess.random_crop(x, crop_keys, 4, 'reflect'), flip_keys)
    got = _augment("crop(4, 'reflect')|flip_lr|normalize", x, keys)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('op,spec', [
    ('affine', 'affine(rotation=30.0, width_shift=0.1, height_shift=0.1)'),
    ('affine', "affine(rotation=10.0, interpolation='nearest', fill='nearest')"),
    ('color_jitter', 'color_jitter(0.4, 0.4, 0.4, 0.1)'),
    ('random_resized_crop', 'random_resized_crop'),
    ('flip_ud', 'flip_ud'),
])
def test_new_ops_are_deterministic_per_key_and_keep_shape(op, spec):
    steps = _pp(spec + '|normalize').pixel_steps
    assert tuple(s.name for s in steps) == (op,)
    x = _images()
    fn = jax.jit(lambda x, k: preprocess.augment(x, k, steps))
    a, b, c = fn(x, _keys(seed=1)), fn(x, _keys(seed=1)), fn(x, _keys(seed=2))
    assert a.shape == x.shape and a.dtype == jnp.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_new_ops_are_the_identity_at_zero_strength():
    x, keys = _images(), _keys()
    ip = preprocess
    run = lambda fn, *args: jax.jit(lambda x, k: fn(x, k, *args))(x, keys)
    np.testing.assert_array_equal(run(ip.random_affine, 0.0, 0.0, 0.0), x)
    np.testing.assert_array_equal(run(ip.random_affine, 0.0, 0.0, 0.0, 'nearest', 'nearest'), x)
    np.testing.assert_array_equal(run(ip.random_color_jitter), x)
    np.testing.assert_array_equal(run(ip.random_resized_crop, 16, (1.0, 1.0), (1.0, 1.0)), x)
    assert _pp('normalize').pixel_steps == ()
    np.testing.assert_array_equal(ip.augment(x, keys, ()), x)


def test_vflip_flips_rows_or_nothing():
    x, keys = _images(n=16), _keys(n=16)
    y = preprocess.random_vflip(x, keys)
    flipped = [not np.array_equal(y[i], x[i]) for i in range(16)]
    for i in range(16):
        np.testing.assert_array_equal(y[i], x[i, ::-1] if flipped[i] else x[i])
    assert 0 < sum(flipped) < 16


def test_affine_fill_modes_and_a_pure_shift():
    x, keys = _images(n=8), _keys(n=8)
    rotated = preprocess.random_affine(x, keys, 45.0, 0.0, 0.0, 'bilinear', 'constant')
    assert (np.asarray(rotated) == 0).any()  # corners read outside: black (torchvision)
    edge = preprocess.random_affine(x, keys, 45.0, 0.0, 0.0, 'nearest', 'nearest')
    assert not (np.asarray(edge) == 0).any()  # 'nearest' repeats the edge (Keras); no 0 pixel
    # A height shift of at most 1/16 of 16 rows, nearest interpolation: away from
    # the edge rows every image is the input moved by -1, 0 or 1 whole rows.
    shifted = preprocess.random_affine(x, keys, 0.0, 1 / 16, 0.0, 'nearest', 'nearest')
    for i in range(8):
        best = min((-1, 0, 1), key=lambda s: np.abs(np.asarray(shifted[i], int)
                                                    - np.roll(x[i], s, 0))[2:-2].sum())
        np.testing.assert_array_equal(shifted[i][2:-2], np.roll(x[i], best, 0)[2:-2])


def test_brightness_scales_every_pixel_of_an_image_alike():
    x = jnp.full((4, 8, 8, 3), 100, jnp.uint8)
    y = np.asarray(jax.jit(lambda x, k: preprocess.random_color_jitter(x, k, brightness=0.5))(
        x, _keys(n=4)))
    for img in y:
        assert len(np.unique(img)) == 1 and 50 <= img.flat[0] <= 150
    assert len(np.unique(y[:, 0, 0, 0])) > 1  # a different factor per image


def test_hue_conversion_matches_colorsys():
    rgb = np.random.default_rng(0).uniform(size=(50, 3)).astype(np.float32)
    hsv = np.asarray(preprocess._rgb_to_hsv(jnp.asarray(rgb)))
    want = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
    np.testing.assert_allclose(hsv, want, atol=1e-5)
    back = np.asarray(preprocess._hsv_to_rgb(jnp.asarray(hsv)))
    np.testing.assert_allclose(back, rgb, atol=1e-5)


def test_random_resized_crop_size_and_box():
    x, keys = _images(), _keys()
    rrc = jax.jit(lambda x, k: preprocess.random_resized_crop(x, k, 40))
    y = rrc(x, keys)
    assert y.shape == (6, 40, 40, 3)
    # A constant image stays constant whatever box is cut.
    flat = jnp.full((6, 16, 16, 3), 77, jnp.uint8)
    np.testing.assert_array_equal(rrc(flat, keys), np.full((6, 40, 40, 3), 77))
    # normalize() then leaves the crop's size alone (no second resize).
    assert preprocess.normalize(y, _norm(image_size=40)).shape == (6, 40, 40, 3)


def test_explicit_order_with_repeats_as_seed_002():
    twice = "flip_lr|crop(4)|flip_lr|affine(rotation=10.0, interpolation='nearest')|crop(4)"
    x = _images()
    y = jax.jit(lambda x, k: _augment(twice + '|normalize', x, k))(x, _keys())
    assert y.shape == x.shape
    # Two flips and two crops are not one: the repeats change the result.
    once = "affine(rotation=10.0, interpolation='nearest')|crop(4)|flip_lr|normalize"
    assert not np.array_equal(y, jax.jit(lambda x, k: _augment(once, x, k))(x, _keys()))


def test_a_spec_parses_into_steps_with_every_argument():
    steps = preprocess.parse("crop(4, 'reflect') | flip_lr|normalize|cutout(size=8)")
    assert [str(s) for s in steps] == ["crop(padding=4, mode='reflect')", "flip_lr(mode='random')",
                                       'normalize()', 'cutout(size=8)']
    assert steps[0]['padding'] == 4 and hash(steps) == hash(preprocess.parse(
        "crop(4, mode='reflect')|flip_lr('random')|normalize|cutout(8)"))
    rrc = _pp('random_resized_crop(scale=[0.5, 1])|normalize', image_size=24).steps[0]
    assert rrc['size'] == 24 and rrc['scale'] == (0.5, 1)  # size 0 = the data's image_size


@pytest.mark.parametrize('spec,match', [
    ('crop(4)|flip_lr', 'normalize exactly once'),
    ('crop(4)|blur|normalize', "unknown preprocessing op 'blur'"),
    ('crop(4, 2, 1)|normalize', 'crop takes'),
    ('crop(size=4)|normalize', 'crop takes'),
    ('crop(4)|normalize|flip_lr', 'flip_lr cannot come after normalize'),
    ('crop(4)|cutout(8)|normalize', 'normalize cannot come after cutout'),
    ('normalize|mixup(0.2)|cutout(8)', 'cutout cannot come after mixup'),
    ('normalize|mixup(0.2)|mixup(0.4)', 'mixup twice'),
    ('crop(x)|normalize', 'not an op'),
    ('crop(4)(2)|normalize', 'not an op'),
    ("crop(4, 'wrap')|normalize", r"mode='wrap'; choose from \['constant', 'reflect'\]"),
    ('color_jitter(hue=0.6)|normalize', 'hue=0.6 must be in'),
    ('random_resized_crop(scale=(0.5, 1.5))|normalize', 'scale'),
    ("affine(fill='wrap')|normalize", 'fill'),
    ('affine(rotation=-1.0)|normalize', 'rotation=-1.0 must be >= 0'),
    ('normalize|cutout(0)', 'size=0 must be > 0'),
])
def test_bad_specs_get_one_clear_message(spec, match):
    with pytest.raises(preprocess.SpecError, match=match):
        _pp(spec)
    with pytest.raises(config_validation.ConfigError, match='config.data.train_pp: '):
        config_validation.validate(tiny_config(**{'data.train_pp': spec}))


def test_eval_and_predict_specs_take_deterministic_ops_only():
    error = config_validation.ConfigError
    with pytest.raises(error, match=r"config.data.eval_pp: .*\['flip_lr'\]"):
        config_validation.validate(tiny_config(**{'data.eval_pp': 'flip_lr|normalize'}))
    with pytest.raises(config_validation.ConfigError, match='config.predict.pp: .*crop'):
        config_validation.validate(tiny_config(**{'predict.pp': 'crop(4)|normalize'}))
    config = tiny_config()
    spec_of = lambda split: preprocess.Preprocess.from_config(config, split)  # noqa: E731
    assert spec_of('predict') == spec_of('eval')
    x = _images()
    np.testing.assert_array_equal(
        preprocess.eval_images(x, spec_of('eval')),
        preprocess.normalize(x, preprocess.Normalization.from_config(config)))


@pytest.mark.parametrize('overrides,match', [
    ({'data.standardize': 'scalar'}, 'scalar'),
    ({'data.standardize': 'pixel'}, 'standardize'),
])
def test_bad_normalization_settings_get_one_clear_message(overrides, match):
    with pytest.raises(config_validation.ConfigError, match=match):
        config_validation.validate(tiny_config(**overrides))


def test_a_new_op_registers_and_composes():
    """How to add an op: a pure function of (images, keys, its arguments)."""
    @preprocess.register_op('invert_for_test', whole_pixels=True)
    def invert(images, keys):
        return 255 - images
    try:
        x = _images()
        np.testing.assert_array_equal(_augment('invert_for_test|normalize', x, _keys()), 255 - x)
        with pytest.raises(ValueError, match='registered twice'):
            preprocess.register_op('invert_for_test')(invert)
    finally:
        del preprocess.OPS['invert_for_test']


def test_standardize_modes():
    x = _images()
    per_channel = preprocess.normalize(x, _norm())
    np.testing.assert_allclose(per_channel, (np.asarray(x) / 255 - 0.5) / 0.25, atol=1e-5)
    scalar = preprocess.Normalization(mean=(0.4,), std=(0.2,), standardize='scalar')
    np.testing.assert_allclose(preprocess.normalize(x, scalar),
                               (np.asarray(x) / 255 - 0.4) / 0.2, atol=1e-5)
    image = np.asarray(preprocess.normalize(x, _norm(standardize='image')))
    np.testing.assert_allclose(image.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(image.std(axis=(1, 2, 3)), 1, atol=1e-4)
    constant = preprocess.normalize(jnp.full((1, 4, 4, 3), 9, jnp.uint8),
                                    _norm(standardize='image'))
    assert np.isfinite(np.asarray(constant)).all()


def test_alternating_flip_mirrors_each_image_every_other_epoch():
    key = jax.random.key(3)
    ids = jnp.arange(1000)
    even, odd, next_even = (preprocess.alternate_flips(key, ids, jnp.int32(e))
                            for e in (4, 5, 6))
    np.testing.assert_array_equal(odd, ~even)
    np.testing.assert_array_equal(next_even, even)
    assert 400 < int(even.sum()) < 600  # a random half
    images = _images(n=4)
    flips = jnp.asarray([True, False, True, False])
    out = _augment("flip_lr('alternate')|normalize", images, _keys(4), flips)
    np.testing.assert_array_equal(out[0], images[0, :, ::-1])
    np.testing.assert_array_equal(out[1], images[1])


def test_cutout_zeroes_one_clipped_square_per_normalised_image():
    images = jnp.ones((256, 8, 8, 3))
    keys = jax.random.split(jax.random.key(0), 256)
    out = np.asarray(preprocess.random_cutout(images, keys, 4))
    zero = (out == 0).all(-1)  # every channel of a pixel together
    assert ((out == 0) | (out == 1)).all() and (zero == (out == 0).any(-1)).all()
    for mask in zero:
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        # One axis-aligned rectangle of at most 4 x 4, filled.
        assert mask.sum() == len(rows) * len(cols) and 1 <= len(rows) <= 4 >= len(cols) >= 1
        assert np.ptp(rows) == len(rows) - 1 and np.ptp(cols) == len(cols) - 1
    sizes = zero.reshape(256, -1).sum(1)
    assert (sizes == 16).mean() > 0.2 and (sizes < 16).any()  # clipped at the borders too
    # The centre is uniform over the image: every pixel gets covered by some square.
    assert zero.any(0).all()


def _ones_and_zeros(n=128, size=8):
    """Even examples all ones (label 1), odd all zeros (label 0): each example's
    partner (the one before it) is of the other kind."""
    images = jnp.asarray(np.arange(n) % 2 == 0, jnp.float32)[:, None, None, None]
    return jnp.broadcast_to(images, (n, size, size, 3)), jnp.asarray(np.arange(n) % 2 == 0,
                                                                      jnp.int32)


def test_mixup_blends_images_and_labels_with_one_weight():
    images, labels = _ones_and_zeros()
    keys = jax.random.split(jax.random.key(0), 128)
    out = preprocess.mix_with_partner(images, labels, keys, mixup=0.4, cutmix=0.0)
    lam = np.asarray(out['mix_weight'])
    np.testing.assert_array_equal(out['mixed_label'], np.roll(labels, 1))
    # An even example (ones) mixed with a zero image is lam everywhere; an odd one 1 - lam.
    want = np.where(np.asarray(labels) == 1, lam, 1 - lam)
    np.testing.assert_allclose(out['image'], np.broadcast_to(want[:, None, None, None],
                                                             images.shape), atol=1e-6)
    assert 0 <= lam.min() and lam.max() <= 1 and lam.std() > 0.2  # Beta(0.4, 0.4): U-shaped


def test_cutmix_pastes_a_box_whose_area_sets_the_label_weight():
    images, labels = _ones_and_zeros()
    keys = jax.random.split(jax.random.key(1), 128)
    out = preprocess.mix_with_partner(images, labels, keys, mixup=0.0, cutmix=1.0)
    own = np.asarray(out['image'] == images).all(-1)  # pixels that are still the example's
    np.testing.assert_allclose(own.reshape(128, -1).mean(1), out['mix_weight'], atol=1e-6)
    for mask in ~own:  # the pasted pixels form one rectangle
        if mask.any():
            rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
            assert mask.sum() == len(rows) * len(cols)
    assert (np.asarray(out['mix_weight']) < 1).mean() > 0.5


def test_mixed_batch_loss_weights_both_labels():
    from jaxres import evaluate
    logits = jax.random.normal(jax.random.key(0), (6, 4))
    labels, partner = jnp.asarray([0, 1, 2, 3, 0, 1]), jnp.asarray([1, 2, 3, 0, 1, 2])
    weight = jnp.asarray([1.0, 0.0, 0.5, 0.25, 0.9, 0.1])
    batch = {'image': None, 'label': labels, 'mixed_label': partner, 'mix_weight': weight}
    ce = lambda y: evaluate.cross_entropy(logits, y, 0.1)
    want = jnp.mean(weight * ce(labels) + (1 - weight) * ce(partner))
    np.testing.assert_allclose(batch_loss(logits, batch, 0.1), want, rtol=1e-6)
    # The loss is the cross-entropy against the mixed (soft) target.
    soft = weight[:, None] * jax.nn.one_hot(labels, 4) + (1 - weight[:, None]) * jax.nn.one_hot(
        partner, 4)
    np.testing.assert_allclose(batch_loss(logits, batch),
                               jnp.mean(-(soft * jax.nn.log_softmax(logits)).sum(-1)), rtol=1e-5)


# --------------------------------------------------------------------------- #
# Every config's batches are those of the pipeline before the specs.
# --------------------------------------------------------------------------- #
SPEC_OF_OLD_SETTINGS = {  # the variants recorded with the old data.* settings
    'default+mixup': 'crop(4)|flip_lr|normalize|mixup(0.2)',
    'default+cutmix': 'crop(4)|flip_lr|normalize|cutmix(1.0)',
    'default+both': 'crop(4)|flip_lr|normalize|cutout(3)|mixup(0.4)|cutmix(1.0)',
    'default+crop_affine': 'affine(rotation=20.0)|crop(1)|flip_lr|normalize',
    'default+flipfirst': 'flip_lr|crop(4)|normalize',
}
with open(os.path.join(ROOT, 'tests', 'first_batches.json')) as f:
    RECORDED = json.load(f)['batches']


def _digest(batch):
    h = hashlib.sha256()
    for k in sorted(batch):
        h.update(k.encode())
        h.update(np.asarray(batch[k]).tobytes())
    return h.hexdigest()[:16]


def test_configs_keep_their_exact_batches():
    """Bitwise the batches recorded before the specs (tests/first_batches.json), on the
    packed (CPU) and uint8 (GPU/TPU) paths.  The two RandomResizedCrop configs are
    left out: their resize is a matmul, whose rounding may differ between CPUs.  The
    packed path's normalisation rounds as the CPU's vector unit does: its batch is
    the recorded one (an AVX-512 CPU) or, bit for bit, the uint8 path's (seen on an
    AVX2-only AMD EPYC).

    Computed in a process that compiles as a training run does: the suite's own
    unoptimised compiling (``conftest.xla_flags``) rounds the normalisation
    differently."""
    code = ('import json, test_preprocess as t; '
            'print(json.dumps({n: t.batch_digests(n) for n in t.RECORDED}))')
    out = subprocess.run([sys.executable, '-c', code], cwd=os.path.join(ROOT, 'tests'),
                         env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1'),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert {n: got[n] for n in RECORDED if got[n]['uint8'] != RECORDED[n]['uint8']} == {}
    assert {n: got[n] for n in RECORDED
            if got[n]['packed'] not in (RECORDED[n]['packed'], got[n]['uint8'])} == {}


def batch_digests(name: str) -> dict[str, str]:
    """The digest of a config's first batch on the packed and uint8 paths."""
    base = name.split('+')[0]
    overrides = ([f'--config.data.train_pp={SPEC_OF_OLD_SETTINGS[name]}']
                 if name in SPEC_OF_OLD_SETTINGS else [])
    config = main.load_config(os.path.join(ROOT, 'configs', base + '.py'), overrides)
    if not tuple(config.data.mean):
        config.data.mean, config.data.std = (0.5,) * 3, (0.25,) * 3
    pipeline = preprocess.Preprocess.from_config(config)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (64, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, 64)
    ds = datasets.ImageDataset.from_arrays(x, y, x[:16], y[:16])
    mesh = sharding.make_data_mesh(jax.devices()[:1])
    order = resident.epoch_order(jax.random.key(3), 1, 64, 2, 32)
    got = {}
    for path, packed in (('packed', True), ('uint8', False)):
        data = resident.to_device(ds, mesh, 8, pipeline, packed=packed)
        got[path] = _digest(jax.jit(lambda d, o: resident.train_batch(
            d, o, jnp.int32(1), jnp.int32(1), jax.random.key(3), pipeline))(data, order))
    return got


@pytest.mark.parametrize('size', [24, 64, 224])
def test_resize_is_jax_image_resize_with_a_free_batch(size):
    """normalize's resize (two constant matrices, so an exported program's batch may
    stay symbolic) computes jax.image.resize's antialiased bilinear resize."""
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (2, 32, 40, 3)), jnp.float32)
    want = jax.image.resize(x, (2, size, size, 3), 'bilinear')
    np.testing.assert_allclose(preprocess.resize_bilinear(x, size), want, atol=5e-6)
    exported = jax.export.export(jax.jit(lambda im: preprocess.resize_bilinear(im, size)))(
        jax.ShapeDtypeStruct(jax.export.symbolic_shape('B, 32, 40, 3'), jnp.float32))
    np.testing.assert_allclose(exported.call(x[:1]), want[:1], atol=5e-6)
