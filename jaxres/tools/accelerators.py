"""What a config would run on a GPU or TPU, checked on a machine without one.

* ``export_steps``: the train step and the eval step, sharded over a mesh,
  lowered with ``jax.export`` for ``platforms=('cuda', 'tpu')`` with the
  choices jaxres makes there (``backend.choose``: XLA convolutions, uint8
  images), as ``tests/test_accelerators.py`` checks for every config.
* ``step_memory``: XLA's memory analysis of the compiled train step (what one
  step allocates besides its inputs) for a per-device batch, behind the
  README's memory table (``benchmarks/memory_table.py``).

Shapes come from the config alone (``datasets.KNOWN_SHAPES``); nothing is
read from disk and no array of the data set's size is allocated.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import export

from jaxres import models, sharding, train
from jaxres.data import datasets, resident

# Custom calls allowed in an exported step: sharding annotations only.  A host
# callback or a CPU library call (LAPACK, DUCC FFT, ...) would not run there.
PORTABLE_CUSTOM_CALLS = ('Sharding', 'SPMDFullToShardShape', 'SPMDShardToFullShape',
                         'shard_map', 'xla.sdy.GlobalToLocalShape',
                         'xla.sdy.LocalToGlobalShape')


def shaped_dataset(config: ml_collections.ConfigDict, num_train: int, num_eval: int
                   ) -> datasets.ImageDataset:
    """Zeros of the config's image shape and class count (no files, tiny ``num_*``)."""
    num_classes, shape = datasets.KNOWN_SHAPES[config.dataset]
    labels = lambda n: np.arange(n, dtype=np.int32) % num_classes
    return datasets.ImageDataset(
        train_images=np.zeros((num_train,) + shape, np.uint8), train_labels=labels(num_train),
        eval_images=np.zeros((num_eval,) + shape, np.uint8), eval_labels=labels(num_eval),
        class_names=tuple(str(i) for i in range(num_classes)))


@dataclasses.dataclass
class StepInputs:
    """A setup and abstract (shape, dtype, sharding) arguments of its steps.

    ``args`` are the train step's arguments after the state: (data, order) for
    resident input, (batch,) for streaming; ``eval_batch`` the evaluator's batch.
    """

    setup: train.TrainSetup
    state: Any
    args: tuple
    eval_batch: dict[str, jax.ShapeDtypeStruct]
    batch_fn: Any  # the input's ``batch``, run inside the step

    @property
    def step_fn(self):
        return self.setup.step_fn(self.batch_fn)


def _abstract(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _batch(shape: tuple[int, ...], keys: tuple[str, ...], mesh: jax.sharding.Mesh
           ) -> dict[str, jax.ShapeDtypeStruct]:
    spec = sharding.batch_sharded(mesh)
    dtypes = {'image': jnp.uint8, 'label': jnp.int32, 'index': jnp.int32, 'mask': jnp.bool_}
    return {k: jax.ShapeDtypeStruct(shape if k == 'image' else shape[:1], dtypes[k],
                                    sharding=spec) for k in keys}


def step_inputs(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, platform: str,
                num_train: int | None = None) -> StepInputs:
    """The setup ``platform`` would build, with abstract arguments for its steps.

    ``num_train`` (default: two global batches) only sets the training set's
    size; the step's shapes do not depend on it.  A streaming config's steps
    take read batches: nothing of the data set's size is allocated.
    """
    n = num_train or 2 * config.batch_size
    eval_size = sharding.round_up_to_devices(config.eval_batch_size, mesh.size)
    if config.input.kind == 'streaming':
        num_classes, shape = datasets.KNOWN_SHAPES[config.dataset]
        info = datasets.DataInfo(config.dataset, n, eval_size,
                                 tuple(str(i) for i in range(num_classes)), shape)
        setup = train.TrainSetup.build(config, info, mesh, platform=platform)
        image = setup.image_shape
        return StepInputs(
            setup, setup.abstract_state(),
            (_batch((config.batch_size,) + image, ('image', 'label', 'index'), mesh),),
            _batch((eval_size,) + image, ('image', 'label', 'mask'), mesh),
            setup.read_batch_ops())
    ds = shaped_dataset(config, n, eval_size)
    setup = train.TrainSetup.build(config, ds, mesh, platform=platform)
    data = resident.to_device(ds, mesh, config.eval_batch_size, setup.train_pp,
                              packed=setup.choices.packed_pixels)
    order = jax.ShapeDtypeStruct((setup.steps_per_epoch, config.batch_size), jnp.int32,
                                 sharding=sharding.replicated(mesh))
    eval_batch = {k: jax.ShapeDtypeStruct(x.shape[1:], x.dtype,
                                          sharding=sharding.batch_sharded(mesh))
                  for k, x in (('image', data.eval_images), ('label', data.eval_labels),
                               ('mask', data.eval_mask))}
    return StepInputs(setup, setup.abstract_state(), (_abstract(data), order), eval_batch,
                      setup.resident_input(data).batch)


def export_steps(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                 platforms: tuple[str, ...] = ('cuda', 'tpu')) -> dict[str, export.Exported]:
    """{'train_step', 'eval_step'} exported for ``platforms`` (all accelerators)."""
    if 'cpu' in platforms:
        raise ValueError('export_steps is for accelerators; the CPU makes other choices.')
    inputs = step_inputs(config, mesh, platforms[0])
    state = inputs.state
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    return {
        'train_step': export.export(inputs.step_fn, platforms=platforms)(state, *inputs.args),
        'eval_step': export.export(inputs.setup.evaluator.sums_fn, platforms=platforms)(
            variables, None, inputs.eval_batch),
    }


def custom_call_targets(exported: export.Exported) -> set[str]:
    """Every custom-call target named in an exported module."""
    text = exported.mlir_module()
    return (set(re.findall(r'custom_call\s*@([\w.]+)', text))
            | set(re.findall(r'call_target_name\s*=\s*"([^"]+)"', text)))


def step_memory(config: ml_collections.ConfigDict, batch_per_device: int,
                platform: str = 'cuda') -> dict[str, int]:
    """Bytes of one device's train step at ``batch_per_device``, compiled on this
    machine's first device with ``platform``'s choices (XLA convolutions).

    ``temp``: XLA's scratch for the step (activations kept for the backward
    pass, gradients, workspace); ``arguments``: the state and the data set as
    passed in; ``state``, ``params``, ``opt_state``: their parts; ``num_params``.
    """
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.batch_size = batch_per_device
        config.eval_batch_size = batch_per_device
    mesh = sharding.make_data_mesh(jax.devices()[:1])
    inputs = step_inputs(config, mesh, platform, num_train=batch_per_device)
    compiled = inputs.step_fn.lower(inputs.state, *inputs.args).compile()
    analysis = compiled.memory_analysis()
    nbytes = lambda tree: sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
                              for x in jax.tree_util.tree_leaves(tree))
    state = inputs.state
    return {
        'num_params': models.count_params(state.params),
        'temp': int(analysis.temp_size_in_bytes),
        'arguments': int(analysis.argument_size_in_bytes),
        'params': nbytes(state.params) + nbytes(state.batch_stats),
        'opt_state': nbytes(state.opt_state) + nbytes(state.lookahead),
        'state': nbytes(state),
    }
