"""Streaming input: grain reads the data set from disk, one global batch per step.

For data sets bigger than a device (ImageNet), where ``resident``'s
resident path cannot hold the training set.  The source is a TFDS data set in
ArrayRecord format (``python -m jaxres.prepare_data`` writes one), read with
``tfds.data_source`` keeping the encoded image bytes, or arrays in memory.

Order: example position p of the run (step p // B, slot p % B of a global batch
of B) reads record ``perm(epoch)[p mod (steps_per_epoch * B)]``, the resident
input's permutation of the epoch (``resident.permutation`` of the run's data key,
computed on the host's CPU; the remainder of an epoch is dropped), so that a seed
trains on the same batches, whichever input holds the data.  Process k of P reads
the k-th slice of B / P examples of every global batch, so the global batch, its
layout on the devices and each example's augmentation do not depend on the number
of hosts or of grain workers.

Host side (grain workers): decode and the ops that need the original image
(``host_ops``: RandomResizedCrop, resize + centre crop).  The uint8
batch then goes onto the mesh with ``jax.make_array_from_process_local_data``;
the per-pixel ops (crop with padding, flips, colour jitter, normalisation) run
inside the jitted step, with the same per-example keys as the resident path.
The iterator state is saved in the train state's Orbax checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
from typing import Any, Callable, Iterator, Sequence

import grain
import jax
import ml_collections
import numpy as np

from jaxres import sharding
from jaxres.data import datasets, host_ops, preprocess, resident


@dataclasses.dataclass(frozen=True)
class EpochOrder:
    """Example position in the run -> record index: the resident input's permutation
    per epoch (``resident.permutation``), from the data key's ``key_data`` (a tuple,
    so that the order pickles into grain's workers).  Not grain's ``shuffle``: that
    draws another permutation, and one order for both inputs gives a seed the same
    batches whichever input holds the data."""

    key_data: tuple[int, ...]
    num_records: int
    examples_per_epoch: int

    @classmethod
    def from_key(cls, data_key: jax.Array, num_records: int, examples_per_epoch: int
                 ) -> 'EpochOrder':
        return cls(tuple(np.asarray(jax.random.key_data(data_key)).tolist()), num_records,
                   examples_per_epoch)

    def __call__(self, position: int) -> int:
        epoch, within = divmod(int(position), self.examples_per_epoch)
        return int(self._permutation(epoch)[within])

    @functools.lru_cache(maxsize=2)  # this epoch and the next: one permutation each
    def _permutation(self, epoch: int) -> np.ndarray:
        # On the host's CPU: the run's accelerator is the training step's.
        with jax.default_device(jax.local_devices(backend='cpu')[0]):
            key = jax.random.wrap_key_data(np.asarray(self.key_data, np.uint32))
            return np.asarray(resident.permutation(key, epoch, self.num_records))


@dataclasses.dataclass(frozen=True)
class HostOps:
    """The work done on the host for one batch, in grain's workers (picklable).

    Called with the batch's ``(position, index, record)`` items (grain's
    ``batch_fn``), so that decoding can be batched.  Training: decode, then
    RandomResizedCrop to ``image_size`` when enabled, else (images of varying
    size) resize + centre crop to ``image_size``.  Eval: decode, then resize the
    shorter side to ``eval_resize`` (default ``image_size``) and take the centre
    ``image_size`` crop, when ``image_size`` is set and either the images vary
    in size or ``eval_resize`` is given.  Pads (``position`` past the end) are
    zero images with mask False.
    """

    train: bool
    channels: int
    out_shape: tuple[int, int, int]
    image_size: int = 0
    random_resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    eval_resize: int = 0
    seed: int = 0

    def __call__(self, items: Sequence[tuple[int, int, dict | None]]) -> dict[str, np.ndarray]:
        present = [k for k, (_, _, record) in enumerate(items) if record is not None]
        images = np.zeros((len(items), *self.out_shape), np.uint8)
        if present:
            images[present] = self._images([items[k] for k in present])
        return {'image': images,
                'label': np.array([r['label'] if r is not None else 0 for _, _, r in items],
                                  np.int32),
                'index': np.array([index for _, index, _ in items], np.int32),
                'mask': np.array([r is not None for _, _, r in items])}

    def _images(self, items: Sequence[tuple[int, int, dict]]) -> np.ndarray:
        if self.train and self.random_resized_crop:
            data = [r['image'] for _, _, r in items]
            data = [_encode_png(im) if isinstance(im, np.ndarray) else im for im in data]
            rngs = [np.random.default_rng([self.seed, position]) for position, _, _ in items]
            return host_ops.random_resized_crops(data, rngs, self.image_size,
                                                 self.crop_scale, self.crop_ratio,
                                                 self.channels)
        return np.stack([self._image(r['image'], index) for _, index, r in items])

    def _image(self, image: Any, index: int) -> np.ndarray:
        size, fixed = self.image_size, isinstance(image, np.ndarray)
        resize = size and (self.eval_resize or not fixed or image.shape[:2] != (size, size))
        if fixed and not resize:
            out = image  # in memory, already the model's size
        elif resize:
            data = _encode_png(image) if fixed else image
            out = host_ops.resize_center_crop(data, self.eval_resize or size, size,
                                              self.channels)
        else:
            out = host_ops.decode(image, self.channels)
        if out.shape != self.out_shape:
            raise datasets.DataError(
                f'record {index} gives a {out.shape} image where {self.out_shape} was '
                'expected: images of varying size need --config.data.image_size=SIZE (and '
                'random_resized_crop in data.train_pp, or data.eval_resize).')
        return out


def images_at(source: Sequence, indices: Sequence[int], channels: int) -> np.ndarray:
    """The images of the records ``indices``, decoded (uint8 NHWC; one size assumed)."""
    images = [source[int(i)]['image'] for i in indices]
    return np.stack([im if isinstance(im, np.ndarray) else host_ops.decode(im, channels)
                     for im in images])


def stem_sample(config: ml_collections.ConfigDict, info: datasets.DataInfo, count: int
                ) -> np.ndarray | None:
    """``count`` training images spread evenly over the split (``datasets.spread_sample``),
    which a model computes initial weights from (airbench's whitening stem:
    ``models.data_init_size``); None for 0."""
    if not count:
        return None
    source = datasets.open_sources(config, info)[0]
    return images_at(source, datasets.spread_sample(len(source), count), info.channels)


def _encode_png(image: np.ndarray) -> bytes:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, 'PNG')
    return buf.getvalue()


@dataclasses.dataclass(frozen=True)
class _ReadTrain:
    source: Any
    order: EpochOrder

    def __call__(self, position: int) -> tuple[int, int, dict]:
        index = self.order(position)
        return position, index, self.source[index]


@dataclasses.dataclass(frozen=True)
class _ReadEval:
    source: Any

    def __call__(self, position: int) -> tuple[int, int, dict | None]:
        position = int(position)
        if position >= len(self.source):
            return position, -1, None
        return position, position, self.source[position]


def process_slice(batches: grain.MapDataset, process: tuple[int, int] | None = None
                  ) -> grain.MapDataset:
    """Process k of P's share: batch j of B / P examples goes to process j mod P.

    ``process`` = (k, P), default this process of JAX's.
    """
    index, count = process or (jax.process_index(), jax.process_count())
    return batches[index::count]


def train_dataset(source: Sequence, *, data_key: jax.Array, batch_size: int,
                  steps_per_epoch: int, num_steps: int, host_ops: HostOps,
                  process: tuple[int, int] | None = None) -> grain.MapDataset:
    """This process's batches for steps 0 .. num_steps - 1 (lazy: nothing is read yet)."""
    count = process[1] if process else jax.process_count()
    order = EpochOrder.from_key(data_key, len(source), steps_per_epoch * batch_size)
    examples = grain.MapDataset.range(num_steps * batch_size).map(_ReadTrain(source, order))
    batches = examples.batch(batch_size // count, drop_remainder=True, batch_fn=host_ops)
    return process_slice(batches, process)


def eval_dataset(source: Sequence, *, batch_size: int, host_ops: HostOps,
                 process: tuple[int, int] | None = None) -> grain.MapDataset:
    """Every example once, in order; the last global batch padded (mask False)."""
    count = process[1] if process else jax.process_count()
    padded = -(-len(source) // batch_size) * batch_size
    examples = grain.MapDataset.range(padded).map(_ReadEval(source))
    return process_slice(examples.batch(batch_size // count, drop_remainder=True,
                                        batch_fn=host_ops), process)


def iterate(ds: grain.MapDataset, workers: int, prefetch: int) -> grain.DatasetIterator:
    """An iterator over ``ds``: ``workers`` processes (0: threads in this process)."""
    # Each element is a batch: ``prefetch`` batches are read ahead, in as many threads.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=prefetch,
                                              prefetch_buffer_size=prefetch))
    if workers > 0:
        from absl import flags  # pylint: disable=g-import-not-at-top
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (library use)
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                          per_worker_buffer_size=2),
                            worker_init_fn=_worker_on_cpu)
    return iter(it)


def _worker_on_cpu(index: int, count: int) -> None:
    """A grain worker computes the epoch order with JAX on the CPU only: it must not
    start a client on the run's GPU/TPU (set before its first JAX computation)."""
    del index, count
    jax.config.update('jax_platforms', 'cpu')


def to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """This process's rows of a global batch -> arrays sharded over the ``data`` axis."""
    spec = sharding.batch_sharded(mesh)
    with jax.transfer_guard('allow'):  # the loop's one deliberate host-to-device copy
        return {k: jax.make_array_from_process_local_data(spec, np.asarray(v))
                for k, v in batch.items()}


def jit_pipeline(pipeline: preprocess.Preprocess) -> preprocess.Preprocess:
    """The ops left for the jitted step: all but RandomResizedCrop (done on the host)."""
    return pipeline.without('random_resized_crop')


@dataclasses.dataclass(frozen=True)
class ReadBatchOps:
    """Inside the jitted step: a read uint8 batch through the training spec's ops
    left for jit (``jit_pipeline``).  ``rngs.data`` is the run's data stream key
    (``step.RngStreams``), ``dtype`` the model's compute dtype."""

    pipeline: preprocess.Preprocess  # the training spec with the data's normalisation
    rngs: Any
    steps_per_epoch: int
    dtype: Any = np.float32

    def __call__(self, step: jax.Array, read: dict[str, jax.Array]) -> dict[str, jax.Array]:
        position = step % self.steps_per_epoch
        return preprocess.augment_batch(read['image'], read['label'], read['index'], position,
                                        step // self.steps_per_epoch, self.rngs.data,
                                        jit_pipeline(self.pipeline), self.dtype)


class StreamingInput:
    """Training and eval batches read from disk (or host memory) through grain.

    The interface the training loop uses (``resident.ResidentInput`` has
    the same): ``start_at``, ``step_args``, ``batch``, ``eval_batches``,
    ``checkpoint_item``, ``close``.
    """

    kind = 'streaming'
    multi_step = False  # every step needs a new batch from the host

    def __init__(self, config: ml_collections.ConfigDict, info: datasets.DataInfo,
                 mesh: jax.sharding.Mesh, steps_per_epoch: int, num_steps: int,
                 ds: datasets.ImageDataset | None = None, *, batch: 'ReadBatchOps'):
        """``batch`` runs inside the jitted step on each read batch."""
        self.config, self.info, self.mesh, self.batch = config, info, mesh, batch
        d = config.data
        shape = info.model_image_shape(d.image_size)
        common = dict(channels=shape[-1], out_shape=shape, image_size=d.image_size,
                      seed=config.seed)
        rrc = preprocess.Preprocess.from_config(config).find('random_resized_crop')
        self.train_ops = HostOps(
            train=True, random_resized_crop=rrc is not None,
            crop_scale=rrc['scale'] if rrc else (0.08, 1.0),
            crop_ratio=rrc['ratio'] if rrc else (3 / 4, 4 / 3), **common)
        self.train_source, self.eval_source = datasets.open_sources(config, info, ds)
        self.train_batches = train_dataset(
            self.train_source, data_key=batch.rngs.data, batch_size=config.batch_size,
            steps_per_epoch=steps_per_epoch, num_steps=num_steps, host_ops=self.train_ops)
        self.iterator = self._iterate(self.train_batches)

    def _iterate(self, ds: grain.MapDataset) -> grain.DatasetIterator:
        return iterate(ds, self.config.input.workers, self.config.input.prefetch)

    def start_at(self, step: int, restore: Callable[[Any], bool] | None = None) -> None:
        """Positions the stream at ``step``: ``restore(iterator)`` sets the iterator
        state saved in the checkpoint when there is one for this process layout (it
        says whether it did), else from the order itself (the same batches: the order
        is a function of the position)."""
        if step == 0:
            return
        if restore is not None and restore(self.iterator):
            return
        logging.info('streaming input: no saved position for this process layout at step '
                     '%d; starting there from the data order.', step)
        self.iterator.close()
        self.iterator = self._iterate(self.train_batches[step:])

    def step_args(self, step: int, state: Any) -> tuple[dict[str, jax.Array]]:
        """The next step's global batch: uint8 images, labels, record indices."""
        del step, state  # the iterator is at the step
        batch = next(self.iterator)
        return (to_global({k: batch[k] for k in ('image', 'label', 'index')}, self.mesh),)

    def checkpoint_item(self) -> grain.DatasetIterator:
        return self.iterator

    def close(self) -> None:
        """Stops the grain workers and frees their shared memory."""
        self.iterator.close()

    def eval_batches(self, batch_size: int) -> Iterator[dict[str, jax.Array]]:
        """Every eval example once, as global batches with a mask."""
        return eval_batches(self.config, self.info, self.mesh, self.eval_source, batch_size)


def eval_batches(config: ml_collections.ConfigDict, info: datasets.DataInfo,
                 mesh: jax.sharding.Mesh, source: Sequence, batch_size: int = 0
                 ) -> Iterator[dict[str, jax.Array]]:
    """Every example of ``source`` once, prepared for evaluation, as global batches
    ``{'image', 'label', 'mask'}`` (the last one padded; ``config.eval_batch_size``
    rounded up to a multiple of the device count by default)."""
    d = config.data
    shape = info.model_image_shape(d.image_size)
    ops = HostOps(train=False, channels=shape[-1], out_shape=shape, image_size=d.image_size,
                  eval_resize=d.eval_resize, seed=config.seed)
    size = sharding.round_up_to_devices(batch_size or config.eval_batch_size, mesh.size)
    batches = iterate(eval_dataset(source, batch_size=size, host_ops=ops), config.input.workers,
                      config.input.prefetch)
    try:
        for batch in batches:
            yield to_global({k: batch[k] for k in ('image', 'label', 'mask')}, mesh)
    finally:
        batches.close()  # the workers and their shared memory, also when stopped early
