"""Model families in Flax Linen, built from small interchangeable parts.

``config.model.family`` names a registered family (``registry.FAMILIES``):
'resnet' (``resnet.py``: every seed's ResNet, torchvision's layouts), 'airbench'
(``airbench.py``: the speedrun net), 'wide_resnet' (``wide_resnet.py``).  A
family is a Flax module whose dataclass fields *are* its config keys, so the
model is ``Family(**config.model)`` plus what the run decides (class count,
compute dtype, lowerings); ``model_config`` writes a family's keys with their
defaults.  Adding a family: a module in this package whose class is decorated
with ``@register(FAMILIES, 'name')`` and imported below.

Usage (pure functions, explicit ``train`` flag)::

    model = create_model(config.model, num_classes=10)
    variables = model.init(rng, images, train=False)
    logits, updates = model.apply(variables, images, train=True,
                                  mutable=['batch_stats'], rngs={'dropout': key})
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from jaxres.models import airbench, layers, resnet, wide_resnet  # registers the families
from jaxres.models.airbench import max_pool_tiles, whitening_kernel
from jaxres.models.layers import ACTIVATIONS, KERNEL_INITS, BatchNorm, BiasConv
from jaxres.models.registry import FAMILIES
from jaxres.models.resnet import BLOCKS, DEPTHS, SHORTCUTS, STEMS, ResNet

# Fields a family takes from the run, not from config.model (and Flax's own).
RUN_FIELDS = ('num_classes', 'dtype', 'conv_impl', 'max_pool', 'parent', 'name')


def family_of(model_config: Mapping[str, Any]) -> type:
    """The registered family class ``model_config`` names (default 'resnet')."""
    name = model_config.get('family', 'resnet')
    if name not in FAMILIES:
        raise ValueError(f'config.model.family={name!r} is not valid; choose one of '
                         f'{sorted(FAMILIES)}.')
    return FAMILIES[name]


def config_keys(family: type) -> dict[str, Any]:
    """A family's config keys with their defaults (its fields minus ``RUN_FIELDS``)."""
    return {f.name: f.default for f in dataclasses.fields(family)
            if f.name not in RUN_FIELDS and f.default is not dataclasses.MISSING}


def model_config(family: str, **overrides: Any) -> ml_collections.ConfigDict:
    """``config.model`` for ``family``: every key it takes, defaults then ``overrides``
    (so each can be set from the command line, ``--config.model.KEY=...``)."""
    keys = config_keys(family_of({'family': family}))
    unknown = sorted(set(overrides) - set(keys))
    if unknown:
        raise ValueError(f'model family {family!r} has no keys {unknown}; it takes '
                         f'{sorted(keys)}.')
    return ml_collections.ConfigDict({'family': family, **keys, **overrides})


def create_model(model_config: Mapping[str, Any], num_classes: int,
                 dtype: Any = jnp.float32, conv_impl: str = 'xla', max_pool: str = 'xla'
                 ) -> Any:
    """``Family(**config.model)`` for this run's class count, compute dtype and the
    backend's lowerings (``backend.choose``; a family takes those it declares)."""
    family = family_of(model_config)
    settings = {k: v for k, v in model_config.items() if k != 'family'}
    unknown = sorted(set(settings) - set(config_keys(family)))
    if unknown:
        raise ValueError(f'config.model has keys {unknown} that the '
                         f'{model_config.get("family", "resnet")!r} family does not take.')
    run = resnet.declared(family, dict(conv_impl=conv_impl, max_pool=max_pool))
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    return family(num_classes=num_classes, dtype=dtype, **run, **settings)


def with_lowerings(model: Any, conv_impl: str = 'xla', max_pool: str = 'xla') -> Any:
    """``model`` with other lowerings (those its family declares): same parameters,
    e.g. XLA's own convolutions for a FLOP count."""
    return model.clone(**resnet.declared(type(model), dict(conv_impl=conv_impl,
                                                            max_pool=max_pool)))


def data_init_size(model: Any) -> int:
    """How many normalised training images ``model.kernels_from_data`` reads at
    initialisation (airbench's whitening stem); 0 for families without it."""
    return model.whiten_samples if hasattr(model, 'kernels_from_data') else 0


def count_params(params: Any) -> int:
    """Number of trainable scalars in a params pytree (works on ShapeDtypeStructs)."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def compute_dtype(name: str) -> Any:
    """``config.dtype`` ('float32' | 'bfloat16') -> the activations' dtype."""
    return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[name]


__all__ = ['ACTIVATIONS', 'BLOCKS', 'BatchNorm', 'BiasConv', 'DEPTHS', 'FAMILIES',
           'KERNEL_INITS', 'ResNet', 'SHORTCUTS', 'STEMS', 'airbench', 'count_params',
           'compute_dtype', 'config_keys', 'create_model', 'data_init_size', 'family_of',
           'layers', 'max_pool_tiles', 'model_config', 'resnet',
           'whitening_kernel', 'wide_resnet', 'with_lowerings']
