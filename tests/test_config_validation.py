"""config_validation: every shipped config passes; each kind of bad value is one
ConfigError that names the key, what it accepts and, where one exists, the fix."""

import glob
import os

import numpy as np
import pytest

from jaxres import config_validation, main
from jaxres.config_validation import ConfigError
from jaxres.data import datasets

from conftest import ROOT, tiny_config

CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


@pytest.mark.parametrize('path', [p for p in CONFIGS if not p.endswith('__init__.py')],
                         ids=os.path.basename)
def test_every_shipped_config_is_valid(path):
    config_validation.validate(main.load_config(path))


@pytest.mark.parametrize('overrides, message', [
    ({'nonfinite': 'ignore'}, "config.nonfinite='ignore' is not valid; choose one of "
                              "['stop', 'skip']."),
    ({'optimizer.momentum': -0.9}, 'config.optimizer.momentum=-0.9 must be >= 0.'),
    ({'batch_size': 0}, 'config.batch_size=0 must be > 0.'),
    ({'schedule.pct_start': 1.0}, 'config.schedule.pct_start=1.0 must be in [0, 1).'),
    ({'optimizer.ema_decay': 1.0}, 'config.optimizer.ema_decay=1.0 must be in [0, 1)'),
    ({'dataset': ''}, 'config.dataset is empty; e.g. --config.dataset=cifar10.'),
    ({'data.std': (0.25, 0.25)}, 'config.data.mean and config.data.std differ in length.'),
    ({'eval.tta_translate': True, 'eval.tta': False},
     'config.eval.tta_translate=True needs config.eval.tta=True'),
])
def test_a_bad_value_is_one_error_naming_its_key(overrides, message):
    config_validation.validate(tiny_config())
    with pytest.raises(ConfigError) as e:
        config_validation.validate(tiny_config(**overrides))
    assert message in str(e.value)


def test_lookup_reads_dotted_keys_of_configs_and_dicts():
    config = tiny_config()
    assert config_validation.lookup(config, 'schedule.name') == config.schedule.name
    assert config_validation.lookup({'a': {'b': 3}}, 'a.b') == 3
    assert config_validation.lookup({'a': {}}, 'a.b', None) is None
    with pytest.raises(KeyError, match='a.b'):
        config_validation.lookup({'a': 1}, 'a.b')


@pytest.mark.parametrize('batch, devices, accum, names', [
    (100, 8, 1, 'over 8 devices; the nearest global batch sizes that do are 96 or 104 '
                '(--config.batch_size=104).'),
    (4, 8, 1, 'over 8 devices; the nearest global batch sizes that do are 8 '),
    (50, 8, 3, 'over 8 devices and 3 micro-batches (grad_accum_steps); the nearest global '
               'batch sizes that do are 48 or 72'),
])
def test_a_batch_that_does_not_split_names_the_nearest_that_do(batch, devices, accum, names):
    config_validation.check_batch_splits(batch - batch % (8 * accum) or 8 * accum, devices,
                                         accum)
    with pytest.raises(ConfigError) as e:
        config_validation.check_batch_splits(batch, devices, accum)
    assert f'config.batch_size={batch} does not split evenly {names}' in str(e.value)


def test_checks_against_the_data_name_the_count_or_the_channels():
    small = datasets.ImageDataset.from_arrays(*_arrays(16, 3))
    with pytest.raises(ConfigError, match='batch_size=32 exceeds the 16 training examples'):
        config_validation.validate_for_data(tiny_config(), small.info(), 8)
    grey = datasets.ImageDataset.from_arrays(*_arrays(64, 1))
    jitter = tiny_config(**{'data.train_pp': 'color_jitter(0.1, 0.1, 0.1, 0.1)|normalize',
                            'data.mean': (0.5,), 'data.std': (0.25,)})
    with pytest.raises(ConfigError, match='saturation/hue need colour images; these have 1'):
        config_validation.validate_for_data(jitter, grey.info(), 8)


def _arrays(n, channels):
    x = np.zeros((n, 8, 8, channels), np.uint8)
    y = np.arange(n) % 4
    return x, y, x[:8], y[:8]
