"""Device-resident input pipeline: shuffle, augment and batch inside jitted code.

The whole uint8 training set lives on every device (CIFAR-10 is 150 MB).  Each
epoch's order is a permutation drawn on the device from (seed, epoch); the
train step gathers its global batch from it, and because that batch is sharded
over the ``data`` mesh axis, every device gathers and augments only its own
slice.  Every example's augmentation key is derived from (seed, epoch, position
in the epoch), so a run's batches do not depend on the number of devices or
hosts, and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxres import datasets

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeviceData:
    """Arrays on the device(s): the training set (replicated) and eval batches.

    ``eval_images`` is (num_batches, batch, H, W, C), sharded over ``data`` on
    the batch axis; ``eval_mask`` marks the padding added to fill the last batch.
    """

    train_images: Array
    train_labels: Array
    eval_images: Array
    eval_labels: Array
    eval_mask: Array


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Static augmentation settings (hashable: closed over by jitted functions)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    padding_mode: str = 'constant'
    hflip: bool = False
    image_size: int = 0

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> 'Augmentation':
        d = config.data
        return cls(mean=tuple(d.mean), std=tuple(d.std), crop_padding=d.crop_padding,
                   padding_mode=d.padding_mode, hflip=d.hflip, image_size=d.image_size)


def _global_array(x: np.ndarray, sharding: NamedSharding) -> Array:
    """A global array from a host array every process holds in full.

    Each process materialises only the slices its own devices hold.
    """
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def pad_eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads to whole batches and reshapes to (num_batches, batch_size, ...) + mask."""
    n = len(labels)
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    mask = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    shape = (num_batches, batch_size)
    return (images.reshape(shape + images.shape[1:]), labels.reshape(shape),
            mask.reshape(shape))


def to_device(ds: datasets.ImageDataset, mesh: Mesh, eval_batch_size: int) -> DeviceData:
    """Places the training set (replicated) and the eval batches (sharded)."""
    replicated = NamedSharding(mesh, P())
    eval_sharding = NamedSharding(mesh, P(None, 'data'))
    ex, ey, em = pad_eval_batches(ds.eval_images, ds.eval_labels, eval_batch_size)
    return DeviceData(
        train_images=_global_array(ds.train_images, replicated),
        train_labels=_global_array(ds.train_labels.astype(np.int32), replicated),
        eval_images=_global_array(ex, eval_sharding),
        eval_labels=_global_array(ey.astype(np.int32), eval_sharding),
        eval_mask=_global_array(em, eval_sharding),
    )


# --------------------------------------------------------------------------- #
# Pure functions, used inside jit
# --------------------------------------------------------------------------- #
def epoch_order(data_key: Array, epoch: Array, num_examples: int, steps_per_epoch: int,
                batch_size: int) -> Array:
    """(steps_per_epoch, batch_size) example indices of one epoch (remainder dropped)."""
    perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)
    return perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)


def normalize(images: Array, aug: Augmentation, dtype: Any = jnp.float32) -> Array:
    """uint8 -> float, optionally resized, standardised per channel."""
    x = images.astype(jnp.float32) / 255.0
    if aug.image_size and x.shape[1] != aug.image_size:
        x = jax.image.resize(x, x.shape[:1] + (aug.image_size, aug.image_size) + x.shape[3:],
                             'bilinear')
    x = (x - jnp.asarray(aug.mean, jnp.float32)) / jnp.asarray(aug.std, jnp.float32)
    return x.astype(dtype)


def random_crop(images: Array, keys: Array, padding: int, mode: str) -> Array:
    """Pads by ``padding`` (zeros or reflection) and crops back at random offsets."""
    n, h, w, c = images.shape
    pad_mode = 'constant' if mode == 'constant' else 'reflect'
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), pad_mode)

    def crop_one(img, key):
        dy, dx = jax.random.randint(key, (2,), 0, 2 * padding + 1)
        return jax.lax.dynamic_slice(img, (dy, dx, 0), (h, w, c))

    return jax.vmap(crop_one)(padded, keys)


def random_hflip(images: Array, keys: Array) -> Array:
    flip = jax.vmap(lambda k: jax.random.bernoulli(k))(keys)
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def augment(images: Array, keys: Array, aug: Augmentation) -> Array:
    """Per-example random augmentation of uint8 images (one key per example)."""
    crop_keys, flip_keys = jax.vmap(lambda k: jax.random.split(k, 2), out_axes=1)(keys)
    if aug.crop_padding:
        images = random_crop(images, crop_keys, aug.crop_padding, aug.padding_mode)
    if aug.hflip:
        images = random_hflip(images, flip_keys)
    return images


def train_batch(data: DeviceData, order: Array, step: Array, epoch: Array, data_key: Array,
                aug: Augmentation, dtype: Any = jnp.float32,
                batch_sharding: NamedSharding | None = None) -> dict[str, Array]:
    """The augmented global batch for ``step`` (within its epoch's ``order``)."""
    steps_per_epoch, batch_size = order.shape
    pos = step % steps_per_epoch
    idx = jax.lax.dynamic_index_in_dim(order, pos, keepdims=False)
    if batch_sharding is not None:
        # Shard the indices: each device then gathers and augments only its slice.
        idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    images = data.train_images[idx]
    labels = data.train_labels[idx]
    epoch_key = jax.random.fold_in(jax.random.fold_in(data_key, 1), epoch)
    positions = pos * batch_size + jnp.arange(batch_size)
    keys = jax.vmap(lambda p: jax.random.fold_in(epoch_key, p))(positions)
    images = augment(images, keys, aug)
    return {'image': normalize(images, aug, dtype), 'label': labels}
