"""``--mode=predict``: class probabilities for unlabeled images from a checkpoint.

Input (``config.predict.input``), chosen by what the path is:

- ``*.npy``: uint8 images (N, H, W, C) or (N, H, W) for one channel; read with
  ``allow_pickle=False``.
- a directory: every image file below it (``.png .jpg .jpeg .bmp .gif .webp``,
  any depth), in the order of their paths relative to the directory, sorted as
  strings (``a/10.png`` < ``a/2.png`` < ``b/1.png``); row i of the output is the
  i-th path in that order.
- ``*.pkl`` / ``*.pickle`` / no suffix: a CIFAR-style pickle batch, a dict whose
  ``data`` entry is a uint8 array (N, C*H*W) of channel-first rows (CIFAR:
  (N, 3072) = 3x32x32).  Read with ``safe_io.safe_unpickle``, which refuses
  anything but plain containers and NumPy arrays.

Output (``config.predict.output``): ``*.npy`` with (N, num_classes) float32
softmax probabilities in input order, or ``*.csv`` with
``index,label,class_name,confidence``.  Images go through the evaluation
preprocessing (``config.predict.pp``, default the eval spec; flip TTA if ``config.eval.tta``)
and the checkpoint ``config.eval.checkpoint`` selects.  The output is written to
a temporary file and renamed, so a failure never leaves a partial file.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Iterator, Sequence

import jax
import ml_collections
import numpy as np

from jaxres import config_validation, datasets, inference, input_pipeline, safe_io, sharding
from jaxres.host_transforms import IMAGE_SUFFIXES

PICKLE_SUFFIXES = ('.pkl', '.pickle', '')
OUTPUT_SUFFIXES = ('.npy', '.csv')


class PredictError(datasets.DataError):
    """Unusable predict input or output; the message names the file and the fix."""


# --------------------------------------------------------------------------- #
# Reading the input (host side, pure)
# --------------------------------------------------------------------------- #
def read_images(path: str) -> np.ndarray:
    """uint8 NHWC images from a .npy, an image folder or a CIFAR-style pickle batch."""
    if not path:
        raise PredictError('config.predict.input is empty; pass --config.predict.input=PATH '
                           '(a .npy of uint8 images, an image folder or a pickle batch).')
    if not os.path.exists(path):
        raise PredictError(f'predict input {path} does not exist.')
    if os.path.isdir(path):
        return read_image_folder(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == '.npy':
        return read_npy(path)
    if suffix in PICKLE_SUFFIXES:
        return read_pickle_batch(path)
    raise PredictError(f'predict input {path}: unknown suffix {suffix!r}; give a .npy of uint8 '
                       'images, an image folder, or a CIFAR-style pickle batch (.pkl, .pickle '
                       'or no suffix).')


def read_npy(path: str) -> np.ndarray:
    try:
        images = safe_io.load_npy(path)
    except (ValueError, OSError, EOFError) as e:  # not an .npy, or an object (pickled) array
        raise PredictError(f'{path} is not a readable .npy array ({str(e)[:200]}).') from None
    if not isinstance(images, np.ndarray):  # np.load returns an archive for .npz data
        raise PredictError(f'{path} is not a .npy array (it is an .npz archive).')
    return as_images(images, path)


def read_pickle_batch(path: str) -> np.ndarray:
    try:
        with open(path, 'rb') as f:
            batch = safe_io.safe_unpickle(f)
    except safe_io.UnsafePickleError as e:
        raise PredictError(f'{path}: {e}. Nothing was executed.') from None
    except Exception as e:  # pylint: disable=broad-except  # malformed pickles fail many ways
        raise PredictError(f'{path} is not a pickle batch ({type(e).__name__}: '
                           f'{str(e)[:200]}).') from None
    if not isinstance(batch, dict) or 'data' not in batch:
        raise PredictError(f'{path} holds no dict with a "data" entry (a CIFAR-style batch); '
                           f'found {type(batch).__name__}.')
    return rows_to_images(batch['data'], path)


def rows_to_images(rows: Any, source: str, channels: int = 3) -> np.ndarray:
    """(N, C*S*S) channel-first uint8 rows (CIFAR layout) -> (N, S, S, C)."""
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2:
        desc = (f'{rows.dtype} array of shape {rows.shape}' if isinstance(rows, np.ndarray)
                else type(rows).__name__)
        raise PredictError(f'{source}: "data" is a {desc}; expected a uint8 array (N, '
                           f'{channels}*H*W) of channel-first rows, as in CIFAR (N, 3072).')
    side = int(round((rows.shape[1] / channels) ** 0.5))
    if channels * side * side != rows.shape[1]:
        raise PredictError(f'{source}: rows of {rows.shape[1]} values are not {channels} '
                           'square channels (CIFAR: 3072 = 3x32x32).')
    return rows.reshape(-1, channels, side, side).transpose(0, 2, 3, 1)


def read_image_folder(path: str) -> np.ndarray:
    """Every image below ``path`` in sorted relative-path order, as one uint8 array."""
    from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top

    files = image_files(path)
    if not files:
        raise PredictError(f'image folder {path} holds no {"/".join(IMAGE_SUFFIXES)} files.')
    images = []
    for name in files:
        try:
            with Image.open(os.path.join(path, name)) as im:
                im = im.convert('L' if im.mode in ('1', 'L', 'I', 'I;16', 'F') else 'RGB')
                images.append(np.asarray(im, np.uint8))
        except (UnidentifiedImageError, OSError) as e:
            raise PredictError(f'{os.path.join(path, name)} is not a readable image '
                               f'({str(e)[:200]}).') from None
        if images[-1].shape != images[0].shape:
            raise PredictError(f'{os.path.join(path, name)} is {images[-1].shape[:2]} but '
                               f'{files[0]} is {images[0].shape[:2]}: all images need one size '
                               'and colour mode.')
    return as_images(np.stack(images), path)


def image_files(path: str) -> list[str]:
    """Paths (relative to ``path``) of the image files below it, sorted as strings."""
    found = []
    for root, _, names in os.walk(path):
        for name in names:
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append(os.path.relpath(os.path.join(root, name), path))
    return sorted(found)


def as_images(x: np.ndarray, source: str) -> np.ndarray:
    """Checks dtype and rank: uint8 (N, H, W, C) with C in (1, 3), or (N, H, W)."""
    if x.dtype != np.uint8:
        raise PredictError(f'{source} has dtype {x.dtype}; expected uint8 images (0-255).')
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[0] == 0:
        raise PredictError(f'{source} has shape {x.shape}; expected (N, H, W, C) images with '
                           'N > 0 and C = 1 or 3.')
    return x


def check_image_shape(images: np.ndarray, expected: Sequence[int] | None, source: str) -> None:
    """The images must have the (H, W, C) the model was trained on."""
    # None: a size that varied in the training data (the model crops to image_size).
    if expected is not None and any(e is not None and e != g
                                    for e, g in zip(expected, images.shape[1:])):
        raise PredictError(f'{source} holds images of shape {tuple(images.shape[1:])}, but the '
                           f'model was trained on {tuple(expected)} (H, W, C).')


# --------------------------------------------------------------------------- #
# The model
# --------------------------------------------------------------------------- #
def image_batches(images: np.ndarray, mesh: jax.sharding.Mesh, batch_size: int
                  ) -> Iterator[dict[str, jax.Array]]:
    """Global batches ``{'image', 'mask'}`` of host images, padded so any N works."""
    batch_size = min(sharding.round_up_to_devices(batch_size, mesh.size),
                     sharding.round_up_to_devices(len(images), mesh.size))
    labels = np.zeros(len(images), np.int32)
    batches, _, masks = input_pipeline.pad_eval_batches(images, labels, batch_size)
    spec = sharding.batch_sharded(mesh)
    for batch, mask in zip(batches, masks):
        yield {k: jax.make_array_from_callback(v.shape, spec, lambda i, v=v: v[i])
               for k, v in (('image', batch), ('mask', mask))}


# --------------------------------------------------------------------------- #
# Writing the output
# --------------------------------------------------------------------------- #
def csv_rows(probs: np.ndarray, class_names: Sequence[str]) -> list[list[Any]]:
    """``index,label,class_name,confidence`` rows, one per image."""
    labels = np.argmax(probs, -1)
    return [[i, int(k), class_names[k], f'{probs[i, k]:.6f}'] for i, k in enumerate(labels)]


def write_output(path: str, probs: np.ndarray, class_names: Sequence[str]) -> None:
    """Writes .npy probabilities or .csv rows atomically (temp file + rename)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix == '.npy':
        buf = io.BytesIO()
        np.save(buf, probs.astype(np.float32), allow_pickle=False)
        data = buf.getvalue()
    else:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator='\n')
        writer.writerow(['index', 'label', 'class_name', 'confidence'])
        writer.writerows(csv_rows(probs, class_names))
        data = text.getvalue().encode('utf-8')
    safe_io.write_atomic(path, data)


def check_output_path(path: str) -> None:
    if not path:
        raise PredictError('config.predict.output is empty; pass --config.predict.output='
                           'OUT.npy (probabilities) or OUT.csv (labels).')
    if os.path.splitext(path)[1].lower() not in OUTPUT_SUFFIXES:
        raise PredictError(f'config.predict.output={path!r} must end in .npy (probabilities) '
                           'or .csv (index,label,class_name,confidence).')
    if os.path.isdir(path):
        raise PredictError(f'config.predict.output={path!r} is a directory; give a file name.')


# --------------------------------------------------------------------------- #
# The mode
# --------------------------------------------------------------------------- #
def class_names_for(meta: dict, config: ml_collections.ConfigDict, num_classes: int
                    ) -> tuple[str, ...]:
    """Class names stored in the checkpoint, else the data set's, else '0', '1', ..."""
    names = meta.get('class_names')
    if not names:
        names = _dataset_class_names(config)
    if not names or len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    return tuple(str(n) for n in names)


def _dataset_class_names(config: ml_collections.ConfigDict) -> list[str] | None:
    """Label names from TFDS metadata (no image is read); None when unavailable."""
    if config.dataset == 'digits':
        return [str(i) for i in range(10)]
    try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
        builder = tfds.builder(config.dataset, data_dir=config.data_dir or None)
        return list(builder.info.features['label'].names) if builder.is_prepared() else None
    except Exception:  # pylint: disable=broad-except  # any failure: fall back to indices
        return None


def predict(config: ml_collections.ConfigDict, workdir: str, images: np.ndarray
            ) -> tuple[np.ndarray, tuple[str, ...], str]:
    """(probabilities, class names, source) for uint8 NHWC ``images``: from the
    checkpoint ``config.eval.checkpoint`` selects, or from the exported model
    ``config.predict.model`` when set (``jaxres.export``)."""
    if config.predict.model:
        from jaxres import export  # pylint: disable=g-import-not-at-top
        loaded = export.load_exported(config.predict.model)
        probs = loaded.predict(images)
        # No export.json beside the file: the classes are their indices.
        names = loaded.class_names or tuple(str(i) for i in range(probs.shape[-1]))
        return probs, names, loaded.describe()
    mesh = sharding.make_data_mesh()
    check_image_shape(images, inference.checkpoint_meta(config, workdir).get('image_shape'),
                      config.predict.input or 'the images')
    restored = inference.load_for_inference(config, workdir, images.shape[1:], mesh=mesh,
                                            purpose='predict')
    probs = restored.evaluator(mesh).predict(
        restored.variables, image_batches(images, mesh, config.eval_batch_size))
    return (probs, class_names_for(restored.meta, config, restored.num_classes),
            f'checkpoint step {restored.step}')


def predict_to_file(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Runs ``--mode=predict``; returns the line to print."""
    config_validation.validate(config)
    out = config.predict.output
    check_output_path(out)  # before any work: a bad name should not cost a compile
    images = read_images(config.predict.input)
    probs, names, source = predict(config, workdir, images)
    if jax.process_index() == 0:
        write_output(out, probs, names)
    counts = np.bincount(np.argmax(probs, -1), minlength=len(names))
    top = ', '.join(f'{names[k]} {counts[k]}' for k in np.argsort(-counts)[:3])
    return (f'predicted {len(probs)} images with {source} '
            f'(most frequent: {top}); wrote {os.path.abspath(out)}')
