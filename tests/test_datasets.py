"""Host-side data: validation hold-out, in-memory arrays."""

import numpy as np
import pytest

from jaxres import datasets


def _class_ordered(n_per_class=10, classes=3):
    y = np.repeat(np.arange(classes), n_per_class)  # stored class by class, like image folders
    x = np.arange(len(y), dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    return datasets.ImageDataset.from_arrays(x, y, x[:3], y[:3])


def test_random_validation_hold_out_is_fixed_disjoint_and_covers_classes():
    ds = _class_ordered()
    a, b = ds.split_validation(6), ds.split_validation(6)
    np.testing.assert_array_equal(a.eval_images, b.eval_images)  # same subset every run
    assert len(a.train_labels) == 24 and len(a.eval_labels) == 6
    held = set(a.eval_images[:, 0, 0, 0].tolist())
    assert held.isdisjoint(a.train_images[:, 0, 0, 0].tolist())
    assert set(a.train_labels.tolist()) == {0, 1, 2}


def test_end_hold_out_takes_the_last_examples_and_refuses_to_drop_a_class():
    ds = _class_ordered()
    end = ds.split_validation(5, 'end')
    np.testing.assert_array_equal(end.eval_images[:, 0, 0, 0], np.arange(25, 30))
    with pytest.raises(datasets.DataError, match=r"classes \['2'\] with no training example"):
        ds.split_validation(10, 'end')
