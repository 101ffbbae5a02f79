"""The one inference path: a checkpoint restored for ``--mode=eval``, ``--mode=predict``
and ``--mode=export``.

``load_for_inference`` opens the checkpoint ``config.eval.checkpoint`` selects
(its EMA weights where ``config.eval.ema`` asks), builds the model from the
config, checks the restored tree against it and returns an ``Inference``: the
model, its variables and the evaluation preprocessing, which the three modes
use as they need (batched evaluation, probabilities, an exported program).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxres import checkpointing, evaluate, models, sharding
from jaxres.cpu import backend
from jaxres.data import datasets, preprocess

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Inference:
    """A restored classifier with the preprocessing it was evaluated with."""

    model: nn.Module
    variables: dict[str, Any]  # {'params', 'batch_stats'}
    pipeline: preprocess.Preprocess  # uint8 images -> the model's input
    dtype: Any
    tta_flip: bool
    tta_translate: bool
    meta: dict[str, Any]  # what the checkpoint recorded (class names, image shape, config)
    step: int
    checkpoint: str  # the step directory it came from

    @property
    def num_classes(self) -> int:
        return int(self.variables['params']['head']['kernel'].shape[-1])

    def logits(self, variables: dict[str, Any], images: Array) -> Array:
        """Float32 logits of uint8 (N, H, W, C) images (with TTA: log-probabilities)."""
        return evaluate.logits(variables, images, apply_fn=self.model.apply,
                               pipeline=self.pipeline, dtype=self.dtype, tta_flip=self.tta_flip,
                               tta_translate=self.tta_translate)

    def probabilities_fn(self) -> Callable[[Array], Array]:
        """``images -> softmax probabilities`` with the variables closed over (what an
        exported program computes)."""
        variables = jax.device_get(self.variables)
        return lambda images: jax.nn.softmax(self.logits(variables, images))

    def evaluator(self, mesh: jax.sharding.Mesh,
                  class_names: tuple[str, ...] | None = None) -> evaluate.Evaluator:
        return evaluate.Evaluator(self.model.apply, mesh, self.pipeline, self.dtype,
                                  tta_flip=self.tta_flip, tta_translate=self.tta_translate,
                                  class_names=class_names)


def load_for_inference(config: ml_collections.ConfigDict, workdir: str,
                       image_shape: Sequence[int | None] | None = None, *,
                       mesh: jax.sharding.Mesh | None = None, purpose: str = 'eval',
                       portable: bool = False) -> Inference:
    """Restores ``config.eval.checkpoint`` for images of ``image_shape`` (H, W, C).

    ``image_shape`` None: the shape the checkpoint was trained on.  ``purpose``
    picks the preprocessing spec ('eval': ``data.eval_pp``; 'predict':
    ``predict.pp``).  ``portable``: the plain XLA lowerings (``lax.conv``,
    ``reduce_window``) whatever this machine's backend, as an exported program
    runs elsewhere; they compute the same function.
    """
    mesh = mesh or sharding.make_data_mesh()
    manager, step = checkpointing.open_checkpoint(config.eval.checkpoint, workdir,
                                                  config.checkpoint.best_metric)
    meta = checkpointing.read_meta(manager, step)
    config = evaluate.with_saved_normalization(config, meta)
    restored = checkpointing.restore_variables(
        manager, step, sharding.replicated(mesh),
        use_ema=bool(config.eval.ema and config.optimizer.ema_decay > 0))
    num_classes = int(restored['params']['head']['kernel'].shape[-1])
    dtype = models.compute_dtype(config.dtype)
    choices = backend.Choices('portable') if portable else backend.choose(config)
    model = models.create_model(config.model, num_classes, dtype, choices.conv, choices.max_pool)
    shape = tuple(image_shape or meta.get('image_shape') or ())
    if len(shape) != 3 or None in datasets.model_input_shape(shape, config.data.image_size):
        raise checkpointing.CheckpointError(
            f'the checkpoint records images of shape {shape or "(none)"}; give a fixed '
            '(H, W, C) or set config.data.image_size.')
    variables = check_variables(model, restored,
                                datasets.model_input_shape(shape, config.data.image_size))
    return Inference(model, variables, preprocess.Preprocess.from_config(config, purpose), dtype,
                     bool(config.eval.tta), bool(config.eval.tta_translate), meta, int(step),
                     f'{manager.directory}/{step}')


def checkpoint_meta(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """What the checkpoint ``config.eval.checkpoint`` selects recorded (no array is read)."""
    manager, step = checkpointing.open_checkpoint(config.eval.checkpoint, workdir,
                                                  config.checkpoint.best_metric)
    return checkpointing.read_meta(manager, step)


def check_variables(model: nn.Module, restored: dict[str, Any],
                    image_shape: Sequence[int]) -> dict[str, Any]:
    """Checks the restored tree against ``model`` (built from the config) at this input."""
    expected = jax.eval_shape(functools.partial(
        model.init, jax.random.key(0), jnp.zeros((1,) + tuple(image_shape)), train=False))
    want = leaf_shapes({k: expected.get(k, {}) for k in ('params', 'batch_stats')})
    got = leaf_shapes(restored)
    for key in sorted(set(want) | set(got)):
        if want.get(key) != got.get(key):
            raise checkpointing.CheckpointError(
                f'the checkpoint does not fit config.model for {tuple(image_shape)} images: '
                f'{key} is {got.get(key, "missing")} in the checkpoint but '
                f'{want.get(key, "missing")} in the model. Use the --config the checkpoint '
                'was trained with.')
    return restored


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{"['params']['head']['kernel']": shape, ...}`` of a pytree."""
    return {jax.tree_util.keystr(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}
