"""Images as uint8 NHWC arrays: reading files, checking arrays, channel statistics.

One place for what the data sets, ``prepare`` and ``predict`` all need: an image
array's check (rank, channels, dtype), CIFAR's channel-first rows, image folders,
and the per-channel mean/std that normalisation uses.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from jaxres import safe_io
from jaxres.data import DataError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
PICKLE_SUFFIXES = ('.pkl', '.pickle', '')


class ImageError(DataError):
    """Unusable images; the message names the source and the fix."""


def as_uint8_nhwc(x: Any, source: str, floats: bool = False) -> np.ndarray:
    """Checks rank and channels: uint8 (N, H, W, C), C in (1, 3), N > 0; (N, H, W) gains C=1.

    With ``floats``, number arrays are converted: [0, 1] when their maximum is <= 1,
    else [0, 255]; otherwise anything but uint8 is refused.
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[0] == 0:
        raise ImageError(f'{source} has shape {x.shape}; expected (N, H, W), (N, H, W, 1) or '
                         '(N, H, W, 3) images with N > 0.')
    if x.dtype == np.uint8:
        return x
    if not floats or not np.issubdtype(x.dtype, np.number):
        kind = 'uint8 or float' if floats else 'uint8'
        raise ImageError(f'{source} has dtype {x.dtype}; expected {kind} images (0-255).')
    scale = 255.0 if x.max(initial=0) <= 1.0 else 1.0
    return np.clip(np.round(x.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def rows_to_images(rows: Any, source: str, channels: int = 3) -> np.ndarray:
    """(N, C*S*S) channel-first uint8 rows (CIFAR's layout) -> contiguous (N, S, S, C)."""
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2:
        desc = (f'{rows.dtype} array of shape {rows.shape}' if isinstance(rows, np.ndarray)
                else type(rows).__name__)
        raise ImageError(f'{source}: "data" is a {desc}; expected a uint8 array (N, '
                         f'{channels}*H*W) of channel-first rows, as in CIFAR (N, 3072).')
    side = int(round((rows.shape[1] / channels) ** 0.5))
    if channels * side * side != rows.shape[1]:
        raise ImageError(f'{source}: rows of {rows.shape[1]} values are not {channels} '
                         'square channels (CIFAR: 3072 = 3x32x32).')
    return np.ascontiguousarray(rows.reshape(-1, channels, side, side).transpose(0, 2, 3, 1))


def channel_histogram(images: np.ndarray) -> np.ndarray:
    """(C, 256) counts of each uint8 value per channel of NHWC ``images``."""
    return np.stack([np.bincount(images[..., c].ravel(), minlength=256)
                     for c in range(images.shape[-1])])


def stats_from_histogram(hist: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of pixels in [0, 1] from (C, 256) value counts.

    Counts are exact integers, so this equals float64 sums over every pixel.  The
    std is floored at one grey level: a constant channel must not divide by zero.
    """
    values = np.arange(256, dtype=np.float64) / 255
    n = hist.sum(1).astype(np.float64)
    mean = hist @ values / n
    std = np.sqrt((hist * (values[None] - mean[:, None]) ** 2).sum(1) / n)
    return tuple(float(v) for v in mean), tuple(float(v) for v in np.maximum(std, 1 / 255))


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, H, W, C) images on [0, 1] pixels."""
    return stats_from_histogram(channel_histogram(images))


def read_images(path: str) -> np.ndarray:
    """uint8 NHWC images from a .npy, an image folder or a CIFAR-style pickle batch."""
    if not os.path.exists(path):
        raise ImageError(f'{path} does not exist.')
    if os.path.isdir(path):
        return read_image_folder(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == '.npy':
        return read_npy(path)
    if suffix in PICKLE_SUFFIXES:
        return read_pickle_batch(path)
    raise ImageError(f'{path}: unknown suffix {suffix!r}; give a .npy of uint8 images, an '
                     'image folder, or a CIFAR-style pickle batch (.pkl, .pickle or no suffix).')


def read_npy(path: str) -> np.ndarray:
    """uint8 images from a .npy file (never an object array: nothing is unpickled)."""
    try:
        images = safe_io.load_npy(path)
    except (ValueError, OSError, EOFError) as e:  # not an .npy, or an object (pickled) array
        raise ImageError(f'{path} is not a readable .npy array ({str(e)[:200]}).') from None
    if not isinstance(images, np.ndarray):  # np.load returns an archive for .npz data
        raise ImageError(f'{path} is not a .npy array (it is an .npz archive).')
    return as_uint8_nhwc(images, path)


def read_pickle_batch(path: str) -> np.ndarray:
    """The images of a CIFAR-style pickle batch (``{'data': rows}``), read without running code."""
    try:
        with open(path, 'rb') as f:
            batch = safe_io.safe_unpickle(f)
    except safe_io.UnsafePickleError as e:
        raise ImageError(f'{path}: {e}. Nothing was executed.') from None
    except Exception as e:  # pylint: disable=broad-except  # malformed pickles fail many ways
        raise ImageError(f'{path} is not a pickle batch ({type(e).__name__}: '
                         f'{str(e)[:200]}).') from None
    if not isinstance(batch, dict) or 'data' not in batch:
        raise ImageError(f'{path} holds no dict with a "data" entry (a CIFAR-style batch); '
                         f'found {type(batch).__name__}.')
    return rows_to_images(batch['data'], path)


def read_image_folder(path: str) -> np.ndarray:
    """Every image below ``path`` in sorted relative-path order, as one uint8 array."""
    from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top

    files = image_files(path)
    if not files:
        raise ImageError(f'image folder {path} holds no {"/".join(IMAGE_SUFFIXES)} files.')
    images = []
    for name in files:
        try:
            with Image.open(os.path.join(path, name)) as im:
                im = im.convert('L' if im.mode in ('1', 'L', 'I', 'I;16', 'F') else 'RGB')
                images.append(np.asarray(im, np.uint8))
        except (UnidentifiedImageError, OSError) as e:
            raise ImageError(f'{os.path.join(path, name)} is not a readable image '
                             f'({str(e)[:200]}).') from None
        if images[-1].shape != images[0].shape:
            raise ImageError(f'{os.path.join(path, name)} is {images[-1].shape[:2]} but '
                             f'{files[0]} is {images[0].shape[:2]}: all images need one size '
                             'and colour mode.')
    return as_uint8_nhwc(np.stack(images), path)


def image_files(path: str) -> list[str]:
    """Paths (relative to ``path``) of the image files below it, sorted as strings."""
    found = []
    for root, _, names in os.walk(path):
        for name in names:
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append(os.path.relpath(os.path.join(root, name), path))
    return sorted(found)


def check_image_shape(images: np.ndarray, expected: Sequence[int | None] | None,
                      source: str) -> None:
    """The images must have the (H, W, C) a model was trained on (None: any size)."""
    if expected is not None and any(e is not None and e != g
                                    for e, g in zip(expected, images.shape[1:])):
        raise ImageError(f'{source} holds images of shape {tuple(images.shape[1:])}, but the '
                         f'model was trained on {tuple(expected)} (H, W, C).')
