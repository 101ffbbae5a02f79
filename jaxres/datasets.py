"""Host-side data: load a whole image-classification data set into memory.

CIFAR-sized data sets fit in host and device memory many times over, so jaxres
reads them once into uint8 arrays (``ImageDataset``) and does everything else
(shuffling, augmentation, batching) on the device; see ``input_pipeline``.

Sources: any TFDS dataset with ``image`` and ``label`` features (``cifar10``,
``cifar100``, or one written by ``python -m jaxres.prepare_data``), scikit-
learn's bundled ``digits`` (no download), or NumPy arrays you already hold
(``ImageDataset.from_arrays``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Sequence

import ml_collections
import numpy as np


# (classes, image shape) of the data sets whose shapes are known without reading them.
KNOWN_SHAPES: dict[str, tuple[int, tuple[int, int, int]]] = {
    'cifar10': (10, (32, 32, 3)), 'cifar100': (100, (32, 32, 3)), 'digits': (10, (8, 8, 1))}


class DataError(ValueError):
    """Data that cannot be loaded; the message names the cause and the fix."""


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

    @classmethod
    def from_arrays(cls, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                    y_test: np.ndarray, class_names: Sequence[str] | None = None) -> 'ImageDataset':
        """Wraps NumPy arrays: images (N,H,W), (N,H,W,1) or (N,H,W,3), uint8 or float.

        Float images are taken as [0, 1] when their maximum is <= 1, else [0, 255].
        """
        x_train, x_test = _as_uint8_nhwc(x_train, 'x_train'), _as_uint8_nhwc(x_test, 'x_test')
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
        n = len(self.train_labels)
        if not 0 < size < n:
            raise DataError(f'validation_size={size} must be in (0, {n}).')
        if take_from == 'end':
            held = np.arange(n - size, n)
        else:
            held = np.sort(np.random.default_rng(0).permutation(n)[:size])
        keep = np.setdiff1d(np.arange(n), held)
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


def _as_uint8_nhwc(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f'{name} has shape {x.shape}; expected (N, H, W), (N, H, W, 1) '
                        'or (N, H, W, 3).')
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f'{name} has dtype {x.dtype}; expected uint8 or float images.')
    scale = 255.0 if x.max(initial=0) <= 1.0 else 1.0
    return np.clip(np.round(x.astype(np.float64) * scale), 0, 255).astype(np.uint8)


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


def load_tfds(name: str, train_split: str, eval_split: str, data_dir: str | None,
              download: bool) -> ImageDataset:
    """Reads two splits of a TFDS dataset whole into memory."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    data_dir = data_dir or os.environ.get('TFDS_DATA_DIR') or None
    fix = (f'Prepare it offline with\n  python -m jaxres.prepare_data --source '
           f'PATH_TO_{name.upper()}_ARCHIVE_OR_IMAGE_FOLDER --data_dir '
           f'{data_dir or "~/tensorflow_datasets"}'
           + ('' if name in ('cifar10', 'cifar100') else f' --name {name}')
           + '\nand pass --config.data_dir=DIR if you used another DIR.')
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception:  # DatasetNotFoundError lists the whole catalogue: too long.
        raise DataError(f'dataset {name!r} is neither in TFDS nor prepared in '
                        f'{data_dir or "the default TFDS data dir"}. {fix}') from None
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
    features = builder.info.features
    if 'image' not in features or 'label' not in features:
        raise DataError(f'dataset {name!r} has no image/label features: {list(features)}.')
    if None in features['image'].shape:
        raise DataError(f'dataset {name!r} has images of different sizes (shape '
                        f'{features["image"].shape}), which cannot be loaded whole into '
                        'memory: train on it with --config.input.kind=streaming.')

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
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

    x_train, y_train = read(train_split)
    x_eval, y_eval = read(eval_split)
    return ImageDataset.from_arrays(x_train, y_train, x_eval, y_eval, features['label'].names)


def _read_array_record(builder, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of an ArrayRecord split: raw records read in one batch, then
    the image bytes decoded by the dataset's own feature.

    Decoding runs in this thread: on the CIFAR-10 JPEG train split (2 cores) threads
    were slower (5.3 s vs 3.8 s) and worker processes no faster (3.6-5.5 s).
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
    return ds
