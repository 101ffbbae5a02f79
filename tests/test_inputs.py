"""inputs: the batches that evaluation and prediction read, padded to the devices
and masked, every example once."""

import jax
import numpy as np

from jaxres import sharding
from jaxres.data import inputs

from conftest import tiny_config


def test_array_batches_pad_to_the_devices_and_mask_the_padding():
    mesh = sharding.make_data_mesh()  # the suite's 8 devices
    images = np.random.default_rng(0).integers(0, 256, (13, 8, 8, 3), dtype=np.uint8)
    batches = list(inputs.array_batches(images, mesh, batch_size=4))  # 4 -> 8 (devices)
    assert [b['image'].shape for b in batches] == [(8, 8, 8, 3)] * 2
    assert all(b['image'].sharding.is_equivalent_to(sharding.batch_sharded(mesh), 4)
               for b in batches)
    mask = np.concatenate([np.asarray(b['mask']) for b in batches])
    assert mask.tolist() == [True] * 13 + [False] * 3
    got = np.concatenate([np.asarray(b['image']) for b in batches])[:13]
    np.testing.assert_array_equal(got, images)


def test_eval_batches_read_the_eval_split_once_with_its_classes():
    config = tiny_config(dataset='synthetic', eval_batch_size=24,
                         **{'synthetic.num_train': 64, 'synthetic.num_eval': 50,
                            'synthetic.image_size': 8, 'synthetic.num_classes': 4})
    mesh = sharding.make_data_mesh()
    batches, class_names, shape, split = inputs.eval_batches(config, mesh)
    batches = list(batches)
    assert len(class_names) == 4 and shape == (8, 8, 3) and split == 'test'
    assert sum(int(np.sum(jax.device_get(b['mask']))) for b in batches) == 50
    assert {b['image'].shape[0] for b in batches} == {24}
