"""Where steps and evaluations read their batches from.

``Input``: the interface of the training loop's input (``resident.ResidentInput``,
``streaming.StreamingInput``).  ``eval_batches``: a data set's eval split for
--mode=eval, streamed from ArrayRecord files or placed whole.  ``array_batches``:
host images for --mode=predict.  All give padded, masked global batches.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import jax
import ml_collections
import numpy as np

from jaxres import sharding
from jaxres.data import datasets, resident, streaming


class Input(Protocol):
    """What the training loop reads its steps from (``resident.ResidentInput``,
    ``streaming.StreamingInput``).

    On the host, per step: ``step_args`` (the jitted step's arguments after the
    state).  Inside the jitted step: ``batch(state.step, *args)``, the augmented
    global batch.  Around them: evaluation batches, the position to resume from,
    what a checkpoint saves of it, and ``close``.
    """

    kind: str  # 'resident' or 'streaming'
    multi_step: bool  # whether one dispatch may run several steps on the same args

    def step_args(self, step: int, state: Any) -> tuple: ...

    def batch(self, step: Any, *args: Any) -> dict[str, Any]: ...

    def eval_batches(self, batch_size: int) -> Iterator[dict[str, Any]]: ...

    def start_at(self, step: int, restore: Callable[[Any], bool] | None = None) -> None: ...

    def checkpoint_item(self) -> Any: ...

    def close(self) -> None: ...


def eval_batches(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                 ) -> tuple[Iterator[dict], tuple[str, ...], tuple, str]:
    """(global eval batches, class names, stored image shape, split name), reading the
    eval split only: streamed from ArrayRecord files, else placed whole."""
    builder = None
    if config.validation_size <= 0 and config.dataset not in ('digits', 'synthetic'):
        try:
            builder = datasets.tfds_builder(config)
        except datasets.DataError:
            pass  # load_dataset says why (or knows arrays a library user registered)
    if builder is None:  # in memory, or the held-out part of a training set
        ds = datasets.load_dataset(config)
        split = 'validation' if config.validation_size > 0 else config.eval_split
        batches = resident.place_eval_batches(ds.eval_images, ds.eval_labels, mesh,
                                              config.eval_batch_size)
        return resident.unstack_batches(*batches), ds.class_names, ds.image_shape, split
    info = datasets.describe(config)
    if builder.info.file_format.value == 'array_record':
        source = datasets.open_sources(config, info)[1]
        return (streaming.eval_batches(config, info, mesh, source), info.class_names,
                info.image_shape, info.eval_split)
    images, labels = datasets.read_split(builder, config.dataset, info.eval_split)
    batches = resident.place_eval_batches(images, labels, mesh, config.eval_batch_size)
    return resident.unstack_batches(*batches), info.class_names, info.image_shape, info.eval_split


def array_batches(images: np.ndarray, mesh: jax.sharding.Mesh, batch_size: int
                  ) -> Iterator[dict[str, jax.Array]]:
    """Global batches ``{'image', 'mask'}`` of host images (prediction), padded so
    any N works, one placed at a time."""
    batch_size = min(sharding.round_up_to_devices(batch_size, mesh.size),
                     sharding.round_up_to_devices(len(images), mesh.size))
    labels = np.zeros(len(images), np.int32)
    batches, _, masks = resident.pad_eval_batches(images, labels, batch_size)
    spec = sharding.batch_sharded(mesh)
    for batch, mask in zip(batches, masks):
        yield {k: jax.make_array_from_callback(v.shape, spec, lambda i, v=v: v[i])
               for k, v in (('image', batch), ('mask', mask))}
