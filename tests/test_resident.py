"""Device input pipeline: deterministic order, stored pixel words, the planner's batches
equal to the uint8 pipeline's on any device count, masked eval padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxres import sharding
from jaxres.cpu import pixels
from jaxres.data import preprocess, resident

from conftest import random_dataset


def _pp(spec, **normalization):
    """A training pipeline of ``spec`` with mean 0.5 / std 0.25."""
    return preprocess.Preprocess.from_spec(
        spec, preprocess.Normalization((0.5,) * 3, (0.25,) * 3, **normalization))


def _images(n=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(1, 256, (n, size, size, 3)), jnp.uint8)


def test_epoch_order_is_a_seeded_permutation_per_epoch():
    key = jax.random.key(0)
    a = resident.epoch_order(key, 0, 100, 3, 32)
    b = resident.epoch_order(key, 0, 100, 3, 32)
    c = resident.epoch_order(key, 1, 100, 3, 32)
    assert a.shape == (3, 32)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(np.asarray(a))) == 96  # no repeats; remainder dropped
    assert not np.array_equal(a, c)


def test_eval_padding_counts_every_example_once():
    images = np.zeros((10_000, 2, 2, 1), np.uint8)
    labels = np.arange(10_000) % 7
    bx, by, mask = resident.pad_eval_batches(images, labels, 48)
    assert bx.shape[:2] == (209, 48) and mask.sum() == 10_000
    np.testing.assert_array_equal(by.reshape(-1)[mask.reshape(-1)], labels)


def _batches_on_1_and_8_devices(ds, pipeline):
    """The step-1 training batch built on a 1-device mesh and on the 8-device mesh."""
    outs = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_data_mesh(devices)
        data = resident.to_device(ds, mesh, 8, pipeline)
        order = resident.epoch_order(jax.random.key(1), 0, 64, 2, 32)
        fn = jax.jit(lambda d, o, s, mesh=mesh: resident.train_batch(
            d, o, s, 0, jax.random.key(1), pipeline,
            batch_sharding=sharding.batch_sharded(mesh)))
        outs.append(jax.device_get(fn(data, order, jnp.int32(1))))
    return outs


def test_train_batch_does_not_depend_on_device_count():
    ds = random_dataset(n_train=64)
    outs = _batches_on_1_and_8_devices(ds, _pp('crop(2)|flip_lr|normalize'))
    assert len(jax.devices()) == 8
    np.testing.assert_array_equal(outs[0]['image'], outs[1]['image'])
    np.testing.assert_array_equal(outs[0]['label'], outs[1]['label'])


def test_all_ops_in_train_batch_do_not_depend_on_device_count():
    ds = random_dataset(n_train=64)
    # The ops that read other pixels (colour jitter is per pixel, left out for speed).
    pipeline = _pp('random_resized_crop|affine(rotation=20.0, width_shift=0.1)|crop(1)|flip_lr'
                   '|flip_ud|normalize', image_size=12)
    outs = _batches_on_1_and_8_devices(ds, pipeline)
    assert outs[0]['image'].shape == (32, 12, 12, 3)
    np.testing.assert_array_equal(outs[0]['image'], outs[1]['image'])


def test_alternating_flip_in_train_batch_does_not_depend_on_device_count():
    ds = random_dataset(n_train=64)
    outs = _batches_on_1_and_8_devices(ds, _pp("crop(2, 'reflect')|flip_lr('alternate')|normalize"))
    np.testing.assert_array_equal(outs[0]['image'], outs[1]['image'])


# --------------------------------------------------------------------------- #
# Stored pixel words: the crop as a gather of rows.
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('mode', ['constant', 'reflect'])
def test_gathered_windows_are_the_padded_copys_windows(mode):
    x = np.asarray(_images(n=5, size=7))
    pad = 3
    words = jnp.asarray(pixels.pack_pixels(x, pad, mode))
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode)
    idx = jnp.asarray([4, 0, 4, 2])
    offsets = jnp.asarray([[0, 0], [6, 6], [3, 3], [1, 5]])
    got = pixels.unpack_pixels(
        resident.gather_windows(words, idx, offsets, pad, mode), 3)
    for out, i, (dy, dx) in zip(np.asarray(got), np.asarray(idx), np.asarray(offsets)):
        np.testing.assert_array_equal(out, padded[i, dy:dy + 7, dx:dx + 7])
    np.testing.assert_array_equal(got[2], x[4])  # offset (pad, pad): the image itself


def _reference_batch(ds, pipeline, step):
    """The batch as the uint8 pipeline builds it: gather, ``augment``, normalise."""
    order = resident.epoch_order(jax.random.key(1), 0, 64, 2, 32)
    idx = order[step]
    epoch_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(1), 1), 0)
    keys = jax.vmap(lambda p: jax.random.fold_in(epoch_key, p))(step * 32 + jnp.arange(32))
    flips = (preprocess.alternate_flips(jax.random.key(1), idx, jnp.int32(0))
             if pipeline.alternate_flips else None)
    images = preprocess.augment(jnp.asarray(ds.train_images)[idx], keys, pipeline.pixel_steps,
                                flips)
    return preprocess.normalize(images, pipeline.normalization)


@pytest.mark.parametrize('spec', [
    'crop(2)|flip_lr|normalize',
    "crop(3, 'reflect')|flip_lr('alternate')|normalize",
    'crop(2)|flip_lr|flip_ud|normalize',
    'flip_lr|crop(2)|normalize',
    'affine(rotation=20.0)|crop(1)|normalize',
    'flip_lr|normalize',
], ids=['crop-flip', 'reflect-alternate', 'vflip', 'flip-first', 'affine-crop', 'no-crop'])
def test_train_batch_equals_the_uint8_pipeline(spec):
    """Stored padded for this crop, unpadded, padded for another, or as uint8 images
    (GPU/TPU: ``packed=False``), the batch is the uint8 pipeline's."""
    ds = random_dataset(n_train=64)
    pipeline = _pp(spec)
    mesh = sharding.make_data_mesh(jax.devices()[:1])
    order = resident.epoch_order(jax.random.key(1), 0, 64, 2, 32)
    want = _reference_batch(ds, pipeline, 1)
    other = _pp("crop(4, 'reflect')|normalize")  # data stored for another crop
    for data in (resident.to_device(ds, mesh, 8, pipeline),
                 resident.to_device(ds, mesh, 8),
                 resident.to_device(ds, mesh, 8, other),
                 resident.to_device(ds, mesh, 8, pipeline, packed=False)):
        got = jax.jit(lambda d, o: resident.train_batch(
            d, o, jnp.int32(1), 0, jax.random.key(1), pipeline))(data, order)
        np.testing.assert_allclose(got['image'], want, rtol=0, atol=1e-6)
    crop = resident.leading_crop(pipeline)
    assert (resident.to_device(ds, mesh, 8, pipeline).train_padding
            == (crop['padding'] if spec.startswith('crop') else 0))


def test_evaluation_only_data_leave_the_training_set_on_the_host():
    ds = random_dataset(n_train=64)
    mesh = sharding.make_data_mesh()
    full = resident.to_device(ds, mesh, 8)
    eval_only = resident.to_device(ds, mesh, 8, with_train=False)
    assert eval_only.train_pixels.shape == (0, 8, 8) and eval_only.train_labels.shape == (0,)
    for name in ('eval_images', 'eval_labels', 'eval_mask'):
        np.testing.assert_array_equal(getattr(eval_only, name), getattr(full, name))


