"""prepare_data: official CIFAR layouts and image folders become readable TFDS datasets."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxres.data import datasets, prepare

from conftest import SHARED_DATA, imagenet_tree, read_cifar_jpegs

needs_shared = pytest.mark.skipif(not os.path.exists(SHARED_DATA),
                                  reason='../shared/data/cifar10-jpeg.tar.gz not present')


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
    assert prepare.main(['--source', src, '--data_dir', data_dir]) == 0
    ds = datasets.load_tfds('cifar10', 'train', 'test', data_dir, download=False)
    assert ds.train_images.shape == (100, 32, 32, 3) and ds.eval_images.shape == (20, 32, 32, 3)
    assert ds.class_names[0] == 'airplane'
    first = pickle.loads(members['data_batch_1'])
    np.testing.assert_array_equal(ds.train_images[0],
                                  first[b'data'][0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert ds.train_labels[0] == first[b'labels'][0]
    builder = tfds.builder('cifar10', data_dir=data_dir)  # TFDS's registered builder
    assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    assert len(builder.as_data_source(split='test')) == 20
    pixels = ds.train_images.reshape(-1, 3) / 255
    np.testing.assert_allclose(builder.info.metadata['mean'], pixels.mean(0), atol=1e-6)
    np.testing.assert_allclose(builder.info.metadata['std'], pixels.std(0), atol=1e-6)


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
    ds = prepare.read_source(str(tmp_path))
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
    assert prepare.main(['--source', str(tmp_path / 'pets'), '--data_dir', data_dir]) == 0
    ds = datasets.load_tfds('pets', 'train', 'test', data_dir, download=False)
    assert ds.class_names == ('cat', 'dog') and ds.train_images.shape == (6, 8, 8, 3)


def test_image_folder_errors_name_the_cause(tmp_path, capsys):
    _image_folder(tmp_path / 'a')
    (tmp_path / 'a' / 'train' / 'cat' / 'broken.jpg').write_bytes(b'not a jpeg')
    assert prepare.main(['--source', str(tmp_path / 'a'), '--data_dir',
                         str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert 'broken.jpg' in err and err.count('error:') == 1
    assert not (tmp_path / 'out').exists()  # nothing half-written

    _image_folder(tmp_path / 'b', splits=('train',))
    _image_folder(tmp_path / 'b2', classes=('cat',), splits=('test',))
    os.rename(tmp_path / 'b2' / 'test', tmp_path / 'b' / 'test')
    with pytest.raises(prepare.DataPreparationError, match=r"missing \['dog'\]"):
        prepare.read_source(str(tmp_path / 'b'))


def test_missing_dataset_message_gives_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, '_online', lambda: False)
    with pytest.raises(datasets.DataError, match='python -m jaxres.prepare_data'):
        datasets.load_tfds('cifar10', 'train', 'test', str(tmp_path), download=True)


def test_failed_run_keeps_the_previous_copy(tmp_path, capsys):
    _image_folder(tmp_path / 'pets')
    data_dir = tmp_path / 'tfds'
    args = ['--source', str(tmp_path / 'pets'), '--data_dir', str(data_dir), '--workers', '2']
    assert prepare.main(args) == 0
    (tmp_path / 'pets' / 'test' / 'dog' / 'bad.png').write_bytes(b'\x89PNG truncated')
    assert prepare.main(args) == 2
    assert "'test/dog/bad.png'" in capsys.readouterr().err
    assert sorted(os.listdir(data_dir)) == ['pets']  # no temporary folder left behind
    ds = datasets.load_tfds('pets', 'train', 'test', str(data_dir), download=False)
    assert ds.eval_images.shape == (6, 8, 8, 3)
    (tmp_path / 'pets' / 'test' / 'dog' / 'bad.png').unlink()
    (tmp_path / 'pets' / 'test' / 'dog' / 'new.png').write_bytes(
        (tmp_path / 'pets' / 'test' / 'dog' / '0.png').read_bytes())
    assert prepare.main(args) == 0  # a complete copy is replaced on success
    ds = datasets.load_tfds('pets', 'train', 'test', str(data_dir), download=False)
    assert ds.eval_images.shape == (7, 8, 8, 3)


def test_grayscale_and_alpha_images_decode_as_stored(tmp_path):
    rng = np.random.default_rng(0)
    for split in ('train', 'test'):
        for cls in ('a', 'b'):
            (tmp_path / 'gray' / split / cls).mkdir(parents=True)
            (tmp_path / 'mixed' / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), 'L').save(
                    tmp_path / 'gray' / split / cls / f'{i}.png')
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / 'mixed' / split / cls / f'{i}.jpg')
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'mixed' / 'train' / 'a' / 'alpha.png')
    data_dir = str(tmp_path / 'tfds')
    for name in ('gray', 'mixed'):
        assert prepare.main(['--source', str(tmp_path / name), '--data_dir', data_dir,
                             '--workers', '1']) == 0
    gray = datasets.load_tfds('gray', 'train', 'test', data_dir, download=False)
    assert gray.train_images.shape == (4, 8, 8, 1)
    assert len(tfds.builder('gray', data_dir=data_dir).info.metadata['mean']) == 1
    np.testing.assert_allclose(tfds.builder('gray', data_dir=data_dir).info.metadata['std'],
                               [(gray.train_images / 255).std()], atol=1e-6)
    mixed = datasets.load_tfds('mixed', 'train', 'test', data_dir, download=False)
    assert mixed.train_images.shape == (5, 8, 8, 3)
    source = tfds.data_source('mixed', split='train', data_dir=data_dir)
    alpha = next(r for r in source if r['id'] == b'train/a/alpha.png' or r['id'] == 'train/a/alpha.png')
    np.testing.assert_array_equal(alpha['image'], np.asarray(Image.fromarray(rgba).convert('RGB')))


# --------------------------------------------------------------------------- #
# An ImageNet-style tree made of real JPEGs of several sizes
# --------------------------------------------------------------------------- #
@pytest.fixture(scope='module')
def cifar_jpegs():
    """{(split, class): [JPEG bytes]}: the first 4 train and 2 test files per class."""
    return read_cifar_jpegs(4, 2)


@needs_shared
def test_imagenet_style_tree_with_flat_val(tmp_path, cifar_jpegs):
    src = tmp_path / 'imagenet_mini'
    val_labels = imagenet_tree(src, cifar_jpegs)
    data_dir = str(tmp_path / 'tfds')
    assert prepare.main(['--source', str(src), '--data_dir', data_dir, '--val_labels',
                         str(src / 'LOC_val_solution.csv'), '--workers', '2']) == 0
    builder = tfds.builder('imagenet_mini', data_dir=data_dir)
    assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    assert builder.info.features['image'].shape == (None, None, 3)
    assert builder.info.splits['train'].num_examples == 40
    assert builder.info.splits['validation'].num_examples == 20
    classes = builder.info.features['label'].names
    # The JPEG bytes are stored as they are, not re-encoded.
    raw = tfds.data_source('imagenet_mini', split='validation', data_dir=data_dir,
                           decoders={'image': tfds.decode.SkipDecoding()})
    for r in raw:
        path = r['id'].decode() if isinstance(r['id'], bytes) else r['id']
        assert r['image'] == (src / path).read_bytes()
        assert classes[r['label']] == val_labels[path.split('/')[-1][:-5]]
    # Mean and std of the train split, as numpy computes them on the decoded images.
    pixels = np.concatenate([np.asarray(Image.open(p)).reshape(-1, 3)
                             for p in sorted((src / 'train').glob('*/*.JPEG'))]) / 255
    np.testing.assert_allclose(builder.info.metadata['mean'], pixels.mean(0), atol=1e-6)
    np.testing.assert_allclose(builder.info.metadata['std'], pixels.std(0), atol=1e-6)
    with pytest.raises(datasets.DataError, match='--config.input.kind=streaming'):
        datasets.load_tfds('imagenet_mini', 'train', 'validation', data_dir, download=False)


@needs_shared
def test_flat_val_labels_errors_name_the_file(tmp_path, cifar_jpegs):
    src = tmp_path / 'inet'
    val_labels = imagenet_tree(src, cifar_jpegs)
    with pytest.raises(prepare.DataPreparationError, match='pass --val_labels'):
        prepare.read_source(str(src))
    # FILENAME CLASS lines, with or without the extension, work as well.
    lines = [f'{stem}.JPEG {cls}' if i % 2 else f'{stem} {cls}'
             for i, (stem, cls) in enumerate(val_labels.items())]
    (tmp_path / 'val.txt').write_text('\n'.join(lines) + '\n')
    ds = prepare.read_source(str(src), str(tmp_path / 'val.txt'))
    assert len(ds.splits['validation']) == 20
    (tmp_path / 'missing.txt').write_text('\n'.join(lines[1:]))
    with pytest.raises(prepare.DataPreparationError,
                       match="'val/ILSVRC2012_val_00000001.JPEG' has no label"):
        prepare.read_source(str(src), str(tmp_path / 'missing.txt'))
    (tmp_path / 'unknown.txt').write_text('\n'.join(lines[:2] + ['ILSVRC2012_val_00000003 n0']
                                                    + lines[3:]))
    with pytest.raises(prepare.DataPreparationError,
                       match="'val/ILSVRC2012_val_00000003.JPEG' is labelled 'n0'"):
        prepare.read_source(str(src), str(tmp_path / 'unknown.txt'))
    (tmp_path / 'ILSVRC2012_validation_ground_truth.txt').write_text('490\n361\n171\n')
    with pytest.raises(prepare.DataPreparationError, match='LOC_val_solution.csv'):
        prepare.read_source(str(src), str(tmp_path / 'ILSVRC2012_validation_ground_truth.txt'))


@needs_shared
def test_cifar10_jpeg_folder_keeps_its_fixed_shape(tmp_path, cifar_jpegs):
    for (split, cls), images in cifar_jpegs.items():
        (tmp_path / 'c10' / split / cls).mkdir(parents=True)
        for i, data in enumerate(images):
            (tmp_path / 'c10' / split / cls / f'{i:04d}.jpg').write_bytes(data)
    data_dir = str(tmp_path / 'tfds')
    assert prepare.main(['--source', str(tmp_path / 'c10'), '--data_dir', data_dir]) == 0
    assert tfds.builder('c10', data_dir=data_dir).info.features['image'].shape == (32, 32, 3)
    ds = datasets.load_tfds('c10', 'train', 'test', data_dir, download=False)
    assert ds.train_images.shape == (40, 32, 32, 3) and ds.eval_images.shape == (20, 32, 32, 3)
    # The JPEG bytes are stored as they are (the files themselves come in 128 KiB blocks).
    raw = tfds.data_source('c10', split='train', data_dir=data_dir,
                           decoders={'image': tfds.decode.SkipDecoding()})
    assert sorted(r['image'] for r in raw) == sorted(
        d for (split, _), v in cifar_jpegs.items() if split == 'train' for d in v)
