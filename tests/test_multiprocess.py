"""A 2-process x 4-device cluster on localhost (gloo) trains exactly like 1 x 8 devices,
and its checkpoint evaluates the same on a single device."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import quickstart
from jaxres import checkpointing, sharding, train
from jaxres.data import datasets

from conftest import ROOT, xla_flags

STEPS = ['--config', 'configs/quickstart.py', '--config.num_train_steps=3']


def _free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def _env(devices):
    return dict(os.environ, XLA_FLAGS=xla_flags(devices))


def _launch(args, devices):
    return subprocess.Popen([sys.executable, 'launch.py', *args], cwd=ROOT, env=_env(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _params(workdir):
    config = quickstart.get_config()
    setup = train.TrainSetup.build(config, datasets.load_digits(), sharding.make_data_mesh())
    manager = checkpointing.create_manager(checkpointing.checkpoint_dir(workdir), read_only=True)
    assert manager.latest_step() == 3
    state = checkpointing.restore_state(manager, 3, setup.abstract_state())
    return jax.device_get((state.params, state.batch_stats))


def test_two_processes_match_one_process_and_restore_on_one_device(tmp_path):
    two, one = str(tmp_path / 'two'), str(tmp_path / 'one')
    port = _free_port()
    procs = [_launch([*STEPS, '--workdir', two,
                      f'--config.distributed.coordinator_address=localhost:{port}',
                      '--config.distributed.num_processes=2',
                      f'--config.distributed.process_id={i}',
                      '--config.distributed.cpu_collectives=gloo'], devices=4)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    single = _launch([*STEPS, '--workdir', one], devices=8)
    out = single.communicate(timeout=600)[0]
    assert single.returncode == 0, out[-3000:]

    for a, b in zip(jax.tree_util.tree_leaves(_params(two)),
                    jax.tree_util.tree_leaves(_params(one))):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)

    with open(os.path.join(two, 'eval_results.json')) as f:
        trained = json.load(f)
    evaluation = str(tmp_path / 'eval1')
    ev = _launch(['--config', 'configs/quickstart.py', '--workdir', evaluation, '--mode=eval',
                  '--config.eval.checkpoint=' + checkpointing.checkpoint_dir(two)], devices=1)
    out = ev.communicate(timeout=600)[0]
    assert ev.returncode == 0, out[-3000:]
    with open(os.path.join(evaluation, 'eval_results.json')) as f:
        evaluated = json.load(f)
    assert evaluated['num_examples'] == trained['num_examples'] == 360
    assert evaluated['accuracy'] == trained['accuracy']
    assert evaluated['loss'] == pytest.approx(trained['loss'], rel=1e-5)
