"""Device input pipeline: deterministic order and augmentation, masked eval padding."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxres import input_pipeline, sharding

from conftest import random_dataset


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


def test_eval_padding_counts_every_example_once():
    images = np.zeros((10_000, 2, 2, 1), np.uint8)
    labels = np.arange(10_000) % 7
    bx, by, mask = input_pipeline.pad_eval_batches(images, labels, 48)
    assert bx.shape[:2] == (209, 48) and mask.sum() == 10_000
    np.testing.assert_array_equal(by.reshape(-1)[mask.reshape(-1)], labels)


def test_train_batch_does_not_depend_on_device_count():
    ds = random_dataset(n_train=64)
    aug = input_pipeline.Augmentation(mean=(0.5,) * 3, std=(0.25,) * 3, crop_padding=2,
                                      hflip=True)
    outs = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_data_mesh(devices)
        data = input_pipeline.to_device(ds, mesh, 8)
        order = input_pipeline.epoch_order(jax.random.key(1), 0, 64, 2, 32)
        fn = jax.jit(lambda d, o, s: input_pipeline.train_batch(
            d, o, s, 0, jax.random.key(1), aug, batch_sharding=sharding.batch_sharded(mesh)))
        outs.append(jax.device_get(fn(data, order, jnp.int32(1))))
    assert len(jax.devices()) == 8
    np.testing.assert_array_equal(outs[0]['image'], outs[1]['image'])
    np.testing.assert_array_equal(outs[0]['label'], outs[1]['label'])
