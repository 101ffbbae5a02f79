"""Turn local CIFAR archives or image folders into a TFDS dataset, offline.

    python -m jaxres.prepare_data --source PATH --data_dir DIR [--name NAME]
        [--val_labels FILE] [--workers N]

PATH may be
  * the official CIFAR-10/100 archives, python or binary format, as ``.tar.gz``
    or extracted (``cifar-10-batches-py/``, ``cifar-10-batches-bin/``,
    ``cifar-100-python/``, ``cifar-100-binary/``);
  * an image-folder tree ``train/<class>/*`` plus any of ``test/<class>/*``,
    ``validation/<class>/*`` or ``val/<class>/*`` (split ``validation``), as a
    directory or a tar archive (e.g. ../shared/data/cifar10-jpeg.tar.gz).  The
    ImageNet layout with a flat ``val/*.JPEG`` folder works too: pass
    ``--val_labels`` with Kaggle's ``LOC_val_solution.csv`` or a text file of
    ``FILENAME CLASS`` lines.

The result is a TFDS dataset in ArrayRecord format in DIR:
``tfds.builder(NAME, data_dir=DIR)`` reads it with no network, so
``--config.dataset=NAME --config.data_dir=DIR`` trains on it.  NAME defaults to
``cifar10``/``cifar100`` for the official archives (written with TFDS's own
features and version, so the registered builders read them) and to the archive
or folder name for image folders.

Image files are stored as they are (JPEG and PNG bytes are not re-encoded);
only images TFDS would decode wrongly (alpha, palette, CMYK, 16-bit, other
formats) are re-encoded as PNG.  Every image is decoded once, in parallel, as a
check; the per-channel mean and std of the train split (pixels in [0, 1]) go
into ``builder.info.metadata`` as ``{'mean': [...], 'std': [...]}``.  The data
set is written into a temporary folder beside the target and moved into place
only when complete.  Pickled archives are read with a restricted unpickler that
executes no code.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import io
import multiprocessing
import os
import re
import shutil
import sys
import tarfile
import tempfile
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from jaxres import safe_io
from jaxres.data import image_io
from jaxres.data.image_io import IMAGE_SUFFIXES


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
    """A data set held in memory as arrays (the official CIFAR archives)."""
    name: str
    class_names: list[str]
    splits: dict[str, Split]
    coarse_class_names: list[str] | None = None


@dataclasses.dataclass
class FolderDataset:
    """An image-folder data set: per split, (relative path, label) in write order."""
    name: str
    class_names: list[str]
    splits: dict[str, list[tuple[str, int]]]
    files: Mapping[str, Callable[[], bytes]]
    ignored: list[str] = dataclasses.field(default_factory=list)  # unlabelled test/ images


@dataclasses.dataclass
class ImageCheck:
    """What decoding every image of a FolderDataset found."""
    shapes: dict[str, tuple[int, int]]  # path -> (height, width)
    grayscale: bool  # every image is mode 'L'
    reencode: set[str]  # paths TFDS would not decode as they are
    train_histogram: np.ndarray  # int64 (3, 256): pixel-value counts per RGB channel

    def image_shape(self) -> tuple[int | None, int | None, int]:
        channels = 1 if self.grayscale else 3
        sizes = set(self.shapes.values())
        return (*sizes.pop(), channels) if len(sizes) == 1 else (None, None, channels)

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return image_io.stats_from_histogram(
            self.train_histogram[:1] if self.grayscale else self.train_histogram)


# --------------------------------------------------------------------------- #
# A read-only view of a directory or a tar archive (nothing is extracted).
# --------------------------------------------------------------------------- #
class _Files(dict):
    """Relative path -> reader of its bytes; ``root``/``tar_path`` say how to stream."""

    root: str | None = None
    tar_path: str | None = None


def _list_files(source: str) -> _Files:
    """Maps relative paths to lazy readers for every regular file in ``source``."""
    files = _Files()
    if os.path.isdir(source):
        files.root = source
        for root, _, names in os.walk(source):
            for n in names:
                full = os.path.join(root, n)
                files[os.path.relpath(full, source).replace(os.sep, '/')] = (
                    lambda full=full: _read(full))
        return files
    if os.path.isfile(source) and tarfile.is_tarfile(source):
        # Only member headers are read here; bytes are read on demand (CIFAR
        # batches) or streamed in archive order (images).  Reading by name, never
        # extracting, cannot write outside the data dir.
        files.tar_path = source
        tar = tarfile.open(source)
        for m in tar:
            if m.isfile():
                files[_member_name(m)] = lambda m=m: tar.extractfile(m).read()
        return files
    if not os.path.exists(source):
        raise DataPreparationError(f'--source {source!r} does not exist.')
    raise DataPreparationError(
        f'--source {source!r} is neither a directory nor a tar archive (.tar, .tar.gz).')


def _read(path: str) -> bytes:
    with open(path, 'rb') as f:
        return f.read()


def _member_name(m: tarfile.TarInfo) -> str:
    return m.name[2:] if m.name.startswith('./') else m.name.lstrip('/')


def _stream(files: Mapping[str, Callable[[], bytes]], paths: Iterable[str]
            ) -> Iterator[tuple[str, str | None, bytes | None]]:
    """Yields (path, file to read or None, bytes or None) for ``paths``, one at a time.

    Directory files are not read here (a worker reads them); tar members are
    streamed in archive order, since a compressed archive has no random access.
    """
    root = getattr(files, 'root', None)
    tar_path = getattr(files, 'tar_path', None)
    if tar_path:
        wanted = set(paths)
        with tarfile.open(tar_path, 'r|*') as tar:
            for m in tar:
                name = _member_name(m)
                if m.isfile() and name in wanted:
                    yield name, None, tar.extractfile(m).read()
    else:
        for p in paths:
            if root:
                yield p, os.path.join(root, p), None
            else:
                yield p, None, files[p]()


def _find(files: Mapping, pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return sorted(p for p in files if rx.search(p))


# --------------------------------------------------------------------------- #
# Readers for each source layout
# --------------------------------------------------------------------------- #
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
            return Split(image_io.rows_to_images(np.concatenate([b['data'] for b in batches]), 'data_batch'),
                         np.concatenate([np.asarray(b['labels']) for b in batches]))

        return LocalDataset('cifar10', names, {'train': load(c10), 'test': load(test)})
    if c100:
        meta = safe_io.safe_unpickle(files[_find(files, r'(^|/)meta$')[0]]())
        fine = [n.decode() if isinstance(n, bytes) else n for n in meta['fine_label_names']]
        coarse = [n.decode() if isinstance(n, bytes) else n for n in meta['coarse_label_names']]
        splits = {}
        for p in c100:
            b = safe_io.safe_unpickle(files[p]())
            splits[p.rsplit('/', 1)[-1]] = Split(image_io.rows_to_images(b['data'], p),
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
        split = Split(image_io.rows_to_images(rec[:, label_bytes:], 'binary batch'), rec[:, label_bytes - 1].astype(np.int64))
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


# Folder names of the splits of an image-folder tree, and the split they become.
_SPLIT_FOLDERS = {'train': 'train', 'test': 'test', 'validation': 'validation', 'val': 'validation'}


def _stem(filename: str) -> str:
    """'val/ILSVRC2012_val_00000001.JPEG' -> 'ILSVRC2012_val_00000001' (labels match on it)."""
    base = filename.rsplit('/', 1)[-1]
    return os.path.splitext(base)[0] if base.lower().endswith(IMAGE_SUFFIXES) else base


def read_val_labels(path: str) -> dict[str, str]:
    """Reads ``LOC_val_solution.csv`` or ``FILENAME CLASS`` lines: file stem -> class."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataPreparationError(f'cannot read --val_labels {path!r}: {e}.') from None
    lines = text.splitlines()
    labels = {}
    if lines and lines[0].replace(' ', '').startswith('ImageId,PredictionString'):
        # Kaggle's file: the first token of PredictionString is the wnid (class folder).
        for row in csv.DictReader(io.StringIO(text)):
            tokens = (row.get('PredictionString') or '').split()
            if not tokens:
                raise DataPreparationError(
                    f'--val_labels {path!r}: the row of {row["ImageId"]!r} has no class.')
            labels[_stem(row['ImageId'])] = tokens[0]
        return labels
    for n, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) == 1 and tokens[0].isdigit():
            raise DataPreparationError(
                f'--val_labels {path!r} holds bare class numbers (like the devkit\'s '
                'ILSVRC2012_validation_ground_truth.txt, which needs meta.mat to map them to '
                'folders): pass Kaggle\'s LOC_val_solution.csv or a file of "FILENAME CLASS" lines.')
        if len(tokens) != 2:
            raise DataPreparationError(
                f'--val_labels {path!r} line {n} is {line.strip()!r}; expected "FILENAME CLASS".')
        labels[_stem(tokens[0])] = tokens[1]
    return labels


def list_image_folder(files: Mapping[str, Callable[[], bytes]], default_name: str,
                      val_labels: str | None = None) -> FolderDataset | None:
    """Lists ``<split>/<class>/<image>`` trees (any prefix directory); reads no image.

    A flat ``val/<image>`` folder (ImageNet) takes its labels from ``val_labels``.
    """
    by_split: dict[str, dict[str, list[str]]] = {}
    folders: dict[str, set[str]] = {}
    flat_val: list[str] = []
    ignored: list[str] = []
    for p in sorted(files):
        if not p.lower().endswith(IMAGE_SUFFIXES):
            continue
        parts = p.split('/')
        if len(parts) >= 3 and parts[-3] in _SPLIT_FOLDERS:
            split = _SPLIT_FOLDERS[parts[-3]]
            folders.setdefault(split, set()).add('/'.join(parts[:-2]))
            by_split.setdefault(split, {}).setdefault(parts[-2], []).append(p)
        elif len(parts) >= 2 and parts[-2] in ('val', 'validation'):
            folders.setdefault('validation', set()).add('/'.join(parts[:-1]))
            flat_val.append(p)
        elif len(parts) >= 2 and parts[-2] == 'test':
            ignored.append(p)  # ImageNet's test images have no labels
    if not by_split and not flat_val:
        return None
    if 'train' not in by_split:
        raise DataPreparationError('image folder has no train/<class>/ images.')
    for split, where in folders.items():
        if len(where) > 1:
            raise DataPreparationError(
                f'split {split!r} is in several folders ({", ".join(sorted(where))}): keep one.')
    class_names = sorted(by_split['train'])
    for split, classes in by_split.items():
        if sorted(classes) != class_names:
            missing = sorted(set(class_names) - set(classes))
            extra = sorted(set(classes) - set(class_names))
            raise DataPreparationError(
                f'split {split!r} has different classes from train: missing {missing}, '
                f'extra {extra}. Every split needs the same <class> folders.')
    if flat_val and 'validation' in by_split:
        raise DataPreparationError(
            'the validation folder holds both images and <class> folders: use one layout.')
    if flat_val and val_labels is None:
        raise DataPreparationError(
            f'{os.path.dirname(flat_val[0])}/ holds images without <class> folders (ImageNet\'s '
            f'flat layout, e.g. {flat_val[0]!r}): pass --val_labels with LOC_val_solution.csv '
            'or a file of "FILENAME CLASS" lines.')
    if val_labels is not None and not flat_val:
        raise DataPreparationError(
            '--val_labels is only for a flat val/ folder of images, which this source lacks: '
            'drop --val_labels.')
    if flat_val:
        labels = read_val_labels(val_labels)
        known = set(class_names)
        by_split['validation'] = {}
        for p in flat_val:
            cls = labels.get(_stem(p))
            if cls is None:
                raise DataPreparationError(
                    f'val image {p!r} has no label in {val_labels!r}: every val image needs one.')
            if cls not in known:
                raise DataPreparationError(
                    f'val image {p!r} is labelled {cls!r} in {val_labels!r}, which is not a '
                    'train/<class> folder name.')
            by_split['validation'].setdefault(cls, []).append(p)
    splits = {}
    for split in sorted(by_split, key=list(_SPLIT_FOLDERS).index):
        splits[split] = [(p, label) for label, cls in enumerate(class_names)
                         for p in by_split[split].get(cls, [])]
    return FolderDataset(default_name, class_names, splits, files, ignored)


def read_source(source: str, val_labels: str | None = None) -> LocalDataset | FolderDataset:
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
            if val_labels is not None:
                raise DataPreparationError('--val_labels is for image folders, not CIFAR archives.')
            return ds
    ds = list_image_folder(files, default_name, val_labels)
    if ds is None:
        raise DataPreparationError(
            f'found no CIFAR batches and no train/<class>/<image> folders in {source!r}.')
    for split, s in ds.splits.items():
        if len(s) == 0:
            raise DataPreparationError(f'split {split!r} is empty.')
    return ds


# --------------------------------------------------------------------------- #
# Decoding every image once, in parallel
# --------------------------------------------------------------------------- #
def _check_chunk(chunk: list[tuple[str, str | None, bytes | None, bool]]
                 ) -> tuple[list[tuple[str, int, int, str, bool]], np.ndarray,
                            tuple[str, str] | None]:
    """Decodes a chunk of images (in a worker): per image (path, h, w, mode, re-encode?),
    the train pixel histogram of the chunk, and the first (path, error) if one fails."""
    from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top

    results, hist = [], np.zeros((3, 256), np.int64)
    for path, full, data, is_train in chunk:
        try:
            if data is None:
                data = _read(full)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                mode = im.mode
                # TFDS decodes JPEG/PNG in RGB or L exactly as PIL does; alpha,
                # palette, CMYK, 16-bit or other formats it would not (or not to
                # the same pixels), so those are re-encoded when written.
                keep = im.format in ('JPEG', 'PNG') and mode in ('RGB', 'L')
                pixels = np.asarray(im if mode in ('RGB', 'L') else im.convert('RGB'))
        except UnidentifiedImageError:
            return results, hist, (path, 'not an image file Pillow can read')
        except Exception as e:  # PIL raises many types for bad files
            return results, hist, (path, f'{type(e).__name__}: {e}')
        if is_train:
            if pixels.ndim == 2:
                hist += np.bincount(pixels.ravel(), minlength=256)
            else:
                for c in range(3):
                    hist[c] += np.bincount(pixels[..., c].ravel(), minlength=256)
        results.append((path, pixels.shape[0], pixels.shape[1], mode, not keep))
    return results, hist, None


def _batched(items: Iterable, n: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _map_bounded(fn: Callable, chunks: Iterable, workers: int) -> Iterator:
    """``map(fn, chunks)`` in order on ``workers`` processes, reading at most a few
    chunks per worker ahead (Pool.imap would read a whole tar into memory)."""
    if workers <= 1:
        yield from map(fn, chunks)
        return
    # forkserver: the parent may already run TensorFlow's threads, fork is unsafe then.
    with multiprocessing.get_context('forkserver').Pool(workers) as pool:
        in_flight = collections.deque()
        for chunk in chunks:
            in_flight.append(pool.apply_async(fn, (chunk,)))
            if len(in_flight) >= 4 * workers:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()


def check_images(ds: FolderDataset, workers: int | None = None,
                 chunk_size: int = 64) -> ImageCheck:
    """Decodes every image once (``workers`` processes, progress bar on stderr).

    Raises DataPreparationError naming the first file that does not decode.
    """
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top

    workers = workers or os.cpu_count() or 1
    train = {p for p, _ in ds.splits.get('train', [])}
    order = [p for entries in ds.splits.values() for p, _ in entries]
    items = ((p, full, data, p in train) for p, full, data in _stream(ds.files, order))
    shapes, modes, reencode = {}, set(), set()
    hist = np.zeros((3, 256), np.int64)
    results = _map_bounded(_check_chunk, _batched(items, chunk_size), workers)
    with tqdm.tqdm(total=len(order), desc='Decoding images', unit=' img', file=sys.stderr,
                   mininterval=1) as bar:
        try:
            for chunk_results, chunk_hist, error in results:
                for path, h, w, mode, needs in chunk_results:
                    shapes[path] = (h, w)
                    modes.add(mode)
                    if needs:
                        reencode.add(path)
                hist += chunk_hist
                bar.update(len(chunk_results))
                if error:
                    raise DataPreparationError(
                        f'cannot decode image {error[0]!r}: {error[1]}. Remove or replace the file.')
        finally:
            results.close()  # stops the workers now, not when garbage-collected
    return ImageCheck(shapes, modes == {'L'}, reencode, hist)


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #
def _features(name: str, class_names: list[str], image_shape: tuple,
              coarse_class_names: list[str] | None):
    """(features, version, with_coarse) for dataset ``name``."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    if not re.fullmatch(r'[a-z][a-z0-9_]*', name):
        raise DataPreparationError(
            f'--name {name!r} is not a valid TFDS name (lower case letters, digits, _).')
    features = {'id': tfds.features.Text(),
                'image': tfds.features.Image(shape=image_shape),
                'label': tfds.features.ClassLabel(names=class_names)}
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
        if with_coarse and coarse_class_names is None:
            raise DataPreparationError(
                f'{name} needs coarse labels, which this source lacks: pass another --name.')
        if with_coarse:
            features['coarse_label'] = tfds.features.ClassLabel(names=coarse_class_names)
        if len(class_names) != registered().info.features['label'].num_classes:
            raise DataPreparationError(
                f'{name} has {registered().info.features["label"].num_classes} classes, the '
                f'source has {len(class_names)}: pass another --name.')
    return tfds.features.FeaturesDict(features), version, with_coarse


def _store(name: str, version: str, features, split_examples: dict[str, Iterable],
           metadata: dict, data_dir: str) -> str:
    """Writes an ArrayRecord TFDS dataset into a temporary folder in ``data_dir`` and
    moves it to ``data_dir/name/version`` only when complete; returns that path."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.core.dataset_builders import adhoc_builder  # pylint: disable=g-import-not-at-top

    class MetadataBuilder(adhoc_builder.AdhocBuilder, skip_registration=True):
        # store_as_tfds_dataset takes no metadata: add it to the info it writes.
        def _info(self):
            info = super()._info()
            info._metadata = tfds.core.MetadataDict(metadata)  # pylint: disable=protected-access
            return info

    os.makedirs(data_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{name}-incomplete-', dir=data_dir)
    try:
        MetadataBuilder(name=name, version=version, features=features, split_datasets=split_examples,
                data_dir=tmp, disable_shuffling=True).download_and_prepare(
                    file_format='array_record')
        target = os.path.join(data_dir, name, version)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        previous = os.path.join(tmp, 'previous')
        if os.path.exists(target):
            os.rename(target, previous)
        try:
            os.rename(os.path.join(tmp, name, version), target)
        except OSError:
            if os.path.exists(previous):
                os.rename(previous, target)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _array_examples(split: Split, with_coarse: bool, split_name: str) -> Iterator[tuple[int, dict]]:
    for i in range(len(split.labels)):
        ex = {'id': split.ids[i] if split.ids else f'{split_name}_{i:05d}',
              'image': split.images[i], 'label': int(split.labels[i])}
        if with_coarse:
            ex['coarse_label'] = int(split.coarse_labels[i])
        yield i, ex  # integer keys: with shuffling off, TFDS writes in key order


def _reencode(data: bytes, mode: str) -> bytes:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    with Image.open(io.BytesIO(data)) as im:
        out = io.BytesIO()
        im.convert(mode).save(out, format='PNG')
        return out.getvalue()


def _folder_examples(ds: FolderDataset, split: str, check: ImageCheck
                     ) -> Iterator[tuple[int, dict]]:
    """Examples of one split with the file bytes as they are, read one at a time."""
    entries = ds.splits[split]
    index = {p: (i, label) for i, (p, label) in enumerate(entries)}
    mode = 'L' if check.grayscale else 'RGB'
    for p, full, data in _stream(ds.files, [p for p, _ in entries]):
        if data is None:
            data = _read(full)
        if p in check.reencode:
            data = _reencode(data, mode)
        i, label = index[p]
        yield i, {'id': p, 'image': data, 'label': label}


@dataclasses.dataclass
class Prepared:
    """What ``prepare`` wrote."""
    name: str
    path: str
    counts: dict[str, int]
    num_classes: int
    image_shape: tuple
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bytes_on_disk: int
    reencoded: int = 0
    ignored: int = 0


def write_tfds(ds: LocalDataset | FolderDataset, data_dir: str, name: str | None = None,
               check: ImageCheck | None = None) -> Prepared:
    """Writes ``ds`` as ArrayRecord TFDS dataset ``name`` in ``data_dir``.

    A FolderDataset needs its ``check_images`` result (shapes, channels, stats).
    """
    name = name or ds.name
    if isinstance(ds, LocalDataset):
        shape = ds.splits['train'].images.shape[1:]
        features, version, with_coarse = _features(name, ds.class_names, shape,
                                                   ds.coarse_class_names)
        mean, std = image_io.channel_stats(ds.splits['train'].images)
        examples = {k: _array_examples(s, with_coarse, k) for k, s in ds.splits.items()}
        counts = {k: len(s.labels) for k, s in ds.splits.items()}
        reencoded = ignored = 0
    else:
        shape = check.image_shape()
        features, version, _ = _features(name, ds.class_names, shape, None)
        mean, std = check.mean_std()
        examples = {k: _folder_examples(ds, k, check) for k in ds.splits}
        counts = {k: len(s) for k, s in ds.splits.items()}
        reencoded, ignored = len(check.reencode), len(ds.ignored)
    path = _store(name, version, features, examples, {'mean': list(mean), 'std': list(std)}, data_dir)
    size = sum(os.path.getsize(os.path.join(root, f))
               for root, _, names in os.walk(path) for f in names)
    return Prepared(name, path, counts, len(ds.class_names), tuple(shape), mean, std, size,
                    reencoded, ignored)


def prepare(source: str, data_dir: str, name: str | None = None, val_labels: str | None = None,
            workers: int | None = None) -> Prepared:
    """Reads ``source``, decodes every image once as a check, writes the dataset."""
    ds = read_source(source, val_labels)
    check = check_images(ds, workers) if isinstance(ds, FolderDataset) else None
    return write_tfds(ds, data_dir, name, check)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--source', required=True, help='archive or folder to read')
    parser.add_argument('--data_dir', required=True, help='TFDS data dir to write into')
    parser.add_argument('--name', default=None, help='dataset name (default: from the source)')
    parser.add_argument('--val_labels', default=None,
                        help="labels of a flat val/ folder: LOC_val_solution.csv or "
                             "'FILENAME CLASS' lines")
    parser.add_argument('--workers', type=int, default=os.cpu_count(),
                        help='processes that decode images (default: all cores)')
    args = parser.parse_args(argv)
    try:
        out = prepare(args.source, args.data_dir, args.name, args.val_labels, args.workers)
    except DataPreparationError as e:
        print(f'prepare_data: error: {e}', file=sys.stderr)
        return 2
    counts = ', '.join(f'{k}: {n}' for k, n in out.counts.items())
    print(f'Wrote TFDS dataset {out.name!r} (ArrayRecord) to {out.path}\n'
          f'  splits: {counts}; {out.num_classes} classes; image shape {out.image_shape}; '
          f'{out.bytes_on_disk / 2**20:.1f} MiB on disk')
    print(f'  train mean {[round(m, 4) for m in out.mean]}, std {[round(s, 4) for s in out.std]}')
    if out.reencoded:
        print(f'  {out.reencoded} images (alpha, palette, CMYK, 16-bit or not JPEG/PNG) were '
              're-encoded as PNG so that TFDS decodes them as stored')
    if out.ignored:
        print(f'  ignored {out.ignored} images directly in test/ (no labels)')
    streaming = ' --config.input.kind=streaming' if None in out.image_shape else ''
    print(f'Train on it with: --config.dataset={out.name} --config.data_dir={args.data_dir}'
          + streaming)
    return 0


if __name__ == '__main__':
    sys.exit(main())
