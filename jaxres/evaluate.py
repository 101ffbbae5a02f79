"""One evaluator for training-time eval, ``--mode=eval`` and ``--mode=predict``.

It runs over any iterator of global batches ``{'image': uint8 (B, H, W, C),
'label', 'mask'}`` (the resident eval set on the device, or batches streamed
by grain): the last batch is padded and masked, so every example counts once.
It needs the model's variables only: no optimizer, no training data.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxres import checkpointing, sharding
from jaxres.data import preprocess

Array = jax.Array


def cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0) -> Array:
    """Per-example softmax cross-entropy in float32, with optional label smoothing."""
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def tta_probabilities(logits_fn: Callable[[Array], Array], images: Array,
                      translate: bool = False) -> Array:
    """Softmax averaged over each image and its mirror image (test-time augmentation).

    With ``translate`` the image shifted by one pixel up-left and down-right
    (edges reflected) is added, each with its mirror: weights 1/2, 1/4, 1/4.
    """
    def flip_avg(x):
        return (jax.nn.softmax(logits_fn(x).astype(jnp.float32)) +
                jax.nn.softmax(logits_fn(x[:, :, ::-1]).astype(jnp.float32))) / 2

    probs = flip_avg(images)
    if translate:
        h, w = images.shape[1:3]
        padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), 'reflect')
        probs = (probs / 2 + flip_avg(padded[:, :h, :w]) / 4 +
                 flip_avg(padded[:, 2:, 2:]) / 4)
    return probs


def logits(variables: dict[str, Any], images: Array, *, apply_fn: Callable,
           pipeline: preprocess.Preprocess, dtype: Any, tta_flip: bool = False,
           tta_translate: bool = False) -> Array:
    """The model's logits for uint8 images through the eval/predict ``pipeline`` (with
    TTA: the log of the averaged softmax)."""
    x = preprocess.eval_images(images, pipeline, dtype)
    logits_fn = lambda x: apply_fn(variables, x, train=False)
    if tta_flip:
        return jnp.log(tta_probabilities(logits_fn, x, tta_translate))
    return logits_fn(x).astype(jnp.float32)


def batch_sums(batch_logits: Array, labels: Array, mask: Array) -> dict[str, Array]:
    """Sums over the real (unmasked) examples of one batch: loss, top-1/5, confusion."""
    num_classes = batch_logits.shape[-1]
    m = mask.astype(jnp.float32)
    pred = jnp.argmax(batch_logits, -1)
    _, top5 = jax.lax.top_k(batch_logits, min(5, num_classes))
    return {
        'loss': jnp.sum(cross_entropy(batch_logits, labels) * m),
        'correct': jnp.sum((pred == labels) * m),
        'correct_top5': jnp.sum(jnp.any(top5 == labels[:, None], -1) * m),
        'count': jnp.sum(m),
        'confusion': jnp.zeros((num_classes, num_classes), jnp.float32).at[labels, pred].add(m),
    }


def summarize(sums: dict[str, Any], class_names: tuple[str, ...] | None = None
              ) -> dict[str, Any]:
    """Host-side: divide the sums once; per-class accuracy from the confusion matrix."""
    sums = jax.device_get(sums)
    count = float(sums['count'])
    confusion = np.asarray(sums['confusion'])
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    return {
        'accuracy': float(sums['correct']) / count,
        'top5_accuracy': float(sums['correct_top5']) / count,
        'loss': float(sums['loss']) / count,
        'num_examples': int(round(count)),
        'per_class_accuracy': {(class_names[i] if class_names else str(i)): float(a)
                               for i, a in enumerate(per_class)},
        'confusion_matrix': confusion.astype(int).tolist(),
    }


def with_saved_normalization(config: ml_collections.ConfigDict, meta: dict
                             ) -> ml_collections.ConfigDict:
    """``config`` with the checkpoint's mean/std when the config leaves them to the data
    (``data.mean=()``): a model is evaluated as it was trained."""
    if tuple(config.data.mean):
        return config
    saved = (meta.get('config') or {}).get('data') or {}
    if not saved.get('mean'):
        raise checkpointing.CheckpointError(
            'config.data.mean is empty (= from the data) and the checkpoint records none: '
            'pass the --config.data.mean/std it was trained with.')
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.mean, config.data.std = tuple(saved['mean']), tuple(saved['std'])
    return config


class Evaluator:
    """Batched evaluation and prediction of one model over any batch iterator."""

    def __init__(self, apply_fn: Callable, mesh: jax.sharding.Mesh,
                 pipeline: preprocess.Preprocess, dtype: Any, *,
                 tta_flip: bool = False, tta_translate: bool = False,
                 class_names: tuple[str, ...] | None = None):
        self.mesh = mesh
        self.class_names = class_names
        self._logits = functools.partial(logits, apply_fn=apply_fn, pipeline=pipeline,
                                         dtype=dtype, tta_flip=tta_flip,
                                         tta_translate=tta_translate)

    @functools.cached_property
    def sums_fn(self) -> Callable:
        """jit((variables, totals or None, batch) -> totals + this batch's sums)."""
        def add(variables, totals, batch):
            out = self._logits(variables, batch['image'])
            sums = batch_sums(out, batch['label'], batch['mask'])
            return sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
        # Totals of the previous batch are donated: one buffer set for the whole pass.
        return jax.jit(add, donate_argnums=1, out_shardings=sharding.replicated(self.mesh))

    @functools.cached_property
    def _probabilities(self) -> Callable:
        fn = lambda variables, images: jax.nn.softmax(self._logits(variables, images))
        return jax.jit(fn, out_shardings=sharding.replicated(self.mesh))

    def evaluate(self, variables: dict[str, Any], batches: Iterable[dict[str, Array]]
                 ) -> dict[str, Any]:
        """Accuracy, top-5, loss, per-class accuracy and the confusion matrix."""
        totals = None
        for batch in batches:
            totals = self.sums_fn(variables, totals, batch)
        if totals is None:
            raise ValueError('evaluation got no batch.')
        return summarize(totals, self.class_names)

    def predict(self, variables: dict[str, Any], batches: Iterable[dict[str, Array]]
                ) -> np.ndarray:
        """Softmax probabilities (float32) of the unmasked examples, in order."""
        out = []
        for batch in batches:
            # Replicated output: any local copy is the whole batch, on every host.
            probs = np.asarray(self._probabilities(variables, batch['image']).addressable_data(0))
            out.append(probs[_global_mask(batch['mask'])] if 'mask' in batch else probs)
        return np.concatenate(out).astype(np.float32)


def _global_mask(mask: Array) -> np.ndarray:
    """The whole (global) mask on the host (allgathered when it spans processes)."""
    if mask.is_fully_addressable:
        return np.asarray(jax.device_get(mask))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(mask, tiled=True))
