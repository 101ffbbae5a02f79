"""Device input pipeline: deterministic order and augmentation, masked eval padding."""

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxres import config_validation, input_pipeline, sharding

from conftest import random_dataset, tiny_config


def test_epoch_order_is_a_seeded_permutation_per_epoch():
    key = jax.random.key(0)
    a = input_pipeline.epoch_order(key, 0, 100, 3, 32)
    b = input_pipeline.epoch_order(key, 0, 100, 3, 32)
    c = input_pipeline.epoch_order(key, 1, 100, 3, 32)
    assert a.shape == (3, 32)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(np.asarray(a))) == 96  # no repeats; remainder dropped
    assert not np.array_equal(a, c)


def test_crop_and_flip():
    x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.uint8).reshape(2, 4, 4, 1)
    keys = jax.random.split(jax.random.key(0), 2)
    np.testing.assert_array_equal(input_pipeline.random_crop(x, keys, 0, 'constant'), x)
    cropped = input_pipeline.random_crop(x, keys, 2, 'reflect')
    assert cropped.shape == x.shape
    flipped = input_pipeline.random_hflip(x, keys)
    for i in range(2):
        assert (np.array_equal(flipped[i], x[i]) or np.array_equal(flipped[i], x[i, :, ::-1]))


@pytest.mark.parametrize('mode', ['constant', 'reflect'])
def test_crop_is_pad_then_slice_at_the_drawn_offset(mode):
    """The crop takes exactly the pixels of a padded copy's window."""
    x = jax.random.randint(jax.random.key(3), (6, 5, 7, 3), 0, 256).astype(jnp.uint8)
    keys = jax.random.split(jax.random.key(4), 6)
    got = input_pipeline.random_crop(x, keys, 3, mode)
    padded = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)), mode)
    for img, pad_img, key in zip(got, padded, keys):
        dy, dx = jax.random.randint(key, (2,), 0, 7)
        np.testing.assert_array_equal(img, pad_img[dy:dy + 5, dx:dx + 7])


def test_eval_padding_counts_every_example_once():
    images = np.zeros((10_000, 2, 2, 1), np.uint8)
    labels = np.arange(10_000) % 7
    bx, by, mask = input_pipeline.pad_eval_batches(images, labels, 48)
    assert bx.shape[:2] == (209, 48) and mask.sum() == 10_000
    np.testing.assert_array_equal(by.reshape(-1)[mask.reshape(-1)], labels)


def _batches_on_1_and_8_devices(ds, augmentation):
    """The step-1 training batch built on a 1-device mesh and on the 8-device mesh."""
    outs = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_data_mesh(devices)
        data = input_pipeline.to_device(ds, mesh, 8, augmentation)
        order = input_pipeline.epoch_order(jax.random.key(1), 0, 64, 2, 32)
        fn = jax.jit(lambda d, o, s, mesh=mesh: input_pipeline.train_batch(
            d, o, s, 0, jax.random.key(1), augmentation,
            batch_sharding=sharding.batch_sharded(mesh)))
        outs.append(jax.device_get(fn(data, order, jnp.int32(1))))
    return outs


def test_train_batch_does_not_depend_on_device_count():
    ds = random_dataset(n_train=64)
    augmentation = input_pipeline.Augmentation(mean=(0.5,) * 3, std=(0.25,) * 3, crop_padding=2,
                                      hflip=True)
    outs = _batches_on_1_and_8_devices(ds, augmentation)
    assert len(jax.devices()) == 8
    np.testing.assert_array_equal(outs[0]['image'], outs[1]['image'])
    np.testing.assert_array_equal(outs[0]['label'], outs[1]['label'])


# --------------------------------------------------------------------------- #
# The seed augmentations (rotation/shift, flips, colour jitter, resized crop,
# standardisation): shapes, determinism, identity at zero strength.
# --------------------------------------------------------------------------- #


def _images(n=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(1, 256, (n, size, size, 3)), jnp.uint8)


def _keys(n=6, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def _augmentation(**kw):
    return input_pipeline.Augmentation(mean=(0.5,) * 3, std=(0.25,) * 3, **kw)


def test_default_augment_draws_the_same_crop_and_flip_as_before():
    """Only crop + flip configured: the exact batches of earlier jaxres versions."""
    x, keys = _images(), _keys()
    crop_keys, flip_keys = jax.vmap(lambda k: jax.random.split(k, 2), out_axes=1)(keys)
    want = input_pipeline.random_hflip(
        input_pipeline.random_crop(x, crop_keys, 4, 'reflect'), flip_keys)
    got = input_pipeline.augment(x, keys, _augmentation(crop_padding=4, padding_mode='reflect',
                                                        hflip=True))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('op,kw', [
    ('affine', dict(rotation=30.0, width_shift=0.1, height_shift=0.1)),
    ('affine', dict(rotation=10.0, interpolation='nearest', fill='nearest')),
    ('color_jitter', dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)),
    ('random_resized_crop', dict(random_resized_crop=True)),
    ('vflip', dict(vflip=True)),
])
def test_new_ops_are_deterministic_per_key_and_keep_shape(op, kw):
    augmentation = _augmentation(**kw)
    assert augmentation.ops() == (op,)
    x = _images()
    fn = jax.jit(lambda x, k: input_pipeline.augment(x, k, augmentation))
    a, b, c = fn(x, _keys(seed=1)), fn(x, _keys(seed=1)), fn(x, _keys(seed=2))
    assert a.shape == x.shape and a.dtype == jnp.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_new_ops_are_the_identity_at_zero_strength():
    x, keys = _images(), _keys()
    ip = input_pipeline
    run = lambda fn, *args: jax.jit(lambda x, k: fn(x, k, *args))(x, keys)
    np.testing.assert_array_equal(run(ip.random_affine, 0.0, 0.0, 0.0), x)
    np.testing.assert_array_equal(run(ip.random_affine, 0.0, 0.0, 0.0, 'nearest', 'nearest'), x)
    np.testing.assert_array_equal(run(ip.random_color_jitter), x)
    np.testing.assert_array_equal(run(ip.random_resized_crop, 16, (1.0, 1.0), (1.0, 1.0)), x)
    assert _augmentation().ops() == ()
    np.testing.assert_array_equal(ip.augment(x, keys, _augmentation()), x)


def test_vflip_flips_rows_or_nothing():
    x, keys = _images(n=16), _keys(n=16)
    y = input_pipeline.random_vflip(x, keys)
    flipped = [not np.array_equal(y[i], x[i]) for i in range(16)]
    for i in range(16):
        np.testing.assert_array_equal(y[i], x[i, ::-1] if flipped[i] else x[i])
    assert 0 < sum(flipped) < 16


def test_affine_fill_modes_and_a_pure_shift():
    x, keys = _images(n=8), _keys(n=8)
    rotated = input_pipeline.random_affine(x, keys, 45.0, 0.0, 0.0, 'bilinear', 'constant')
    assert (np.asarray(rotated) == 0).any()  # corners read outside: black (torchvision)
    edge = input_pipeline.random_affine(x, keys, 45.0, 0.0, 0.0, 'nearest', 'nearest')
    assert not (np.asarray(edge) == 0).any()  # 'nearest' repeats the edge (Keras); no 0 pixel
    # A height shift of at most 1/16 of 16 rows, nearest interpolation: away from
    # the edge rows every image is the input moved by -1, 0 or 1 whole rows.
    shifted = input_pipeline.random_affine(x, keys, 0.0, 1 / 16, 0.0, 'nearest', 'nearest')
    for i in range(8):
        best = min((-1, 0, 1), key=lambda s: np.abs(np.asarray(shifted[i], int)
                                                    - np.roll(x[i], s, 0))[2:-2].sum())
        np.testing.assert_array_equal(shifted[i][2:-2], np.roll(x[i], best, 0)[2:-2])


def test_brightness_scales_every_pixel_of_an_image_alike():
    x = jnp.full((4, 8, 8, 3), 100, jnp.uint8)
    y = np.asarray(jax.jit(lambda x, k: input_pipeline.random_color_jitter(x, k, brightness=0.5))(
        x, _keys(n=4)))
    for img in y:
        assert len(np.unique(img)) == 1 and 50 <= img.flat[0] <= 150
    assert len(np.unique(y[:, 0, 0, 0])) > 1  # a different factor per image


def test_hue_conversion_matches_colorsys():
    rgb = np.random.default_rng(0).uniform(size=(50, 3)).astype(np.float32)
    hsv = np.asarray(input_pipeline._rgb_to_hsv(jnp.asarray(rgb)))
    want = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
    np.testing.assert_allclose(hsv, want, atol=1e-5)
    back = np.asarray(input_pipeline._hsv_to_rgb(jnp.asarray(hsv)))
    np.testing.assert_allclose(back, rgb, atol=1e-5)


def test_random_resized_crop_size_and_box():
    x, keys = _images(), _keys()
    rrc = jax.jit(lambda x, k: input_pipeline.random_resized_crop(x, k, 40))
    y = rrc(x, keys)
    assert y.shape == (6, 40, 40, 3)
    # A constant image stays constant whatever box is cut.
    flat = jnp.full((6, 16, 16, 3), 77, jnp.uint8)
    np.testing.assert_array_equal(rrc(flat, keys), np.full((6, 40, 40, 3), 77))
    # normalize() then leaves the crop's size alone (no second resize).
    assert input_pipeline.normalize(y, _augmentation(image_size=40)).shape == (6, 40, 40, 3)


def test_explicit_order_with_repeats_as_seed_002():
    augmentation = _augmentation(rotation=10.0, interpolation='nearest', crop_padding=4, hflip=True,
               order=('hflip', 'crop', 'hflip', 'affine', 'crop'))
    x = _images()
    y = jax.jit(lambda x, k: input_pipeline.augment(x, k, augmentation))(x, _keys())
    assert y.shape == x.shape
    # Two flips and two crops are not one: the repeats change the result.
    once = _augmentation(rotation=10.0, interpolation='nearest', crop_padding=4, hflip=True)
    assert not np.array_equal(y, jax.jit(lambda x, k: input_pipeline.augment(x, k, once))(
        x, _keys()))


def test_augment_order_must_match_the_enabled_ops():
    with pytest.raises(config_validation.ConfigError, match='augment_order'):
        config_validation.validate(tiny_config(**{'data.augment_order': ('crop',)}))  # hflip on
    with pytest.raises(config_validation.ConfigError, match='unknown ops'):
        config_validation.validate(tiny_config(**{'data.augment_order': ('crop', 'mixup')}))
    config_validation.validate(tiny_config(**{'data.augment_order': ('hflip', 'crop', 'hflip')}))


@pytest.mark.parametrize('overrides,match', [
    ({'data.hue': 0.6}, 'hue'),
    ({'data.crop_scale': (0.5, 1.5)}, 'crop_scale'),
    ({'data.standardize': 'scalar'}, 'scalar'),
    ({'data.standardize': 'pixel'}, 'standardize'),
    ({'data.fill': 'wrap'}, 'fill'),
    ({'data.rotation': -1.0}, 'rotation'),
])
def test_bad_augmentation_settings_get_one_clear_message(overrides, match):
    with pytest.raises(config_validation.ConfigError, match=match):
        config_validation.validate(tiny_config(**overrides))


def test_standardize_modes():
    x = _images()
    per_channel = input_pipeline.normalize(x, _augmentation())
    np.testing.assert_allclose(per_channel, (np.asarray(x) / 255 - 0.5) / 0.25, atol=1e-5)
    scalar = input_pipeline.Augmentation(mean=(0.4,), std=(0.2,), standardize='scalar')
    np.testing.assert_allclose(input_pipeline.normalize(x, scalar),
                               (np.asarray(x) / 255 - 0.4) / 0.2, atol=1e-5)
    image = np.asarray(input_pipeline.normalize(x, _augmentation(standardize='image')))
    np.testing.assert_allclose(image.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(image.std(axis=(1, 2, 3)), 1, atol=1e-4)
    constant = input_pipeline.normalize(jnp.full((1, 4, 4, 3), 9, jnp.uint8),
                                        _augmentation(standardize='image'))
    assert np.isfinite(np.asarray(constant)).all()


def test_all_ops_in_train_batch_do_not_depend_on_device_count():
    ds = random_dataset(n_train=64)
    # The ops that read other pixels (colour jitter is per pixel, left out for speed).
    augmentation = _augmentation(crop_padding=1, hflip=True, vflip=True, rotation=20.0,
                                 width_shift=0.1, random_resized_crop=True, image_size=12)
    outs = _batches_on_1_and_8_devices(ds, augmentation)
    assert outs[0]['image'].shape == (32, 12, 12, 3)
    np.testing.assert_array_equal(outs[0]['image'], outs[1]['image'])


def test_alternating_flip_mirrors_each_image_every_other_epoch():
    key = jax.random.key(3)
    ids = jnp.arange(1000)
    even, odd, next_even = (input_pipeline.alternate_flips(key, ids, jnp.int32(e))
                            for e in (4, 5, 6))
    np.testing.assert_array_equal(odd, ~even)
    np.testing.assert_array_equal(next_even, even)
    assert 400 < int(even.sum()) < 600  # a random half
    images = _images(n=4)
    flips = jnp.asarray([True, False, True, False])
    out = input_pipeline.augment(images, _keys(4),
                                 _augmentation(hflip=True, flip_mode='alternate'), flips)
    np.testing.assert_array_equal(out[0], images[0, :, ::-1])
    np.testing.assert_array_equal(out[1], images[1])


def test_alternating_flip_in_train_batch_does_not_depend_on_device_count():
    ds = random_dataset(n_train=64)
    augmentation = input_pipeline.Augmentation(mean=(0.5,) * 3, std=(0.25,) * 3, crop_padding=2,
                                      padding_mode='reflect', hflip=True, flip_mode='alternate')
    outs = _batches_on_1_and_8_devices(ds, augmentation)
    np.testing.assert_array_equal(outs[0]['image'], outs[1]['image'])


# --------------------------------------------------------------------------- #
# Stored pixel words: the crop as a gather of rows.
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('channels', [1, 2, 3, 4])
def test_pixel_words_round_trip(channels):
    x = np.random.default_rng(channels).integers(0, 256, (3, 5, 5, channels), np.uint8)
    words = input_pipeline.pack_pixels(x, padding=2)
    assert words.shape == (3, 5, 9) and words.dtype.itemsize == {1: 1, 2: 2}.get(channels, 4)
    np.testing.assert_array_equal(input_pipeline.unpack_pixels(jnp.asarray(words), channels)[:, :, 2:7], x)
    np.testing.assert_array_equal(words[:, :, :2], 0)


def test_more_than_four_channels_are_refused():
    with pytest.raises(ValueError, match='5 channels'):
        input_pipeline.pack_pixels(np.zeros((1, 2, 2, 5), np.uint8))


@pytest.mark.parametrize('mode', ['constant', 'reflect'])
def test_gathered_windows_are_the_padded_copys_windows(mode):
    x = np.asarray(_images(n=5, size=7))
    pad = 3
    words = jnp.asarray(input_pipeline.pack_pixels(x, pad, mode))
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode)
    idx = jnp.asarray([4, 0, 4, 2])
    offsets = jnp.asarray([[0, 0], [6, 6], [3, 3], [1, 5]])
    got = input_pipeline.unpack_pixels(
        input_pipeline.gather_windows(words, idx, offsets, pad, mode), 3)
    for out, i, (dy, dx) in zip(np.asarray(got), np.asarray(idx), np.asarray(offsets)):
        np.testing.assert_array_equal(out, padded[i, dy:dy + 7, dx:dx + 7])
    np.testing.assert_array_equal(got[2], x[4])  # offset (pad, pad): the image itself


def _reference_batch(ds, augmentation, step):
    """The batch as the uint8 pipeline builds it: gather, ``augment``, normalise."""
    order = input_pipeline.epoch_order(jax.random.key(1), 0, 64, 2, 32)
    idx = order[step]
    epoch_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(1), 1), 0)
    keys = jax.vmap(lambda p: jax.random.fold_in(epoch_key, p))(step * 32 + jnp.arange(32))
    flips = (input_pipeline.alternate_flips(jax.random.key(1), idx, jnp.int32(0))
             if augmentation.flip_mode == 'alternate' else None)
    images = input_pipeline.augment(jnp.asarray(ds.train_images)[idx], keys, augmentation, flips)
    return input_pipeline.normalize(images, augmentation)


@pytest.mark.parametrize('kw', [
    dict(crop_padding=2, hflip=True),
    dict(crop_padding=3, padding_mode='reflect', hflip=True, flip_mode='alternate'),
    dict(crop_padding=2, hflip=True, vflip=True),
    dict(crop_padding=2, hflip=True, order=('hflip', 'crop')),
    dict(crop_padding=1, rotation=20.0),
    dict(hflip=True),
], ids=['crop-flip', 'reflect-alternate', 'vflip', 'flip-first', 'crop-affine', 'no-crop'])
def test_train_batch_equals_the_uint8_pipeline(kw):
    """Stored padded for this crop, unpadded, padded for another, or as uint8 images
    (GPU/TPU: ``packed=False``), the batch is the uint8 pipeline's."""
    ds = random_dataset(n_train=64)
    augmentation = _augmentation(**kw)
    mesh = sharding.make_data_mesh(jax.devices()[:1])
    order = input_pipeline.epoch_order(jax.random.key(1), 0, 64, 2, 32)
    want = _reference_batch(ds, augmentation, 1)
    other = _augmentation(crop_padding=4, padding_mode='reflect')  # data stored for another crop
    for data in (input_pipeline.to_device(ds, mesh, 8, augmentation),
                 input_pipeline.to_device(ds, mesh, 8),
                 input_pipeline.to_device(ds, mesh, 8, other),
                 input_pipeline.to_device(ds, mesh, 8, augmentation, packed=False)):
        got = jax.jit(lambda d, o: input_pipeline.train_batch(
            d, o, jnp.int32(1), 0, jax.random.key(1), augmentation))(data, order)
        np.testing.assert_allclose(got['image'], want, rtol=0, atol=1e-6)
    assert (input_pipeline.to_device(ds, mesh, 8, augmentation).train_padding
            == (augmentation.crop_padding if augmentation.ops()[:1] == ('crop',) else 0))


def test_evaluation_only_data_leave_the_training_set_on_the_host():
    ds = random_dataset(n_train=64)
    mesh = sharding.make_data_mesh()
    full = input_pipeline.to_device(ds, mesh, 8)
    eval_only = input_pipeline.to_device(ds, mesh, 8, with_train=False)
    assert eval_only.train_pixels.shape == (0, 8, 8) and eval_only.train_labels.shape == (0,)
    for name in ('eval_images', 'eval_labels', 'eval_mask'):
        np.testing.assert_array_equal(getattr(eval_only, name), getattr(full, name))


def test_cutout_zeroes_one_clipped_square_per_normalised_image():
    images = jnp.ones((256, 8, 8, 3))
    keys = jax.random.split(jax.random.key(0), 256)
    out = np.asarray(input_pipeline.random_cutout(images, keys, 4))
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
    out = input_pipeline.mix_with_partner(images, labels, keys, mixup=0.4, cutmix=0.0)
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
    out = input_pipeline.mix_with_partner(images, labels, keys, mixup=0.0, cutmix=1.0)
    own = np.asarray(out['image'] == images).all(-1)  # pixels that are still the example's
    np.testing.assert_allclose(own.reshape(128, -1).mean(1), out['mix_weight'], atol=1e-6)
    for mask in ~own:  # the pasted pixels form one rectangle
        if mask.any():
            rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
            assert mask.sum() == len(rows) * len(cols)
    assert (np.asarray(out['mix_weight']) < 1).mean() > 0.5


def test_mixed_batch_loss_weights_both_labels():
    from jaxres import evaluate, train
    logits = jax.random.normal(jax.random.key(0), (6, 4))
    labels, partner = jnp.asarray([0, 1, 2, 3, 0, 1]), jnp.asarray([1, 2, 3, 0, 1, 2])
    weight = jnp.asarray([1.0, 0.0, 0.5, 0.25, 0.9, 0.1])
    batch = {'image': None, 'label': labels, 'mixed_label': partner, 'mix_weight': weight}
    ce = lambda y: evaluate.cross_entropy(logits, y, 0.1)
    want = jnp.mean(weight * ce(labels) + (1 - weight) * ce(partner))
    np.testing.assert_allclose(train.batch_loss(logits, batch, 0.1), want, rtol=1e-6)
    # The loss is the cross-entropy against the mixed (soft) target.
    soft = weight[:, None] * jax.nn.one_hot(labels, 4) + (1 - weight[:, None]) * jax.nn.one_hot(
        partner, 4)
    np.testing.assert_allclose(train.batch_loss(logits, batch),
                               jnp.mean(-(soft * jax.nn.log_softmax(logits)).sum(-1)), rtol=1e-5)
