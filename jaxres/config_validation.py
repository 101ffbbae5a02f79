"""Checks a config before anything is compiled; one clear message per mistake."""

from __future__ import annotations

import ml_collections

from jaxres import models


class ConfigError(ValueError):
    """An invalid config value; the message names the key and what it accepts."""


_CHOICES = {
    'dtype': ('float32', 'bfloat16'),
    'model.block': ('basic', 'bottleneck', 'preact'),
    'model.stem': ('cifar', 'imagenet', 'deep', 'conv7x7_bias'),
    'model.shortcut': ('conv1x1', 'conv3x3', 'avgpool_conv1x1'),
    'model.bottleneck_stride_on': ('3x3', '1x1'),
    'model.activation': tuple(models.ACTIVATIONS),
    'model.head_pool': ('avg', 'max'),
    'model.kernel_init': tuple(models.KERNEL_INITS),
    'model.dense_init': tuple(models.KERNEL_INITS),
    'optimizer.name': ('sgd', 'adam'),
    'optimizer.weight_decay_mode': ('coupled', 'decoupled', 'loss'),
    'schedule.name': ('warmup_cosine', 'constant'),
    'data.padding_mode': ('constant', 'reflect'),
    'nonfinite': ('stop', 'skip'),
}

_NON_NEGATIVE = ('schedule.learning_rate', 'schedule.end_learning_rate', 'schedule.warmup_epochs',
                 'optimizer.weight_decay', 'optimizer.momentum', 'optimizer.grad_clip_value',
                 'optimizer.grad_clip_norm', 'label_smoothing', 'data.crop_padding',
                 'data.image_size', 'model.stem_dropout', 'model.block_dropout',
                 'validation_size')
_POSITIVE = ('batch_size', 'eval_batch_size', 'num_epochs', 'log_every_steps',
             'eval.every_epochs', 'checkpoint.every_epochs', 'checkpoint.max_to_keep',
             'model.stem_width', 'steps_per_dispatch')


def _get(config: ml_collections.ConfigDict, dotted: str):
    value = config
    for part in dotted.split('.'):
        value = value[part]
    return value


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first invalid key."""
    for key, choices in _CHOICES.items():
        value = _get(config, key)
        if value not in choices:
            raise ConfigError(f'config.{key}={value!r} is not valid; choose one of {list(choices)}.')
    for key in _NON_NEGATIVE:
        if _get(config, key) < 0:
            raise ConfigError(f'config.{key}={_get(config, key)!r} must be >= 0.')
    for key in _POSITIVE:
        if _get(config, key) <= 0:
            raise ConfigError(f'config.{key}={_get(config, key)!r} must be > 0.')
    m = config.model
    if not m.stage_sizes and m.depth not in models.DEPTHS:
        raise ConfigError(f'config.model.depth={m.depth!r} is not valid; choose one of '
                          f'{sorted(models.DEPTHS)} or set config.model.stage_sizes.')
    for key in ('stage_widths', 'stage_strides'):
        given = tuple(m[key])
        n = len(m.stage_sizes) or len(models.DEPTHS.get(m.depth, ('', ()))[1])
        if given and len(given) != n:
            raise ConfigError(f'config.model.{key} has {len(given)} entries for {n} stages.')
    if len(config.data.mean) != len(config.data.std):
        raise ConfigError('config.data.mean and config.data.std differ in length.')
    if not config.dataset:
        raise ConfigError("config.dataset is empty; e.g. --config.dataset=cifar10.")


def validate_for_data(config: ml_collections.ConfigDict, ds, num_devices: int) -> None:
    """Checks that need the data set and the device count."""
    for key in ('batch_size', 'eval_batch_size'):
        if config[key] % num_devices:
            raise ConfigError(f'config.{key}={config[key]} is not divisible by the '
                              f'{num_devices} devices; use a multiple of {num_devices}.')
    n = len(ds.train_labels)
    if config.batch_size > n:
        raise ConfigError(f'config.batch_size={config.batch_size} exceeds the {n} training '
                          'examples.')
    channels = ds.image_shape[-1]
    if len(config.data.mean) not in (1, channels):
        raise ConfigError(f'config.data.mean has {len(config.data.mean)} entries but the '
                          f'images have {channels} channel(s).')
