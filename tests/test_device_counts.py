"""Every shipped config trains and evaluates unchanged on 1, 2, 4, 8 and 16 devices
and on 2 processes x 4 devices.

Each config keeps its batch sizes, gradient accumulation, augmentation,
optimizer and the kinds of its stem, blocks and head; one block per stage and
1/16 of the widths, on generated data, so that a step compiles in seconds
(every config at full size is lowered on 8 devices in ``test_accelerators.py``).
The eval batch sizes are
the configs' own (500 does not split over 8 or 16 devices: it is rounded up and
the padding masked).  ``python tests/test_device_counts.py`` runs every config
on all local devices (the 16-device and 2-process tests run it so).

Every config trains a step on the suite's 8 devices in ``test_configs.py``
(``main.run``, resident input; the speedrun's micro-batches of 500 split unevenly
there); here the streamed config runs on 8 devices through its own input and on 16
devices (a subprocess: ``CI_16_DEVICES``).  ``JAXRES_FULL_MATRIX=1`` (the
documented slow command, README "Tests") runs every config on 16 devices and on 2
processes x 4 devices, where every process reads its own slice of each batch; CI
trains on two processes in test_multiprocess, test_streaming and
test_preemption_multihost instead.  On 1 and 4 devices every config is built and its
batches checked (no compile: its batches split evenly there); the speedrun config
runs at full size on 4 devices in ``test_speedrun.py``.
"""

from __future__ import annotations

import glob
import importlib
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxres import sharding, train  # noqa: E402
from jaxres.data import datasets, resident  # noqa: E402

from conftest import tiny_width, xla_flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not p.endswith('__init__.py'))
NUM_EVAL = 250
# In CI, 16 devices: the streamed input (bottleneck ResNet), sharded 16 ways.
CI_16_DEVICES = ('imagenet_resnet50',)


def small_model(name: str):
    """The config with one block per stage, 1/16 of its widths, smaller inputs."""
    return tiny_width(importlib.import_module(f'configs.{name}').get_config())


def synthetic_for(config) -> datasets.ImageDataset:
    """Generated data of the config's class count and image shape (64 px where the
    data set's images vary in size: the config crops them)."""
    num_classes, shape = datasets.KNOWN_SHAPES[config.dataset]
    return datasets.load_synthetic(max(2 * config.batch_size, 10 * num_classes), NUM_EVAL,
                                   shape[0] or 64, num_classes)


def run_config(name: str, mesh: jax.sharding.Mesh) -> dict:
    """Two train steps and a full evaluation of ``name`` on ``mesh``, with the
    config's own input kind (streamed configs stream the generated data)."""
    config = small_model(name)
    ds = synthetic_for(config)
    setup = train.TrainSetup.build(config, ds, mesh)
    if config.input.kind == 'streaming':
        feed = setup.streaming_input(ds.info(), 2, ds)
    else:
        feed = setup.resident_input(resident.to_device(ds, mesh, config.eval_batch_size,
                                                       setup.train_pp,
                                                       packed=setup.choices.packed_pixels))
    state = setup.init_state()
    step_fn = setup.step_fn(feed.batch)
    for step in range(2):
        state, metrics = step_fn(state, *feed.step_args(step, state))
    results = setup.evaluate(state, feed.eval_batches(config.eval_batch_size))
    return {'loss': float(jax.device_get(metrics['loss'])), 'eval_count': results['num_examples'],
            'eval_loss': results['loss']}


def check(name: str, mesh: jax.sharding.Mesh) -> None:
    r = run_config(name, mesh)
    assert np.isfinite(r['loss']) and np.isfinite(r['eval_loss']), (name, r)
    assert r['eval_count'] == NUM_EVAL, (name, r)


def test_streamed_config_runs_on_8_devices():
    check('imagenet_resnet50', sharding.make_data_mesh())


@pytest.mark.parametrize('devices', [1, 4])
@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds_and_splits_its_batches(name, devices):
    config = small_model(name)
    mesh = sharding.make_data_mesh(jax.devices()[:devices])
    ds = synthetic_for(config)
    setup = train.TrainSetup.build(config, ds, mesh)  # refuses a batch that does not split
    data = resident.to_device(ds, mesh, config.eval_batch_size, setup.train_pp,
                              packed=setup.choices.packed_pixels)
    assert data.eval_mask.shape[1] % devices == 0
    assert int(np.sum(jax.device_get(data.eval_mask))) == NUM_EVAL
    assert (config.batch_size // config.grad_accum_steps) % devices == 0


def matrix_configs(in_ci: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(CONFIGS) if os.environ.get('JAXRES_FULL_MATRIX') == '1' else in_ci


def _env(devices: int, configs: tuple[str, ...]) -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAXRES_CONFIGS=','.join(configs),
                XLA_FLAGS=xla_flags(devices))


def test_configs_run_on_16_devices():
    configs = matrix_configs(CI_16_DEVICES)
    out = subprocess.run([sys.executable, __file__], env=_env(16, configs), cwd=ROOT,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.stdout.count('ok on 16 devices') == len(configs), out.stdout


@pytest.mark.skipif(os.environ.get('JAXRES_FULL_MATRIX') != '1',
                    reason='the slow matrix (JAXRES_FULL_MATRIX=1): two processes train in CI '
                           'in test_multiprocess, test_streaming and test_preemption_multihost')
def test_configs_run_on_2_processes_x_4_devices():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        port = s.getsockname()[1]
    configs = matrix_configs(CONFIGS)
    procs = [subprocess.Popen([sys.executable, __file__, f'localhost:{port}', str(i)],
                              env=_env(4, configs), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=1200) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stdout[-2000:] + stderr[-3000:]
        assert stdout.count('ok on 8 devices') == len(configs), stdout


if __name__ == '__main__':
    # [coordinator_address process_id]: one of 2 processes (gloo collectives).
    if len(sys.argv) == 3:
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
        jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                                   process_id=int(sys.argv[2]))
    for config_name in os.environ.get('JAXRES_CONFIGS', ','.join(CONFIGS)).split(','):
        check(config_name, sharding.make_data_mesh())
        print(f'{config_name}: ok on {jax.device_count()} devices', flush=True)
