"""launch.py end to end, as a user runs it (subprocesses)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxres.data import prepare

from conftest import ROOT


def _launch(*args, env=None):
    run_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), *args],
                          capture_output=True, text=True, cwd=ROOT, env=run_env, timeout=600)


def test_summary_ends_with_the_exact_parameter_count():
    out = _launch('--config', 'configs/cifar10_resnet18.py', '--mode=summary')
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == 'Total parameters: 11,173,962'


@pytest.mark.parametrize('override,expected', [
    ('--config.schedule.lerning_rate=1', "'--config.schedule.lerning_rate=1'"),
    ('--config.dataset=no_such_dataset', "dataset 'no_such_dataset' is neither in TFDS"),
    ('--config.batch_size=100', 'the nearest global batch sizes that do are 96 or 104'),
])  # the other mistakes, in-process: tests/test_main.py
def test_user_mistakes_get_one_clear_line(tmp_path, override, expected):
    out = _launch('--config', 'configs/quickstart.py', '--workdir', str(tmp_path / 'w'), override,
                  '--config.data_dir=' + str(tmp_path / 'nodata'))
    assert out.returncode != 0
    message = out.stderr[out.stderr.find('error:'):]
    assert out.stderr.count('error:') == 1 and expected in message, out.stderr[-2000:]
    assert 'Traceback' not in out.stderr


def test_one_epoch_on_a_prepared_tfds_dataset_then_eval(tmp_path):
    # A small image-folder data set, prepared with the offline tool, read by TFDS.
    rng = np.random.default_rng(0)
    for split, n in (('train', 24), ('test', 10)):
        for cls, level in (('dark', 40), ('light', 200)):
            d = tmp_path / 'src' / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                img = np.clip(rng.normal(level, 30, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f'{i}.png')
    data_dir = str(tmp_path / 'tfds')
    assert prepare.main(['--source', str(tmp_path / 'src'), '--data_dir', data_dir]) == 0
    workdir = str(tmp_path / 'run')
    common = ['--config', 'configs/quickstart.py', '--workdir', workdir, '--config.dataset=src',
              '--config.data_dir=' + data_dir, '--config.data.mean=(0.5,0.5,0.5)',
              '--config.data.std=(0.25,0.25,0.25)', '--config.batch_size=16',
              '--config.eval_batch_size=8', '--config.num_epochs=1']
    out = _launch(*common)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'OpenCV' not in out.stderr  # TFDS's advice to its own users
    with open(os.path.join(workdir, 'eval_results.json')) as f:
        trained = json.load(f)
    assert trained['num_examples'] == 20 and trained['step'] == 3
    out = _launch(*common, '--mode=eval')
    assert out.returncode == 0, out.stderr[-3000:]
    with open(os.path.join(workdir, 'eval_results.json')) as f:
        evaluated = json.load(f)
    assert evaluated['accuracy'] == pytest.approx(trained['accuracy'])
    assert evaluated['step'] == 3


def test_eval_without_checkpoint_says_so(tmp_path):
    out = _launch('--config', 'configs/quickstart.py', '--workdir', str(tmp_path), '--mode=eval')
    assert out.returncode == 2
    assert 'no checkpoint' in out.stderr.strip().splitlines()[-1]


def test_console_shows_jaxres_lines_not_library_start_up_noise(tmp_path):
    # As a user's shell has it: none of the test suite's logging variables.
    env = {k: v for k, v in os.environ.items()
           if k not in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS')}
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), '--config',
                          'configs/quickstart.py', '--workdir', str(tmp_path / 'w'),
                          '--config.num_train_steps=3', '--config.dtype=bfloat16',
                          '--config.log_every_steps=1'],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    console = out.stdout + out.stderr
    for noise in ('oneDNN', 'absl::InitializeLog', 'Unable to initialize backend',
                  'port.cc', 'cpu_feature_guard', 'TensorFlow binary is optimized',
                  'Setting work unit notes', 'steps_per_sec'):
        assert noise not in console, noise
    assert 'test accuracy' in out.stdout  # jaxres's own lines are still there
    # One progress line per log step: jaxres's, with its rate and ETA.
    progress = [line for line in console.splitlines() if 'images/s |' in line]
    assert [line.split('step ')[-1].split('/')[0] for line in progress] == ['1', '2', '3'], \
        console[-3000:]
    # The one warning that matters here: bfloat16 is slow on a CPU without bf16
    # instructions (with them, 'auto' takes the onednn lowering and says nothing).
    from jaxres.cpu import onednn  # pylint: disable=g-import-not-at-top
    assert sum('bfloat16 runs slower than float32' in line
               for line in console.splitlines()) == (0 if onednn.cpu_has_bf16() else 1), \
        console[-3000:]
