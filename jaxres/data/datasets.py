"""Host-side data: load a whole image-classification data set into memory.

CIFAR-sized data sets fit in host and device memory many times over, so jaxres
reads them once into uint8 arrays (``ImageDataset``) and does everything else
(shuffling, augmentation, batching) on the device; see ``resident``.

Sources: any TFDS dataset with ``image`` and ``label`` features (``cifar10``,
``cifar100``, or one written by ``python -m jaxres.prepare_data``), scikit-
learn's bundled ``digits`` (no download), or NumPy arrays you already hold
(``ImageDataset.from_arrays``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from typing import Any, Sequence

import ml_collections
import numpy as np

from jaxres.data import DataError, image_io


# (classes, image shape) of the data sets whose shapes are known without reading them
# (None: the size varies between images).
KNOWN_SHAPES: dict[str, tuple[int, tuple[int | None, int | None, int]]] = {
    'cifar10': (10, (32, 32, 3)), 'cifar100': (100, (32, 32, 3)), 'digits': (10, (8, 8, 1)),
    'imagenet': (1000, (None, None, 3))}


def model_input_shape(image_shape: Sequence[int | None], image_size: int = 0
                      ) -> tuple[int | None, int | None, int]:
    """A model's input (H, W, C) for stored ``image_shape``: ``image_size`` square when
    set (the images are cropped/resized to it), else the stored size (None: varies)."""
    h, w, c = image_shape
    return (image_size, image_size, c) if image_size else (h, w, c)


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a run needs to know of its data set without reading its images.

    ``image_shape`` is (H, W, C) with None for sizes that vary between images;
    ``mean``/``std`` are the training set's per-channel statistics on [0, 1]
    pixels when known (stored by ``prepare_data``), else None.
    """

    name: str
    num_train: int
    num_eval: int
    class_names: tuple[str, ...]
    image_shape: tuple[int | None, int | None, int]
    train_split: str = 'train'
    eval_split: str = 'test'
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.image_shape[-1]

    @property
    def train_bytes(self) -> int | None:
        """The training set's size as uint8 pixels; None when image sizes vary."""
        h, w, c = self.image_shape
        return None if h is None or w is None else self.num_train * h * w * c

    def model_image_shape(self, image_size: int = 0) -> tuple[int, int, int]:
        """The model's input shape: ``image_size`` square when set, else the stored one."""
        h, w, c = model_input_shape(self.image_shape, image_size)
        if h is None or w is None:
            raise DataError(f'the images of {self.name!r} vary in size: set '
                            '--config.data.image_size=SIZE (e.g. 224) to crop/resize them.')
        return (h, w, c)


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A labelled train split and an eval split, as uint8 NHWC arrays in memory."""

    train_images: np.ndarray
    train_labels: np.ndarray
    eval_images: np.ndarray
    eval_labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    def info(self, name: str = 'arrays') -> DataInfo:
        """Its ``DataInfo`` (the statistics are computed when a config asks for them)."""
        return DataInfo(name, len(self.train_labels), len(self.eval_labels), self.class_names,
                        self.image_shape)

    @classmethod
    def from_arrays(cls, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                    y_test: np.ndarray, class_names: Sequence[str] | None = None) -> 'ImageDataset':
        """Wraps NumPy arrays: images (N,H,W), (N,H,W,1) or (N,H,W,3), uint8 or float.

        Float images are taken as [0, 1] when their maximum is <= 1, else [0, 255].
        """
        x_train = image_io.as_uint8_nhwc(x_train, 'x_train', floats=True)
        x_test = image_io.as_uint8_nhwc(x_test, 'x_test', floats=True)
        y_train = np.asarray(y_train).astype(np.int32).reshape(-1)
        y_test = np.asarray(y_test).astype(np.int32).reshape(-1)
        if len(x_train) != len(y_train) or len(x_test) != len(y_test):
            raise DataError(f'images and labels differ in length: x_train {len(x_train)}, '
                            f'y_train {len(y_train)}, x_test {len(x_test)}, y_test {len(y_test)}.')
        if x_train.shape[1:] != x_test.shape[1:]:
            raise DataError(f'train images are {x_train.shape[1:]}, test images '
                            f'{x_test.shape[1:]}: both splits need one image shape.')
        n = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
        names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(n))
        if len(names) < n or y_train.min(initial=0) < 0 or y_test.min(initial=0) < 0:
            raise DataError(f'labels must lie in [0, {len(names)}); got max {n - 1}.')
        empty = sorted(set(range(len(names))) - set(np.unique(y_train).tolist()))
        if empty:
            raise DataError(f'classes {[names[i] for i in empty]} have no training example.')
        return cls(x_train, y_train, x_test, y_test, names)

    def split_validation(self, size: int, take_from: str = 'random') -> 'ImageDataset':
        """Holds out ``size`` training examples as the eval split.

        take_from='random': a fixed seeded random subset (any data order);
        'end': the last ``size`` examples (seed 000 on the official CIFAR files,
        whose order is already random).  Image folders are stored class by class,
        so their last examples are all of the last classes: 'end' is refused when
        the training part would then miss a class.
        """
        keep, held = hold_out(len(self.train_labels), size, take_from)
        missing = sorted(set(self.train_labels[held].tolist()) -
                         set(self.train_labels[keep].tolist()))
        if missing:
            raise DataError(
                f'holding out the last {size} training examples leaves classes '
                f'{[self.class_names[i] for i in missing]} with no training example (the data '
                'is stored class by class). Use --config.validation_from=random.')
        return dataclasses.replace(
            self, train_images=self.train_images[keep], train_labels=self.train_labels[keep],
            eval_images=self.train_images[held], eval_labels=self.train_labels[held])

    def class_balanced_subset(self, size: int, split: str = 'train') -> 'ImageDataset':
        """The first ``size / num_classes`` examples of each class of the ``split``
        ('train': ``config.train_subset``, or 'eval'), in their stored order; the
        other split is kept whole."""
        k = self.num_classes
        images, labels = ((self.train_images, self.train_labels) if split == 'train'
                          else (self.eval_images, self.eval_labels))
        if size % k:
            raise DataError(f'config.{split}_subset={size} must be a multiple of the {k} '
                            f'classes (the same count from each), e.g. {(size // k + 1) * k}.')
        per_class = size // k
        counts = np.bincount(labels, minlength=k)
        short = [f'{self.class_names[c]!r} ({counts[c]})' for c in range(k)
                 if counts[c] < per_class]
        if short:
            which = 'training' if split == 'train' else 'eval'
            raise DataError(f'config.{split}_subset={size} needs {per_class} {which} examples '
                            f'per class; {", ".join(short[:5])} have fewer. Lower it.')
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class]
                                       for c in range(k)]))
        return dataclasses.replace(self, **{f'{split}_images': images[keep],
                                            f'{split}_labels': labels[keep]})


# --------------------------------------------------------------------------- #
# Sources
# --------------------------------------------------------------------------- #
def load_digits(test_size: int = 360, seed: int = 0) -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits, as 8x8x1 uint8 images.

    Fixed split: a permutation with ``np.random.default_rng(seed)``; the last
    ``test_size`` images of it are the test set (360 by default, 20%).
    """
    from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top

    digits = sk_datasets.load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    train, test = order[:-test_size], order[-test_size:]
    return ImageDataset.from_arrays(images[train], digits.target[train], images[test],
                                    digits.target[test], [str(i) for i in range(10)])


def load_synthetic(num_train: int, num_eval: int, image_size: int, num_classes: int,
                   seed: int = 0) -> ImageDataset:
    """Generated images whose class is learnable (a class-specific colour and
    stripe, plus noise): for tests, benchmarks and fault injection, no files."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (num_classes, 3))
    rows = np.arange(image_size)

    def make(n):
        labels = rng.integers(0, num_classes, n)
        stripe = (rows[None, :] % num_classes == labels[:, None])[:, :, None, None]
        images = palette[labels][:, None, None, :] * 0.6 + 80 * stripe
        images = images + rng.normal(0, 40, (n, image_size, image_size, 3))
        return np.clip(images, 0, 255).astype(np.uint8), labels

    (xt, yt), (xe, ye) = make(num_train), make(num_eval)
    return ImageDataset.from_arrays(xt, yt, xe, ye)


def open_builder(name: str, data_dir: str | None, download: bool):
    """The prepared TFDS builder of ``name`` in ``data_dir`` (None: TFDS's default,
    ``$TFDS_DATA_DIR`` or ~/tensorflow_datasets), downloaded first where allowed;
    else a DataError that says how to prepare it offline."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    where = data_dir or tfds.core.constants.DATA_DIR
    fix = (f'Prepare it offline with\n  python -m jaxres.prepare_data --source '
           f'PATH_TO_{name.upper()}_ARCHIVE_OR_IMAGE_FOLDER --data_dir {where}'
           + ('' if name in ('cifar10', 'cifar100') else f' --name {name}')
           + '\nand pass --config.data_dir=DIR if you used another DIR.')
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception:  # DatasetNotFoundError lists the whole catalogue: too long.
        raise DataError(f'dataset {name!r} is neither in TFDS nor prepared in {where}. '
                        f'{fix}') from None
    if not builder.is_prepared():
        if not download:
            raise DataError(f'dataset {name!r} is not prepared in {builder.data_dir} and '
                            f'downloads are off (config.download=False). {fix}')
        if not _online():
            raise DataError(f'dataset {name!r} is not prepared in {builder.data_dir} and this '
                            f'machine has no internet access to download it. {fix}')
        try:
            builder.download_and_prepare()
        except Exception as e:  # network errors come in many types
            raise DataError(f'dataset {name!r} is not in {builder.data_dir} and could not be '
                            f'downloaded ({type(e).__name__}: {str(e)[:200]}). {fix}') from None
    return builder


def load_tfds(name: str, train_split: str, eval_split: str, data_dir: str | None,
              download: bool) -> ImageDataset:
    """Reads two splits of a TFDS dataset whole into memory."""
    builder = open_builder(name, data_dir, download)
    features = builder.info.features
    if 'image' not in features or 'label' not in features:
        raise DataError(f'dataset {name!r} has no image/label features: {list(features)}.')
    if None in features['image'].shape:
        raise DataError(f'dataset {name!r} has images of different sizes (shape '
                        f'{features["image"].shape}), which cannot be loaded whole into '
                        'memory: train on it with --config.input.kind=streaming.')

    x_train, y_train = read_split(builder, name, train_split)
    x_eval, y_eval = read_split(builder, name, eval_split)
    return ImageDataset.from_arrays(x_train, y_train, x_eval, y_eval, features['label'].names)


def read_split(builder, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of a prepared TFDS builder, whole, as uint8 images and labels."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    known = builder.info.splits
    if known and split.split('[')[0] not in known:
        raise DataError(f'dataset {name!r} has no split {split!r}; it has '
                        f'{sorted(builder.info.splits)}.')
    if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
        return _read_array_record(builder, name, split)  # no tf.data for ArrayRecord
    batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=4096,
                                                    shuffle_files=False)))
    if not batches:
        raise DataError(f'split {split!r} of dataset {name!r} is empty.')
    return (np.concatenate([b['image'] for b in batches]),
            np.concatenate([b['label'] for b in batches]))


def _read_array_record(builder, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of an ArrayRecord split: raw records read in one batch, then
    the image bytes decoded by the dataset's own feature.

    Decoding runs in this thread: on the CIFAR-10 JPEG train split, threads were
    slower and worker processes no faster (benchmarks/RESULTS.md).
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    source = builder.as_data_source(split=split,
                                    decoders={'image': tfds.decode.SkipDecoding()})
    if len(source) == 0:
        raise DataError(f'split {split!r} of dataset {name!r} is empty.')
    records = source.__getitems__(range(len(source)))
    decode = builder.info.features['image'].decode_example_np
    return (np.stack([decode(r['image']) for r in records]),
            np.asarray([r['label'] for r in records]))


def _online(host: str = 'storage.googleapis.com', timeout: float = 5.0) -> bool:
    """Whether TFDS's download mirror is reachable (fails fast instead of retrying)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_dataset(config: ml_collections.ConfigDict) -> ImageDataset:
    """The data set named by ``config.dataset``, with the validation split applied."""
    if config.dataset == 'digits':
        ds = load_digits()
    elif config.dataset == 'synthetic':
        syn = config.synthetic
        ds = load_synthetic(syn.num_train, syn.num_eval, syn.image_size, syn.num_classes)
    else:
        ds = load_tfds(config.dataset, config.train_split, config.eval_split,
                       config.data_dir or None, config.download)
    if config.validation_size > 0:
        ds = ds.split_validation(config.validation_size, config.validation_from)
    if config.get('train_subset', 0) > 0:  # configs saved before the key existed lack it
        ds = ds.class_balanced_subset(config.train_subset)
    return ds


# --------------------------------------------------------------------------- #
# Describing a data set without reading it, and reading it record by record
# --------------------------------------------------------------------------- #
def tfds_builder(config: ml_collections.ConfigDict):
    """The prepared TFDS builder of ``config.dataset`` (downloads where allowed)."""
    return open_builder(config.dataset, config.data_dir or None, config.download)


def eval_split_of(config: ml_collections.ConfigDict, splits: Sequence[str]) -> str:
    """``config.eval_split``, or 'validation' when the data set has no 'test' split."""
    split = config.eval_split
    if split == 'test' and 'test' not in splits and 'validation' in splits:
        logging.info('%s has no test split: evaluating on its validation split.',
                     config.dataset)
        return 'validation'
    return split


def describe(config: ml_collections.ConfigDict) -> DataInfo:
    """The ``DataInfo`` of ``config.dataset``: TFDS metadata only, no image is read."""
    if config.dataset in ('digits', 'synthetic'):
        return load_dataset(config).info(config.dataset)
    builder = tfds_builder(config)
    info = builder.info
    eval_split = eval_split_of(config, list(info.splits))
    for split in (config.train_split, eval_split):
        if split.split('[')[0] not in info.splits:
            raise DataError(f'dataset {config.dataset!r} has no split {split!r}; it has '
                            f'{sorted(info.splits)}.')
    metadata = dict(info.metadata or {})
    mean, std = metadata.get('mean'), metadata.get('std')
    num_train, num_eval = (info.splits[config.train_split].num_examples,
                           info.splits[eval_split].num_examples)
    if config.validation_size > 0:  # held out of the training split (``hold_out``)
        num_train, num_eval = num_train - config.validation_size, config.validation_size
    return DataInfo(
        config.dataset, num_train, num_eval, tuple(info.features['label'].names),
        tuple(info.features['image'].shape), config.train_split, eval_split,
        tuple(mean) if mean else None, tuple(std) if std else None)


def hold_out(num_train: int, size: int, take_from: str = 'random'
             ) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) indices of a training split of ``num_train`` examples when
    ``size`` are held out for validation (``ImageDataset.split_validation``): the
    same examples on the resident and the streaming input."""
    if not 0 < size < num_train:
        raise DataError(f'validation_size={size} must be in (0, {num_train}).')
    if take_from == 'end':
        held = np.arange(num_train - size, num_train)
    else:
        held = np.sort(np.random.default_rng(0).permutation(num_train)[:size])
    return np.setdiff1d(np.arange(num_train), held), held


def spread_sample(num: int, count: int) -> np.ndarray:
    """``min(count, num)`` indices spread evenly over ``range(num)``, in order.

    A sample whose make-up does not depend on the stored order: the first
    ``count`` records of a class-sorted split (an image folder prepared by
    ``jaxres.prepare_data`` is stored class by class) would all be one class,
    where evenly spaced ones hold every class in its share.
    """
    count = min(count, num)
    return (np.arange(count, dtype=np.int64) * num) // count if count else np.arange(0)


@dataclasses.dataclass(frozen=True)
class IndexedSource:
    """The records ``indices`` of a random-access ``source``, in that order."""

    source: Sequence
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.source[int(self.indices[index])]


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """Records ``{'image', 'label'}`` from uint8 images and labels in memory."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {'image': self.images[index], 'label': int(self.labels[index])}


def open_sources(config: ml_collections.ConfigDict, info: DataInfo,
                 ds: ImageDataset | None = None) -> tuple[Sequence, Sequence]:
    """Random-access (train, eval) sources of records ``{'image', 'label'}``.

    TFDS data sets must be in ArrayRecord format; images stay encoded (bytes).
    ``ds`` (arrays in memory) or the generated data sets are served from memory.
    """
    if ds is not None or config.dataset in ('digits', 'synthetic'):
        ds = ds if ds is not None else load_dataset(config)
        return (ArraySource(ds.train_images, ds.train_labels),
                ArraySource(ds.eval_images, ds.eval_labels))
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if config.validation_size > 0 and config.validation_from == 'end':
        raise DataError("config.validation_from='end' needs the labels of the whole training "
                        'split (image folders are stored class by class: the last examples '
                        'may miss classes), which streaming input does not read: use '
                        "--config.validation_from=random.")
    if config.get('train_subset', 0) > 0:
        raise DataError('config.train_subset > 0 selects examples of a training set in '
                        'memory; streaming input reads the whole stored split: use '
                        '--config.input.kind=resident, or --config.train_subset=0.')

    builder = tfds_builder(config)

    def source(split):
        missing = [str(p) for p in builder.info.splits[split.split('[')[0]].filepaths
                   if not p.exists()]
        if missing:
            raise DataError(f'{len(missing)} file(s) of dataset {config.dataset!r} split '
                            f'{split!r} are missing, e.g. {missing[0]}. Copy them back or '
                            're-run python -m jaxres.prepare_data.')
        try:
            return builder.as_data_source(split=split,
                                          decoders={'image': tfds.decode.SkipDecoding()})
        except NotImplementedError:  # tfrecord files: no random access
            raise DataError(
                f'dataset {config.dataset!r} is stored as tfrecord, which cannot be streamed. '
                'Write it as ArrayRecord with python -m jaxres.prepare_data, or use '
                '--config.input.kind=resident.') from None
        except FileNotFoundError as e:
            raise DataError(f'a file of dataset {config.dataset!r} split {split!r} is '
                            f'missing: {e}. Re-run python -m jaxres.prepare_data.') from None

    if config.validation_size > 0:  # held out of the training split, as when resident
        train = source(info.train_split)
        kept, held = hold_out(len(train), config.validation_size, config.validation_from)
        return IndexedSource(train, kept), IndexedSource(train, held)
    return source(info.train_split), source(info.eval_split)


def resolve_normalization(config: ml_collections.ConfigDict, info: DataInfo,
                          train_images: np.ndarray | None = None
                          ) -> ml_collections.ConfigDict:
    """``config`` with ``data.mean``/``data.std`` filled in when empty (= from the data).

    From the data set's stored statistics, else computed from ``train_images``
    (resident data); a mean/std whose length does not fit the channels is refused.
    """
    d = config.data
    mean, std = tuple(d.mean), tuple(d.std)
    if not mean:
        if info.mean is None and train_images is not None:
            info = dataclasses.replace(info, **dict(zip(('mean', 'std'),
                                                        image_io.channel_stats(train_images))))
        if info.mean is None:
            raise DataError(
                f'dataset {info.name!r} stores no per-channel mean/std and config.data.mean '
                'is empty: re-run python -m jaxres.prepare_data (it stores them), or set '
                '--config.data.mean=(..) --config.data.std=(..).')
        mean, std = info.mean, info.std
        logging.info('normalising with the data set\'s mean %s and std %s',
                     [round(v, 4) for v in mean], [round(v, 4) for v in std])
    # One value serves every channel; otherwise one per channel.
    want = (1,) if d.standardize == 'scalar' else (1, info.channels)
    if d.standardize != 'image' and (len(mean) not in want or len(std) != len(mean)):
        raise DataError(
            f'config.data.mean/std have {len(mean)}/{len(std)} values but the images of '
            f'{info.name!r} have {info.channels} channel(s): give {info.channels} (or 1) '
            "each, or --config.data.mean='()' --config.data.std='()' for the data set's own.")
    if (mean, std) == (tuple(d.mean), tuple(d.std)):
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.mean, config.data.std = tuple(mean), tuple(std)
    return config


def device_memory_bytes(device: Any) -> int:
    """One device's memory: the accelerator's limit, or the host's RAM for a CPU."""
    stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
    if stats and stats.get('bytes_limit'):
        return int(stats['bytes_limit'])
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def choose_input_kind(config: ml_collections.ConfigDict, info: DataInfo, device: Any) -> str:
    """'resident' or 'streaming' for ``config.input.kind`` (auto: by the budget); logged."""
    kind = config.input.kind
    budget = (config.input.resident_budget_gb * 2**30 if config.input.resident_budget_gb > 0
              else device_memory_bytes(device) / 4)
    size = info.train_bytes
    gb = lambda n: f'{n / 2**30:.2f} GB'
    if kind == 'resident':
        if size is None:
            raise DataError(f'--config.input.kind=resident needs images of one size; those of '
                            f'{info.name!r} vary. Use --config.input.kind=streaming.')
        if size > budget:
            raise DataError(
                f'--config.input.kind=resident: the training set of {info.name!r} is '
                f'{gb(size)} as uint8 pixels, over the resident budget of {gb(budget)} (a '
                'quarter of one device\'s memory, or config.input.resident_budget_gb). Use '
                '--config.input.kind=streaming, or raise --config.input.resident_budget_gb.')
    elif kind == 'auto':
        kind = 'resident' if size is not None and size <= budget else 'streaming'
        logging.info('input: %s (training set %s, resident budget %s)', kind,
                     'of varying image sizes' if size is None else gb(size), gb(budget))
    return kind
