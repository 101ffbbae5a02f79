"""``--mode=summary``: the parameter table and total, without training."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
from clu import parameter_overview

from jaxres import models, train


def model_summary(config: ml_collections.ConfigDict, num_classes: int,
                  image_shape: tuple[int, int, int]) -> str:
    """The clu parameter table, then ``Total parameters: N`` (nothing compiled)."""
    model = models.create_model(config.model, num_classes, train.compute_dtype(config))
    shape = train.model_input_shape(config, image_shape)
    variables = jax.eval_shape(functools.partial(
        model.init, jax.random.key(0), jnp.zeros((1,) + shape), train=False))
    table = parameter_overview.get_parameter_overview(variables['params'], include_stats=False)
    stats = models.count_params(variables.get('batch_stats', {}))
    total = models.count_params(variables['params'])
    return (f'{table}\nInput: {shape}, classes: {num_classes}, BatchNorm statistics '
            f'(not trained): {stats:,}\nTotal parameters: {total:,}')
