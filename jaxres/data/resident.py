"""Device-resident input pipeline: shuffle, preprocess and batch inside jitted code.

The whole training set lives on every device.  On CPU (``backend.packed_pixels``)
it is stored one word per pixel (its channels packed into the bytes of a uint32
for RGB) and, when the training spec starts with ``crop(p)``, padded left and
right by p: the random crop is then a gather of whole rows of pixel words, a
third of the elements of a per-example slice of a padded uint8 copy and without
its per-byte bounds checks, and the whole-pixel ops that follow (flips), the
unpacking and the normalisation compile to one vectorised loop (CIFAR-10: 256 MB
so stored, against 150 MB as uint8 arrays; ``benchmarks/RESULTS.md`` has the
measured speed-up).  ``train_batch`` is that planner; what each op does is
``preprocess``'s.  On GPUs and TPUs the set is stored as plain (N, H, W, C) uint8
images and the spec runs per example; the batches are the same.
Each epoch's order is a permutation drawn on the device from (seed, epoch); the
train step gathers its global batch from it, and because that batch is sharded
over the ``data`` mesh axis, every device gathers and preprocesses only its own
slice.  Every example's key is derived from (seed, epoch, position in the
epoch), so a run's batches do not depend on the number of devices or hosts, and
a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxres import sharding
from jaxres.cpu import pixels
from jaxres.data import datasets, preprocess

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DeviceData:
    """Arrays on the device(s): the training set (replicated) and eval batches.

    ``train_pixels`` holds the training images in one of two layouts: when
    ``packed``, (N, H, W + 2 * train_padding) pixel words (``pixels.pack_pixels``: a
    pixel's ``channels`` uint8 values in one unsigned int), the columns padded by
    ``train_padding`` in ``padding_mode``; else (N, H, W, C) uint8 images.
    ``eval_images`` is (num_batches, batch, H, W, C) uint8, sharded over ``data``
    on the batch axis; ``eval_mask`` marks the padding added to fill the last batch.
    """

    train_pixels: Array
    train_labels: Array
    eval_images: Array
    eval_labels: Array
    eval_mask: Array
    channels: int = dataclasses.field(default=3, metadata=dict(static=True))
    train_padding: int = dataclasses.field(default=0, metadata=dict(static=True))
    padding_mode: str = dataclasses.field(default='constant', metadata=dict(static=True))
    packed: bool = dataclasses.field(default=True, metadata=dict(static=True))


def _global_array(x: np.ndarray, sharding: NamedSharding) -> Array:
    """A global array from a host array every process holds in full.

    Each process materialises only the slices its own devices hold.
    """
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


class ResidentInput:
    """The resident data set as the training loop's input (``streaming.StreamingInput``
    has the same interface): the step's arguments are the device data and the
    epoch's order, from which ``batch``, inside the jitted step, gathers and
    augments its own global batch.

    ``rngs.data`` is the run's data stream key (``step.RngStreams``): it draws the
    epoch orders and the augmentation; ``dtype`` is the model's compute dtype.
    """

    kind = 'resident'
    multi_step = True  # the data does not change between steps: K steps per dispatch

    def __init__(self, data: DeviceData, *, pipeline: preprocess.Preprocess, rngs: Any,
                 steps_per_epoch: int, batch_size: int, mesh: Mesh, dtype: Any = jnp.float32):
        self.data, self.pipeline, self.rngs, self.dtype = data, pipeline, rngs, dtype
        self.mesh, self._steps_per_epoch, self._batch_size = mesh, steps_per_epoch, batch_size
        self.order_fn = jax.jit(self.epoch_order, out_shardings=sharding.replicated(mesh))
        self._order = None

    def epoch_order(self, step: Array) -> Array:
        """state.step -> its epoch's (steps_per_epoch, batch) example order."""
        return epoch_order(self.rngs.data, step // self._steps_per_epoch,
                           self.data.train_labels.shape[0], self._steps_per_epoch,
                           self._batch_size)

    def batch(self, step: Array, data: DeviceData, order: Array) -> dict[str, Array]:
        """Inside the jitted step: the augmented global batch of ``step``."""
        return train_batch(data, order, step, step // self._steps_per_epoch, self.rngs.data,
                           self.pipeline, self.dtype, sharding.batch_sharded(self.mesh))

    def start_at(self, step: int, restore: Any = None) -> None:
        del step, restore  # the order is drawn from the state's step

    def step_args(self, step: int, state: Any) -> tuple[DeviceData, Array]:
        if self._order is None or step % self._steps_per_epoch == 0:
            self._order = self.order_fn(state.step)  # on the device: no transfer
        return self.data, self._order

    def checkpoint_item(self) -> None:
        return None

    def close(self) -> None:
        """Nothing to stop: the data lives on the devices."""

    def eval_batches(self, batch_size: int = 0) -> Iterator[dict[str, Array]]:
        del batch_size  # placed in batches by to_device
        return eval_batches(self.data)


def eval_batches(data: DeviceData) -> Iterator[dict[str, Array]]:
    """The resident eval set as global batches ``{'image', 'label', 'mask'}``."""
    return unstack_batches(data.eval_images, data.eval_labels, data.eval_mask)


def unstack_batches(images: Array, labels: Array, mask: Array) -> Iterator[dict[str, Array]]:
    """Stacked (num_batches, batch, ...) arrays as one batch dict at a time."""
    for i in range(labels.shape[0]):
        yield {'image': images[i], 'label': labels[i], 'mask': mask[i]}


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


def leading_crop(pipeline: preprocess.Preprocess | None) -> preprocess.Step | None:
    """The spec's crop when it is the first op (the gather can do it), else None."""
    first = pipeline.pixel_steps[:1] if pipeline is not None else ()
    return first[0] if first and first[0].name == 'crop' else None


def place_eval_batches(images: np.ndarray, labels: np.ndarray, mesh: Mesh, batch_size: int
                       ) -> tuple[Array, Array, Array]:
    """(num_batches, batch, ...) images, labels and mask on the mesh, sharded on the batch
    axis; the batch rounded up to a multiple of the device count (padded, masked)."""
    spec = NamedSharding(mesh, P(None, 'data'))
    ex, ey, em = pad_eval_batches(images, labels,
                                  sharding.round_up_to_devices(batch_size, mesh.size))
    return (_global_array(ex, spec), _global_array(ey.astype(np.int32), spec),
            _global_array(em, spec))


def to_device(ds: datasets.ImageDataset, mesh: Mesh, eval_batch_size: int,
              pipeline: preprocess.Preprocess | None = None, with_train: bool = True,
              packed: bool = True) -> DeviceData:
    """Places the training set (replicated) and the eval batches (sharded).

    ``packed`` stores the training set as pixel words (the CPU's fast path);
    with the run's training ``pipeline`` they are padded for its leading crop, and
    the crop is then the gather itself; without, any pipeline still gives the
    same batches, the slower way.  ``packed=False`` stores uint8 images (GPU/TPU).  The eval batch
    is rounded up to a multiple of the device count (padded and masked).
    ``with_train=False`` (evaluation only) leaves the training set on the host:
    its arrays are empty.
    """
    replicated = NamedSharding(mesh, P())
    ex, ey, em = place_eval_batches(ds.eval_images, ds.eval_labels, mesh, eval_batch_size)
    crop = leading_crop(pipeline) if packed else None
    padding, mode = (crop['padding'], crop['mode']) if crop else (0, 'constant')
    keep = slice(None) if with_train else slice(0)
    train_images = ds.train_images[keep]
    return DeviceData(
        train_pixels=_global_array(
            pixels.pack_pixels(train_images, padding, mode) if packed else train_images, replicated),
        train_labels=_global_array(ds.train_labels[keep].astype(np.int32), replicated),
        eval_images=ex, eval_labels=ey, eval_mask=em,
        channels=ds.train_images.shape[-1], train_padding=padding, padding_mode=mode,
        packed=packed,
    )


# --------------------------------------------------------------------------- #
# Pure functions, used inside jit
# --------------------------------------------------------------------------- #
def permutation(data_key: Array, epoch: Array, num_examples: int) -> Array:
    """The epoch's order of the examples: both inputs' (the streaming one computes it
    on the host's CPU, ``streaming.EpochOrder``), so a seed draws the same batches."""
    return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)


def epoch_order(data_key: Array, epoch: Array, num_examples: int, steps_per_epoch: int,
                batch_size: int) -> Array:
    """(steps_per_epoch, batch_size) example indices of one epoch (remainder dropped)."""
    perm = permutation(data_key, epoch, num_examples)
    return perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)


def gather_windows(words: Array, idx: Array, offsets: Array, padding: int, mode: str) -> Array:
    """(n, H, W) windows of stored images ``words[idx]`` at ``offsets`` (n, 2).

    ``words`` is ``pixels.pack_pixels(images, padding, mode)``; offset (dy, dx) takes
    the window a ``padding``-padded copy would show at (dy, dx), so (padding,
    padding) is the image itself.  Gathers whole rows of W words; rows that
    fall in the vertical padding read a clamped row, then are zeroed
    ('constant'), or read the reflected row ('reflect').
    """
    n, (_, h, stored_w) = idx.shape[0], words.shape
    w = stored_w - 2 * padding
    rows = jnp.arange(h)[None, :] + offsets[:, :1] - padding  # (n, h), may leave [0, h)
    if mode == 'constant':
        src = jnp.clip(rows, 0, h - 1)
    else:  # reflect without repeating the edge, as jnp.pad's 'reflect'
        src = jnp.abs(rows)
        src = jnp.where(src > h - 1, 2 * (h - 1) - src, src)
    starts = jnp.stack([jnp.broadcast_to(idx[:, None], (n, h)), src,
                        jnp.broadcast_to(offsets[:, 1:], (n, h))], axis=-1)
    dims = jax.lax.GatherDimensionNumbers(offset_dims=(2,), collapsed_slice_dims=(0, 1),
                                          start_index_map=(0, 1, 2))
    out = jax.lax.gather(words, starts, dims, (1, 1, w), mode='clip')
    if mode == 'constant':
        out = jnp.where(((rows >= 0) & (rows < h))[:, :, None], out, 0)
    return out


def train_batch(data: DeviceData, order: Array, step: Array, epoch: Array, data_key: Array,
                pipeline: preprocess.Preprocess, dtype: Any = jnp.float32,
                batch_sharding: NamedSharding | None = None) -> dict[str, Array]:
    """The preprocessed global batch for ``step`` (within its epoch's ``order``).

    The planner: on packed pixel words stored padded for the spec's leading crop
    (``to_device`` with the same pipeline), the crop is the gather itself, and the
    whole-pixel ops that follow (flips) run on the words before they are unpacked;
    the batches are those of ``preprocess.augment_batch`` on uint8 images.
    """
    steps_per_epoch, batch_size = order.shape
    position = step % steps_per_epoch
    idx = jax.lax.dynamic_index_in_dim(order, position, keepdims=False)
    if batch_sharding is not None:
        # Shard the indices: each device then gathers and augments only its slice.
        idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    labels = data.train_labels[idx]
    if not data.packed:  # uint8 images: every op, the crop included, per example
        return preprocess.augment_batch(data.train_pixels[idx], labels, idx, position, epoch,
                                        data_key, pipeline, dtype)
    keys, flips = preprocess.example_keys(data_key, idx, position, epoch, pipeline)
    steps, pad, crop = pipeline.pixel_steps, data.train_padding, leading_crop(pipeline)
    crop_by_gather = (crop is not None and pad == crop['padding']
                      and data.padding_mode == crop['mode'])
    offsets = (preprocess.crop_offsets(preprocess.first_crop_and_flip_keys(keys)[0], pad)
               if crop_by_gather else jnp.full((batch_size, 2), pad))
    words = gather_windows(data.train_pixels, idx, offsets, pad, data.padding_mode)
    start = int(crop_by_gather)
    if all(s.op.whole_pixels for s in steps[start:]):
        words = preprocess.augment(words[..., None], keys, steps, flips, start)[..., 0]
        images = pixels.unpack_pixels(words, data.channels)
    else:
        images = preprocess.augment(pixels.unpack_pixels(words, data.channels), keys, steps, flips,
                                    start)
    return preprocess.finish_batch(images, labels, keys, pipeline, dtype)
