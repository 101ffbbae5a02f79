"""Real CIFAR-10 JPEGs from ../shared/data (skipped when that folder is absent)."""

import os

import numpy as np
import pytest

from jaxres.data import prepare

from conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not os.path.exists(SHARED_DATA),
                                reason='../shared/data/cifar10-jpeg.tar.gz not present')


def test_shared_cifar10_jpeg_archive_reads_as_an_image_folder():
    files = prepare._list_files(SHARED_DATA)
    # Decode a slice of it: the layout, the classes and the pixels are real.
    subset = {p: r for p, r in files.items() if p.rsplit('/', 1)[-1] in ('0000.jpg', '0001.jpg')}
    ds = prepare.list_image_folder(subset, 'cifar10_jpeg')
    assert ds.class_names == ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                              'horse', 'ship', 'truck']
    check = prepare.check_images(ds, workers=1)
    assert len(check.shapes) == 40 and check.image_shape() == (32, 32, 3)
    assert not check.reencode  # plain RGB JPEGs are stored as they are
    assert 0.3 < np.mean(check.mean_std()[0]) < 0.7
    assert sum(1 for p in files if p.startswith('train/') or '/train/' in p) == 50_000
