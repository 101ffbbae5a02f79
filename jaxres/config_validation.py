"""Checks a config before anything is compiled; one clear message per mistake."""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from jaxres import models
from jaxres.cpu import backend
from jaxres.data import datasets, preprocess


class ConfigError(ValueError):
    """An invalid config value; the message names the key and what it accepts."""


_CHOICES = {
    'dtype': ('float32', 'bfloat16'),
    'backend.conv': backend.CONV_CHOICES,
    'backend.max_pool': backend.MAX_POOL_CHOICES,
    'backend.packed_pixels': backend.SWITCH_CHOICES,
    'backend.hugepages': backend.SWITCH_CHOICES,
    'optimizer.name': ('sgd', 'adam', 'muon'),
    'optimizer.weight_decay_mode': ('coupled', 'decoupled', 'loss'),
    'schedule.name': ('warmup_cosine', 'constant', 'step', 'multistep', 'exponential',
                      'cosine_epochs', 'onecycle'),
    'schedule.anneal': ('cos', 'linear'),
    'data.standardize': ('channel', 'scalar', 'image'),
    'nonfinite': ('stop', 'skip'),
    'input.kind': ('auto', 'resident', 'streaming'),
    'validation_from': ('random', 'end'),
}

_NON_NEGATIVE = ('schedule.learning_rate', 'schedule.end_learning_rate', 'schedule.warmup_epochs',
                 'optimizer.weight_decay', 'optimizer.momentum', 'optimizer.grad_clip_value',
                 'optimizer.grad_clip_norm', 'label_smoothing', 'data.image_size',
                 'validation_size', 'schedule.decay_rate', 'schedule.epoch_offset', 'schedule.base_momentum',
                 'schedule.max_momentum', 'optimizer.lookahead_every', 'input.resident_budget_gb',
                 'input.workers', 'eval.every_steps', 'checkpoint.every_steps',
                 'checkpoint.every_minutes', 'data.eval_resize', 'train_subset')
_POSITIVE = ('batch_size', 'eval_batch_size', 'num_epochs', 'log_every_steps',
             'eval.every_epochs', 'checkpoint.every_epochs', 'checkpoint.max_to_keep',
             'steps_per_dispatch', 'schedule.decay_epochs',
             'schedule.div_factor', 'schedule.final_div_factor',
             'optimizer.bn_bias_lr_scale', 'grad_accum_steps',
             'optimizer.muon_ns_steps', 'input.prefetch')


_REQUIRED = object()


def lookup(tree: Any, dotted: str, default: Any = _REQUIRED) -> Any:
    """``tree['a']['b']`` for ``dotted='a.b'``, in a ConfigDict or nested dicts;
    ``default`` where a part is missing (without one: KeyError)."""
    for part in dotted.split('.'):
        try:
            tree = tree[part]
        except (KeyError, TypeError, IndexError):
            if default is _REQUIRED:
                raise KeyError(dotted) from None
            return default
    return tree


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first invalid key."""
    for key, choices in _CHOICES.items():
        value = lookup(config, key)
        if value not in choices:
            raise ConfigError(f'config.{key}={value!r} is not valid; choose one of {list(choices)}.')
    for key in _NON_NEGATIVE:
        if lookup(config, key) < 0:
            raise ConfigError(f'config.{key}={lookup(config, key)!r} must be >= 0.')
    for key in _POSITIVE:
        if lookup(config, key) <= 0:
            raise ConfigError(f'config.{key}={lookup(config, key)!r} must be > 0.')
    _validate_model(config.model)
    if len(config.data.mean) != len(config.data.std):
        raise ConfigError('config.data.mean and config.data.std differ in length.')
    _validate_preprocessing(config)
    if not 0 <= config.schedule.pct_start < 1:  # 0: no warm-up, straight down
        raise ConfigError(f'config.schedule.pct_start={config.schedule.pct_start!r} must be '
                          'in [0, 1).')
    if config.eval.tta_translate and not config.eval.tta:
        raise ConfigError('config.eval.tta_translate=True needs config.eval.tta=True (the '
                          'translated views are averaged with their mirror images).')
    if not 0 <= config.optimizer.ema_decay < 1:
        raise ConfigError(f'config.optimizer.ema_decay={config.optimizer.ema_decay!r} must be '
                          'in [0, 1) (0 = no EMA; e.g. 0.999).')
    if not 0 <= config.optimizer.lookahead_decay <= 1:
        raise ConfigError(f'config.optimizer.lookahead_decay={config.optimizer.lookahead_decay!r}'
                          ' must be in [0, 1].')
    if isinstance(config.optimizer.freeze, str):
        raise ConfigError(f'config.optimizer.freeze={config.optimizer.freeze!r} must be a '
                          "tuple of path prefixes, e.g. ('stem/conv/kernel',).")
    if not config.dataset:
        raise ConfigError("config.dataset is empty; e.g. --config.dataset=cifar10.")
    _validate_train_subset(config)


def _validate_train_subset(config: ml_collections.ConfigDict) -> None:
    """``train_subset`` takes the same count from every class: a multiple of the class
    count, checked here when the data set's classes are known without reading it
    (else when it is loaded, ``ImageDataset.class_balanced_subset``)."""
    n = config.train_subset
    known = datasets.KNOWN_SHAPES.get(config.dataset, (None,))[0]
    classes = config.synthetic.num_classes if config.dataset == 'synthetic' else known
    if n and classes and n % classes:
        raise ConfigError(f'config.train_subset={n} must be a multiple of the {classes} '
                          f'classes of {config.dataset!r} (the same count from each), e.g. '
                          f'{(n // classes + 1) * classes}.')


# Model keys that count things (> 0); every other number must be >= 0, and a
# rate (dropout, stochastic depth) < 1.
_MODEL_COUNTS = ('depth', 'stem_width', 'whiten_kernel', 'whiten_samples', 'widen_factor')


def _validate_model(m: ml_collections.ConfigDict) -> None:
    """``config.model`` against its family's keys and the registries' choices."""
    try:
        family = models.family_of(m)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    keys = models.config_keys(family)
    unknown = sorted(set(m) - set(keys) - {'family'})
    if unknown:
        name = m.get('family', 'resnet')
        raise ConfigError(f'config.model has keys {unknown} that the {name!r} family does not '
                          f'take; its keys are {sorted(keys)}.')
    for key, choices in getattr(family, 'choices', {}).items():
        if m[key] not in choices:
            raise ConfigError(f'config.model.{key}={m[key]!r} is not valid; choose one of '
                              f'{list(choices)}.')
    for key, value in m.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in _MODEL_COUNTS and value <= 0:
            raise ConfigError(f'config.model.{key}={value!r} must be > 0.')
        if value < 0:
            raise ConfigError(f'config.model.{key}={value!r} must be >= 0.')
        if ('dropout' in key or key.endswith('_rate') or key == 'stochastic_depth') and value >= 1:
            raise ConfigError(f'config.model.{key}={value!r} must be in [0, 1).')
    if m.get('family', 'resnet') == 'resnet':
        _validate_resnet_stages(m)


def _validate_resnet_stages(m: ml_collections.ConfigDict) -> None:
    if not m.stage_sizes and m.depth not in models.DEPTHS:
        raise ConfigError(f'config.model.depth={m.depth!r} is not valid; choose one of '
                          f'{sorted(models.DEPTHS)} or set config.model.stage_sizes.')
    for key in ('stage_widths', 'stage_strides'):
        given = tuple(m[key])
        n = len(m.stage_sizes) or len(models.DEPTHS.get(m.depth, ('', ()))[1])
        if given and len(given) != n:
            raise ConfigError(f'config.model.{key} has {len(given)} entries for {n} stages.')


def _validate_preprocessing(config: ml_collections.ConfigDict) -> None:
    """The preprocessing specs parse and are in a valid order; normalisation matches."""
    d = config.data
    for split, key in (('train', 'data.train_pp'), ('eval', 'data.eval_pp'),
                       ('predict', 'predict.pp')):
        try:
            preprocess.Preprocess.from_config(config, split)
        except preprocess.SpecError as e:
            raise ConfigError(f'config.{key}: {e}') from None
    if d.standardize == 'scalar' and len(d.mean) != 1:
        raise ConfigError(f"config.data.standardize='scalar' needs one mean and std, e.g. "
                          f'config.data.mean=(0.4734,); got {len(d.mean)} values.')


def check_batch_splits(batch_size: int, num_devices: int, accum_steps: int = 1) -> None:
    """The global batch must split evenly over the devices and into the micro-batches.

    (A micro-batch itself may split unevenly over the devices: XLA pads it.)
    """
    unit = math.lcm(num_devices, accum_steps)
    if batch_size % unit == 0:
        return
    lower, upper = batch_size // unit * unit, (batch_size // unit + 1) * unit
    nearest = f'{lower} or {upper}' if lower else str(upper)
    parts = f'{num_devices} devices' + (f' and {accum_steps} micro-batches (grad_accum_steps)'
                                        if accum_steps > 1 else '')
    raise ConfigError(f'config.batch_size={batch_size} does not split evenly over {parts}; '
                      f'the nearest global batch sizes that do are {nearest} '
                      f'(--config.batch_size={upper}).')


def validate_for_data(config: ml_collections.ConfigDict, info, num_devices: int) -> None:
    """Checks that need the data set's ``DataInfo`` and the device count."""
    check_batch_splits(config.batch_size, num_devices, config.grad_accum_steps)
    n = info.num_train
    if config.batch_size > n:
        raise ConfigError(f'config.batch_size={config.batch_size} exceeds the {n} training '
                          'examples.')
    channels = info.channels
    jitter = preprocess.Preprocess.from_config(config).find('color_jitter')
    if channels != 3 and jitter and (jitter['saturation'] or jitter['hue']):
        raise ConfigError(f'config.data.train_pp: color_jitter saturation/hue need colour '
                          f'images; these have {channels} channel(s).')
