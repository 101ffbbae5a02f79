"""Host-side data: validation hold-out, class-balanced training subset, in-memory arrays."""

import io

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from jaxres import config_validation
from jaxres.data import datasets, prepare


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


def test_spread_sample_holds_every_class_of_a_class_sorted_split():
    labels = np.repeat(np.arange(10), 5000)  # the prepared JPEG CIFAR-10's stored order
    picked = datasets.spread_sample(len(labels), 5000)
    assert len(np.unique(picked)) == 5000 and np.all(np.diff(picked) > 0)
    np.testing.assert_array_equal(np.bincount(labels[picked]), [500] * 10)
    np.testing.assert_array_equal(picked[:3], [0, 10, 20])
    np.testing.assert_array_equal(datasets.spread_sample(7, 3), [0, 2, 4])
    np.testing.assert_array_equal(datasets.spread_sample(5, 100), np.arange(5))  # all of them
    assert datasets.spread_sample(5, 0).size == 0


def test_class_balanced_subset_takes_the_first_examples_of_each_class_in_order():
    y = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2, 2, 0])  # shuffled, as the official CIFAR files
    x = np.arange(len(y), dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    ds = datasets.ImageDataset.from_arrays(x, y, x[:2], y[:2])
    sub = ds.class_balanced_subset(6)
    # Two of each class, the first two each time, kept in stored order.
    np.testing.assert_array_equal(sub.train_images[:, 0, 0, 0], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(np.bincount(sub.train_labels), [2, 2, 2])
    np.testing.assert_array_equal(sub.eval_images, ds.eval_images)  # the eval split is whole
    np.testing.assert_array_equal(ds.class_balanced_subset(6).train_images, sub.train_images)
    with pytest.raises(datasets.DataError, match='multiple of the 3 classes.*e.g. 9'):
        ds.class_balanced_subset(7)
    with pytest.raises(datasets.DataError, match=r"needs 4 training examples per class; '1' \(3\)"):
        ds.class_balanced_subset(12)
    test = datasets.ImageDataset.from_arrays(x[:3], y[:3], x, y).class_balanced_subset(3, 'eval')
    np.testing.assert_array_equal(test.eval_images[:, 0, 0, 0], [0, 1, 2])
    np.testing.assert_array_equal(test.train_images, x[:3])  # the training split is whole


def test_train_subset_config_key_applies_after_the_validation_hold_out():
    config = tiny_config(dataset='synthetic', train_subset=100, validation_size=40)
    config_validation.validate(config)
    full = datasets.load_dataset(tiny_config(dataset='synthetic', validation_size=40))
    ds = datasets.load_dataset(config)
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [10] * 10)
    np.testing.assert_array_equal(ds.eval_images, full.eval_images)  # validation untouched
    assert datasets.load_dataset(tiny_config(dataset='synthetic')).train_labels.size == 2048
    with pytest.raises(config_validation.ConfigError, match='train_subset=95 must be a multiple '
                       "of the 10 classes of 'synthetic'.*e.g. 100"):
        config_validation.validate(tiny_config(dataset='synthetic', train_subset=95))
    with pytest.raises(config_validation.ConfigError, match='train_subset=-10 must be >= 0'):
        config_validation.validate(tiny_config(dataset='synthetic', train_subset=-10))


def test_streaming_input_refuses_a_train_subset():
    """Streaming reads the stored split whole: a subset would be silently ignored."""
    config = tiny_config(dataset='cifar10', train_subset=1000)
    info = datasets.DataInfo('cifar10', 50000, 10000, tuple('0123456789'), (32, 32, 3))
    with pytest.raises(datasets.DataError, match='train_subset > 0 .*--config.input.kind=resident'):
        datasets.open_sources(config, info)


def test_a_streamed_validation_hold_out_is_the_resident_one(tmp_path):
    """validation_size on an ArrayRecord data set: the streaming sources hold out the
    examples the resident input holds out, in the same order; 'end' is refused."""
    rng = np.random.default_rng(0)
    for split, per_class in (('train', 12), ('test', 2)):
        for cls in ('cat', 'dog', 'eel'):
            (tmp_path / 'pets' / split / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / 'pets' / split / cls / f'{i}.png')
    data_dir = str(tmp_path / 'tfds')
    assert prepare.main(['--source', str(tmp_path / 'pets'), '--data_dir', data_dir]) == 0
    config = tiny_config(dataset='pets', data_dir=data_dir, validation_size=10)
    info = datasets.describe(config)
    assert (info.num_train, info.num_eval) == (26, 10)
    train, held = datasets.open_sources(config, info)
    resident = datasets.load_dataset(config)
    for source, images, labels in ((train, resident.train_images, resident.train_labels),
                                   (held, resident.eval_images, resident.eval_labels)):
        assert len(source) == len(labels)
        assert [source[i]['label'] for i in range(len(source))] == labels.tolist()
        decoded = [np.asarray(Image.open(io.BytesIO(source[i]['image'])))
                   for i in range(len(source))]
        np.testing.assert_array_equal(np.stack(decoded), images)
    config.validation_from = 'end'
    with pytest.raises(datasets.DataError, match="validation_from='end' needs the labels"):
        datasets.open_sources(config, info)
