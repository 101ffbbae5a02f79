"""Real CIFAR-10 JPEGs from ../shared/data (skipped when that folder is absent)."""

import os

import numpy as np
import pytest

from jaxres import prepare_data

from conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not os.path.exists(SHARED_DATA),
                                reason='../shared/data/cifar10-jpeg.tar.gz not present')


def test_shared_cifar10_jpeg_archive_reads_as_an_image_folder():
    files = prepare_data._list_files(SHARED_DATA)
    # Decode a slice of it: the layout, the classes and the pixels are real.
    subset = {p: r for p, r in files.items() if p.rsplit('/', 1)[-1] in ('0000.jpg', '0001.jpg')}
    ds = prepare_data.read_image_folder(subset, 'cifar10_jpeg')
    assert ds.class_names == ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                              'horse', 'ship', 'truck']
    train = ds.splits['train']
    assert train.images.shape[1:] == (32, 32, 3) and train.images.dtype == np.uint8
    assert 0.3 < train.images.mean() / 255 < 0.7
    assert sum(1 for p in files if p.startswith('train/') or '/train/' in p) == 50_000
