"""Turn local CIFAR archives or image folders into a TFDS dataset, offline.

    python -m jaxres.prepare_data --source PATH --data_dir DIR [--name NAME]

PATH may be
  * the official CIFAR-10/100 archives, python or binary format, as ``.tar.gz``
    or extracted (``cifar-10-batches-py/``, ``cifar-10-batches-bin/``,
    ``cifar-100-python/``, ``cifar-100-binary/``);
  * an image-folder tree ``train/<class>/*.{jpg,png}`` and ``test/<class>/*``,
    as a directory or a ``.tar.gz`` (e.g. ../shared/data/cifar10-jpeg.tar.gz).

The result is a normal TFDS dataset in DIR: ``tfds.builder(NAME, data_dir=DIR)``
reads it with no network, so ``--config.dataset=NAME --config.data_dir=DIR``
trains on it.  NAME defaults to ``cifar10``/``cifar100`` for the official
archives (written with TFDS's own features and version, so the registered
builders read them) and to the archive or folder name for image folders.
Pickled archives are read with a restricted unpickler that executes no code.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import re
import sys
import tarfile
from typing import Callable, Iterator

import numpy as np

from jaxres import safe_io

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


class DataPreparationError(ValueError):
    """A source that cannot be turned into a dataset; the message says why."""


@dataclasses.dataclass
class Split:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    coarse_labels: np.ndarray | None = None
    ids: list[str] | None = None


@dataclasses.dataclass
class LocalDataset:
    name: str
    class_names: list[str]
    splits: dict[str, Split]
    coarse_class_names: list[str] | None = None


# --------------------------------------------------------------------------- #
# A read-only view of a directory or a tar archive (nothing is extracted).
# --------------------------------------------------------------------------- #
def _list_files(source: str) -> dict[str, Callable[[], bytes]]:
    """Maps relative paths to readers for every regular file in ``source``."""
    if os.path.isdir(source):
        files = {}
        for root, _, names in os.walk(source):
            for n in names:
                full = os.path.join(root, n)
                files[os.path.relpath(full, source).replace(os.sep, '/')] = (
                    lambda full=full: open(full, 'rb').read())
        return files
    if os.path.isfile(source) and tarfile.is_tarfile(source):
        # Read members into memory: CIFAR archives are small, and reading by
        # name (never extracting) cannot write outside the data dir.
        files = {}
        with tarfile.open(source) as tar:
            for m in tar:
                if m.isfile():
                    data = tar.extractfile(m).read()
                    files[m.name.lstrip('./')] = lambda data=data: data
        return files
    if not os.path.exists(source):
        raise DataPreparationError(f'--source {source!r} does not exist.')
    raise DataPreparationError(
        f'--source {source!r} is neither a directory nor a tar archive (.tar, .tar.gz).')


def _find(files: dict, pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return sorted(p for p in files if rx.search(p))


# --------------------------------------------------------------------------- #
# Readers for each source layout
# --------------------------------------------------------------------------- #
def _chw_rows_to_hwc(rows: np.ndarray) -> np.ndarray:
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def read_cifar_python(files: dict) -> LocalDataset | None:
    """Official 'python version' archives (pickled batches)."""
    c10 = _find(files, r'(^|/)data_batch_\d$')
    c100 = _find(files, r'(^|/)cifar-100-python/(train|test)$')
    if c10:
        test = _find(files, r'(^|/)test_batch$')
        meta = safe_io.safe_unpickle(files[_find(files, r'(^|/)batches\.meta$')[0]]())
        names = [n.decode() if isinstance(n, bytes) else n for n in meta['label_names']]

        def load(paths):
            batches = [safe_io.safe_unpickle(files[p]()) for p in paths]
            return Split(_chw_rows_to_hwc(np.concatenate([b['data'] for b in batches])),
                         np.concatenate([np.asarray(b['labels']) for b in batches]))

        return LocalDataset('cifar10', names, {'train': load(c10), 'test': load(test)})
    if c100:
        meta = safe_io.safe_unpickle(files[_find(files, r'(^|/)meta$')[0]]())
        fine = [n.decode() if isinstance(n, bytes) else n for n in meta['fine_label_names']]
        coarse = [n.decode() if isinstance(n, bytes) else n for n in meta['coarse_label_names']]
        splits = {}
        for p in c100:
            b = safe_io.safe_unpickle(files[p]())
            splits[p.rsplit('/', 1)[-1]] = Split(_chw_rows_to_hwc(b['data']),
                                                 np.asarray(b['fine_labels']),
                                                 np.asarray(b['coarse_labels']))
        return LocalDataset('cifar100', fine, splits, coarse)
    return None


def read_cifar_binary(files: dict) -> LocalDataset | None:
    """Official binary archives: records of label byte(s) + 3072 pixel bytes."""
    c10 = _find(files, r'(^|/)data_batch_\d\.bin$')
    c100 = _find(files, r'(^|/)(train|test)\.bin$')

    def names_from(pattern):
        return [l for l in files[_find(files, pattern)[0]]().decode().splitlines() if l.strip()]

    def load(paths, label_bytes):
        raw = np.concatenate([np.frombuffer(files[p](), np.uint8) for p in paths])
        rec = raw.reshape(-1, label_bytes + 3072)
        split = Split(_chw_rows_to_hwc(rec[:, label_bytes:]), rec[:, label_bytes - 1].astype(np.int64))
        if label_bytes == 2:
            split.coarse_labels = rec[:, 0].astype(np.int64)
        return split

    if c10:
        test = _find(files, r'(^|/)test_batch\.bin$')
        return LocalDataset('cifar10', names_from(r'batches\.meta\.txt$'),
                            {'train': load(c10, 1), 'test': load(test, 1)})
    if c100:
        splits = {p.rsplit('/', 1)[-1][:-4]: load([p], 2) for p in c100}
        return LocalDataset('cifar100', names_from(r'fine_label_names\.txt$'), splits,
                            names_from(r'coarse_label_names\.txt$'))
    return None


def read_image_folder(files: dict, default_name: str) -> LocalDataset | None:
    """``<split>/<class>/<image>`` trees (any top-level prefix directory)."""
    from PIL import Image  # pylint: disable=g-import-not-at-top

    rx = re.compile(r'(?:^|/)(train|test|validation)/([^/]+)/([^/]+)$')
    by_split: dict[str, dict[str, list[str]]] = {}
    for p in sorted(files):
        m = rx.search(p)
        if m and p.lower().endswith(IMAGE_SUFFIXES):
            by_split.setdefault(m.group(1), {}).setdefault(m.group(2), []).append(p)
    if not by_split:
        return None
    if 'train' not in by_split:
        raise DataPreparationError('image folder has no train/<class>/ images.')
    class_names = sorted(by_split['train'])
    for split, classes in by_split.items():
        if sorted(classes) != class_names:
            missing = sorted(set(class_names) - set(classes))
            extra = sorted(set(classes) - set(class_names))
            raise DataPreparationError(
                f'split {split!r} has different classes from train: missing {missing}, '
                f'extra {extra}. Every split needs the same <class> folders.')
    splits = {}
    shape = None
    for split, classes in by_split.items():
        images, labels, ids = [], [], []
        for label, cls in enumerate(class_names):
            for p in classes[cls]:
                try:
                    with Image.open(io.BytesIO(files[p]())) as im:
                        arr = np.asarray(im.convert('RGB'), np.uint8)
                except Exception as e:  # PIL raises many types for bad files
                    raise DataPreparationError(
                        f'cannot decode image {p!r}: {e}. Remove or replace the file.') from None
                if shape is None:
                    shape = arr.shape
                elif arr.shape != shape:
                    raise DataPreparationError(
                        f'image {p!r} has shape {arr.shape}, others have {shape}: '
                        'resize the images to one size first.')
                images.append(arr)
                labels.append(label)
                ids.append(p)
        splits[split] = Split(np.stack(images), np.asarray(labels, np.int64), ids=ids)
    return LocalDataset(default_name, class_names, splits)


def read_source(source: str) -> LocalDataset:
    """Reads any supported layout; raises DataPreparationError otherwise."""
    files = _list_files(source)
    base = os.path.basename(os.path.normpath(source))
    for suffix in ('.tar.gz', '.tgz', '.tar'):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    default_name = re.sub(r'[^a-z0-9_]', '_', base.lower()).strip('_') or 'image_folder'
    for reader in (read_cifar_python, read_cifar_binary):
        ds = reader(files)
        if ds is not None:
            return ds
    ds = read_image_folder(files, default_name)
    if ds is None:
        raise DataPreparationError(
            f'found no CIFAR batches and no train/<class>/<image> folders in {source!r}.')
    for split, s in ds.splits.items():
        if len(s.labels) == 0:
            raise DataPreparationError(f'split {split!r} is empty.')
    return ds


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #
def _examples(split_name: str, split: Split, with_coarse: bool) -> Iterator[tuple[str, dict]]:
    for i in range(len(split.labels)):
        ex = {'id': split.ids[i] if split.ids else f'{split_name}_{i:05d}',
              'image': split.images[i], 'label': int(split.labels[i])}
        if with_coarse:
            ex['coarse_label'] = int(split.coarse_labels[i])
        yield f'{split_name}_{i:06d}', ex


def write_tfds(ds: LocalDataset, data_dir: str, name: str | None = None) -> str:
    """Writes ``ds`` as TFDS dataset ``name`` in ``data_dir``; returns the name."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    name = name or ds.name
    if not re.fullmatch(r'[a-z][a-z0-9_]*', name):
        raise DataPreparationError(
            f'--name {name!r} is not a valid TFDS name (lower case letters, digits, _).')
    h, w, c = ds.splits['train'].images.shape[1:]
    features = {'id': tfds.features.Text(),
                'image': tfds.features.Image(shape=(h, w, c)),
                'label': tfds.features.ClassLabel(names=ds.class_names)}
    version = '1.0.0'
    with_coarse = False
    if name in tfds.list_builders():
        # Same name as a registered dataset: write its exact features and version
        # so that TFDS's own builder reads the files.
        registered = tfds.builder_cls(name)
        version = str(registered.VERSION)
        expected = set(registered().info.features.keys()) if name in ('cifar10', 'cifar100') else None
        if expected is None:
            raise DataPreparationError(
                f'--name {name!r} is a TFDS catalogue dataset; pick another name.')
        with_coarse = 'coarse_label' in expected
        if with_coarse and ds.coarse_class_names is None:
            raise DataPreparationError(
                f'{name} needs coarse labels, which this source lacks: pass another --name.')
        if with_coarse:
            features['coarse_label'] = tfds.features.ClassLabel(names=ds.coarse_class_names)
        if len(ds.class_names) != registered().info.features['label'].num_classes:
            raise DataPreparationError(
                f'{name} has {registered().info.features["label"].num_classes} classes, the '
                f'source has {len(ds.class_names)}: pass another --name.')
    os.makedirs(data_dir, exist_ok=True)
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version=version, features=tfds.features.FeaturesDict(features),
        split_datasets={k: list(_examples(k, s, with_coarse)) for k, s in ds.splits.items()},
        data_dir=data_dir, file_format='tfrecord', disable_shuffling=True)
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--source', required=True, help='archive or folder to read')
    parser.add_argument('--data_dir', required=True, help='TFDS data dir to write into')
    parser.add_argument('--name', default=None, help='dataset name (default: from the source)')
    args = parser.parse_args(argv)
    try:
        ds = read_source(args.source)
        name = write_tfds(ds, args.data_dir, args.name)
    except DataPreparationError as e:
        print(f'prepare_data: error: {e}', file=sys.stderr)
        return 2
    counts = ', '.join(f'{k}: {len(s.labels)}' for k, s in ds.splits.items())
    print(f'Wrote TFDS dataset {name!r} to {args.data_dir} ({counts}; '
          f'{len(ds.class_names)} classes).\nTrain on it with: '
          f'--config.dataset={name} --config.data_dir={args.data_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
