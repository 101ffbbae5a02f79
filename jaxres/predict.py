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
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from jaxres import config_validation, inference, safe_io, sharding
from jaxres.data import datasets, image_io, inputs

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
    return image_io.read_images(path)


# --------------------------------------------------------------------------- #
# The model
# --------------------------------------------------------------------------- #
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
        builder = datasets.open_builder(config.dataset, config.data_dir or None, download=False)
        return list(builder.info.features['label'].names)
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
    image_io.check_image_shape(images, inference.checkpoint_meta(config, workdir).get('image_shape'),
                      config.predict.input or 'the images')
    restored = inference.load_for_inference(config, workdir, images.shape[1:], mesh=mesh,
                                            purpose='predict')
    probs = restored.evaluator(mesh).predict(
        restored.variables, inputs.array_batches(images, mesh, config.eval_batch_size))
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
