"""Every shipped config starts: its summary has the parameter count its docstring
states, and it trains for one step at tiny width from its command-line overrides
and evaluates (``launch.py`` itself runs one of them).

A config that cannot start (a bad key, a choice for a field the model lacks)
cannot land.  Full-size lowering is ``test_accelerators.py``'s; device counts are
``test_device_counts.py``'s.
"""

import importlib
import os
import re
import subprocess
import sys

import pytest

from jaxres import main
from jaxres.data import datasets

from conftest import ROOT, tiny_width
from test_device_counts import CONFIGS


def _docstring_parameter_count(name: str) -> int | None:
    doc = importlib.import_module(f'configs.{name}').__doc__ or ''
    found = re.search(r'\(([\d,]+) parameters\)', doc.split('\n\n')[0])
    return int(found.group(1).replace(',', '')) if found else None


@pytest.mark.parametrize('name', CONFIGS)
def test_summary_counts_the_parameters_the_docstring_states(name):
    config = main.load_config(os.path.join(ROOT, 'configs', f'{name}.py'))
    lines = main.summarize(config).strip().splitlines()
    total = int(lines[-1].removeprefix('Total parameters: ').replace(',', ''))
    stated = _docstring_parameter_count(name)
    if stated is not None:
        assert total == stated, (name, total, stated)


def _override(key: str, value) -> str:
    text = repr(value) if not isinstance(value, tuple) else '(' + ','.join(map(repr, value)) + (
        ',)' if len(value) == 1 else ')')
    return f'--config.{key}={text}'


def tiny_overrides(name: str) -> list[str]:
    """Command-line overrides: the config at tiny width (``tiny_width``), on generated
    images of its data set's class count and size, one training step."""
    config = importlib.import_module(f'configs.{name}').get_config()
    before = {k: config.model[k] for k in config.model}
    small = tiny_width(importlib.import_module(f'configs.{name}').get_config())
    args = [_override(f'model.{k}', v) for k, v in small.model.items() if before[k] != v]
    if small.data.image_size:
        args.append(_override('data.image_size', small.data.image_size))
    num_classes, shape = datasets.KNOWN_SHAPES[config.dataset]
    args += ['--config.dataset=synthetic', f'--config.synthetic.num_classes={num_classes}',
             f'--config.synthetic.image_size={shape[0] or 64}',
             f'--config.synthetic.num_train={max(config.batch_size, 10 * num_classes)}',
             '--config.synthetic.num_eval=50', '--config.num_train_steps=1',
             '--config.validation_size=0', '--config.train_subset=0',
             # Generated data lives in memory: the streamed config reads it resident.
             '--config.input.kind=resident', '--config.checkpoint.async_save=False']
    return args


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_trains_one_step_at_tiny_width(name, tmp_path, capsys):
    """What launch.py does after reading its flags: the overrides parsed as the command
    line's, then ``main.run`` (validation, data, one step, evaluation, checkpoint)."""
    path = os.path.join(ROOT, 'configs', f'{name}.py')
    config = main.load_config(path, tiny_overrides(name))
    assert main.run(config, str(tmp_path / 'w'), 'train') == 0, capsys.readouterr().err[-3000:]
    assert re.search(r'step 1: test accuracy [\d.]+', capsys.readouterr().out)
    assert os.path.exists(tmp_path / 'w' / 'eval_results.json')


def test_launch_trains_a_wide_resnet_one_step(tmp_path):
    """The command line itself, on the family whose configs once could not start."""
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'launch.py'), '--config',
         'configs/cifar100_wrn28_10.py', '--workdir', str(tmp_path / 'w'),
         *tiny_overrides('cifar100_wrn28_10')],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-1500:] + out.stderr[-3000:]
    assert 'Traceback' not in out.stderr
    assert re.search(r'step 1: test accuracy [\d.]+', out.stdout), out.stdout[-1500:]
