"""prepare_data: official CIFAR layouts and image folders become readable TFDS datasets."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from jaxres import datasets, prepare_data, safe_io


def _cifar10_python_tar(path, n=20):
    rng = np.random.default_rng(0)
    members = {}
    for name in ['data_batch_%d' % i for i in range(1, 6)] + ['test_batch']:
        members[name] = pickle.dumps({b'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                      b'labels': list(rng.integers(0, 10, n))}, protocol=2)
    members['batches.meta'] = pickle.dumps(
        {b'label_names': [b'airplane', b'automobile', b'bird', b'cat', b'deer', b'dog',
                          b'frog', b'horse', b'ship', b'truck']}, protocol=2)
    with tarfile.open(path, 'w:gz') as tar:
        for name, data in members.items():
            info = tarfile.TarInfo('cifar-10-batches-py/' + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return members


def test_cifar10_python_archive_reads_back_through_tfds(tmp_path):
    src = str(tmp_path / 'cifar-10-python.tar.gz')
    members = _cifar10_python_tar(src)
    data_dir = str(tmp_path / 'tfds')
    assert prepare_data.main(['--source', src, '--data_dir', data_dir]) == 0
    ds = datasets.load_tfds('cifar10', 'train', 'test', data_dir, download=False)
    assert ds.train_images.shape == (100, 32, 32, 3) and ds.eval_images.shape == (20, 32, 32, 3)
    assert ds.class_names[0] == 'airplane'
    first = pickle.loads(members['data_batch_1'])
    np.testing.assert_array_equal(ds.train_images[0],
                                  first[b'data'][0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert ds.train_labels[0] == first[b'labels'][0]


def test_cifar100_binary_layout(tmp_path):
    root = tmp_path / 'cifar-100-binary'
    root.mkdir()
    rng = np.random.default_rng(1)
    for split, n in (('train', 30), ('test', 10)):
        rec = np.concatenate([rng.integers(0, 20, (n, 1)), rng.integers(0, 100, (n, 1)),
                              rng.integers(0, 256, (n, 3072))], 1).astype(np.uint8)
        (root / f'{split}.bin').write_bytes(rec.tobytes())
    (root / 'fine_label_names.txt').write_text('\n'.join(f'f{i}' for i in range(100)))
    (root / 'coarse_label_names.txt').write_text('\n'.join(f'c{i}' for i in range(20)))
    ds = prepare_data.read_source(str(tmp_path))
    assert ds.name == 'cifar100' and ds.splits['train'].images.shape == (30, 32, 32, 3)
    assert ds.splits['test'].coarse_labels is not None


def _image_folder(root, classes=('cat', 'dog'), per_class=3, splits=('train', 'test')):
    rng = np.random.default_rng(0)
    for split in splits:
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    d / f'{i}.png')


def test_image_folder_becomes_a_named_tfds_dataset(tmp_path):
    _image_folder(tmp_path / 'pets')
    data_dir = str(tmp_path / 'tfds')
    assert prepare_data.main(['--source', str(tmp_path / 'pets'), '--data_dir', data_dir]) == 0
    ds = datasets.load_tfds('pets', 'train', 'test', data_dir, download=False)
    assert ds.class_names == ('cat', 'dog') and ds.train_images.shape == (6, 8, 8, 3)


def test_image_folder_errors_name_the_cause(tmp_path, capsys):
    _image_folder(tmp_path / 'a')
    (tmp_path / 'a' / 'train' / 'cat' / 'broken.jpg').write_bytes(b'not a jpeg')
    assert prepare_data.main(['--source', str(tmp_path / 'a'), '--data_dir',
                              str(tmp_path / 'out')]) == 2
    assert 'broken.jpg' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()  # nothing half-written

    _image_folder(tmp_path / 'b', splits=('train',))
    _image_folder(tmp_path / 'b2', classes=('cat',), splits=('test',))
    os.rename(tmp_path / 'b2' / 'test', tmp_path / 'b' / 'test')
    with pytest.raises(prepare_data.DataPreparationError, match=r"missing \['dog'\]"):
        prepare_data.read_source(str(tmp_path / 'b'))


def test_safe_unpickle_refuses_code():
    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))

    with pytest.raises(safe_io.UnsafePickleError, match='posix.system|os.system'):
        safe_io.safe_unpickle(pickle.dumps(Evil()))
    ok = safe_io.safe_unpickle(pickle.dumps({b'data': np.arange(3, dtype=np.uint8)}))
    np.testing.assert_array_equal(ok['data'], [0, 1, 2])


def test_missing_dataset_message_gives_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, '_online', lambda: False)
    with pytest.raises(datasets.DataError, match='python -m jaxres.prepare_data'):
        datasets.load_tfds('cifar10', 'train', 'test', str(tmp_path), download=True)
