"""Preemption on 2 processes x 4 CPU devices (gloo), end to end through launch.py.

SIGTERM to one process makes both save the same step and exit 143; the same
commands resume both from it; a corrupted newest checkpoint is moved aside once
(by process 0) and both resume from the previous one; the finished run has the
parameters of an uninterrupted run.  Steps run two per dispatch
(``steps_per_dispatch=2``), so the preemption sync point must not be skipped.
A checkpoint that reads back on process 0 but not on process 1 is rejected by both.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from jaxres import checkpointing

from conftest import ROOT, xla_flags
from fault_injection import logged_step  # process 0 writes metrics.jsonl

# A ~6k-parameter ResNet on 8x8 generated images: 8 steps per epoch, 48 steps.
OVERRIDES = [
    '--config', 'configs/quickstart.py', '--config.dataset=synthetic',
    '--config.synthetic.num_train=256', '--config.synthetic.num_eval=64',
    '--config.synthetic.image_size=8', '--config.synthetic.num_classes=4',
    '--config.data.train_pp=crop(1)|flip_lr|normalize',
    '--config.model.stage_sizes=(1,1)', '--config.model.stem_width=8',
    '--config.batch_size=32', '--config.eval_batch_size=64', '--config.num_epochs=6',
    '--config.log_every_steps=2', '--config.steps_per_dispatch=2',
    '--config.eval.every_epochs=6', '--config.checkpoint.every_epochs=1',
    '--config.checkpoint.max_to_keep=3',
]
TOTAL_STEPS = 48
# 4 devices per process (every run here, the reference included, compiles alike).
XLA_FLAGS = xla_flags(4)
SAVED = re.compile(r'saved a checkpoint at step (\d+)')
RESUMED = re.compile(r'Resumed from step (\d+)')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


class Cluster:
    """The two ``launch.py`` commands (process 0 and 1); each run gets a free coordinator port."""

    def __init__(self, workdir: str, logs: str):
        self.workdir, self.logs, self.runs = workdir, logs, 0
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        port, self.runs = _free_port(), self.runs + 1
        env = dict(os.environ, XLA_FLAGS=XLA_FLAGS, PYTHONUNBUFFERED='1')
        self.procs = []
        for i in range(2):
            with open(self._log(i), 'w') as out:
                self.procs.append(subprocess.Popen(
                    [sys.executable, 'launch.py', *OVERRIDES, '--workdir', self.workdir,
                     f'--config.distributed.coordinator_address=localhost:{port}',
                     '--config.distributed.num_processes=2',
                     f'--config.distributed.process_id={i}',
                     '--config.distributed.cpu_collectives=gloo'],
                    cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))

    def _log(self, i: int) -> str:
        name = os.path.basename(self.workdir)
        return os.path.join(self.logs, f'{name}.run{self.runs}.process{i}.log')

    def wait(self, timeout: float = 300) -> tuple[list[int], list[str]]:
        """Exit codes and outputs of both processes (killed if past ``timeout``)."""
        deadline = time.time() + timeout
        try:
            codes = [p.wait(timeout=max(deadline - time.time(), 1)) for p in self.procs]
        finally:
            self.kill()
        outs = []
        for i in range(2):
            with open(self._log(i)) as f:
                outs.append(f.read())
        return codes, outs

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _jsonl_size(workdir: str) -> int:
    path = os.path.join(workdir, 'metrics.jsonl')
    return os.path.getsize(path) if os.path.exists(path) else 0


def _sigterm_after(cluster: Cluster, step: int, victim: int, offset: int) -> int:
    """SIGTERMs process ``victim`` once this run has logged ``step``; the step seen."""
    deadline = time.time() + 240
    while time.time() < deadline and all(p.poll() is None for p in cluster.procs):
        seen = logged_step(cluster.workdir, offset)
        if seen >= step:
            cluster.procs[victim].send_signal(signal.SIGTERM)
            return seen
        time.sleep(0.02)
    cluster.kill()
    raise AssertionError(f'step {step} was not logged (exit codes '
                         f'{[p.poll() for p in cluster.procs]})')


def _steps(workdir: str) -> list[int]:
    ckpt = checkpointing.checkpoint_dir(workdir)
    return sorted(int(n) for n in os.listdir(ckpt) if n.isdigit())


def _variables(workdir: str, step: int) -> list[np.ndarray]:
    manager = checkpointing.create_manager(checkpointing.checkpoint_dir(workdir),
                                           read_only=True)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(
        checkpointing.restore_variables(manager, step, one))]


def _preempt(cluster: Cluster, after_step: int, victim: int) -> tuple[int, list[str]]:
    """Runs the cluster, SIGTERMs ``victim`` mid-training; checks both saved one step."""
    offset = _jsonl_size(cluster.workdir)
    cluster.start()
    seen = _sigterm_after(cluster, after_step, victim, offset)
    codes, outs = cluster.wait()
    detail = '\n'.join(o[-3000:] for o in outs)
    assert codes == [143, 143], detail
    saved = [[int(s) for s in SAVED.findall(o)] for o in outs]
    assert len(saved[0]) == 1 and saved[0] == saved[1], detail  # the same step on both
    step = saved[0][0]
    assert seen < step < TOTAL_STEPS, (seen, step)
    assert _steps(cluster.workdir)[-1] == step
    return step, outs


def test_sigterm_saves_one_step_resumes_and_quarantines_once(tmp_path):
    reference = Cluster(str(tmp_path / 'reference'), str(tmp_path))
    reference.start()
    codes, outs = reference.wait()
    assert codes == [0, 0], '\n'.join(o[-3000:] for o in outs)
    assert _steps(reference.workdir)[-1] == TOTAL_STEPS

    cluster = Cluster(str(tmp_path / 'preempted'), str(tmp_path))
    # SIGTERM to process 1 only: JAX's notifier carries it to process 0.
    first, outs = _preempt(cluster, after_step=10, victim=1)
    assert not any(RESUMED.search(o) for o in outs)

    # The same commands resume both from that step; this time process 0 is told.
    second, outs = _preempt(cluster, after_step=first + 4, victim=0)
    assert [RESUMED.findall(o) for o in outs] == [[str(first)]] * 2, outs[0][-3000:]

    # Corrupt the newest checkpoint's arrays: both processes must reject it and
    # resume from the one before; process 0 alone moves it aside.
    previous = _steps(cluster.workdir)[-2]
    state_dir = os.path.join(checkpointing.checkpoint_dir(cluster.workdir), str(second), 'state')
    for sub in ('ocdbt.process_0', 'ocdbt.process_1'):
        for name in os.listdir(os.path.join(state_dir, sub, 'd')):
            with open(os.path.join(state_dir, sub, 'd', name), 'r+b') as f:
                f.truncate(8)
    cluster.start()
    codes, outs = cluster.wait()
    assert codes == [0, 0], '\n'.join(o[-3000:] for o in outs)
    assert [RESUMED.findall(o) for o in outs] == [[str(previous)]] * 2, outs[0][-3000:]
    assert sum(o.count('moved corrupted checkpoint') for o in outs) == 1
    assert 'moved corrupted checkpoint' in outs[0]
    aside = os.path.join(str(tmp_path / 'preempted'), 'corrupted_checkpoints')
    assert os.listdir(aside) == [str(second)]
    assert _steps(cluster.workdir)[-1] == TOTAL_STEPS

    for a, b in zip(_variables(cluster.workdir, TOTAL_STEPS),
                    _variables(reference.workdir, TOTAL_STEPS), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


# Each process restores from a stand-in manager whose step 30 fails to read on
# process 1 only (a flaky disk); prints the step it resumed from.
ONE_SIDED = """
import os, sys
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from jaxres import checkpointing

class Manager:
    directory = sys.argv[3]
    def all_steps(self):
        return [20, 30]
    def restore(self, step, args):
        if step == 30 and jax.process_index() == 1:
            raise OSError('read error on process 1 only')
        return {'meta': {}, 'state': step}
    def reload(self):
        pass

print('resumed from', checkpointing.restore_latest_good(Manager(), None)[0])
"""


def test_checkpoint_unreadable_on_one_process_is_rejected_by_both(tmp_path):
    ckpt = tmp_path / 'checkpoints'
    for step in (20, 30):
        os.makedirs(ckpt / str(step))
    address = f'localhost:{_free_port()}'
    env = dict(os.environ, XLA_FLAGS=xla_flags(1))
    procs = [subprocess.Popen([sys.executable, '-c', ONE_SIDED, address, str(i), str(ckpt)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all('resumed from 20' in o for o in outs), outs
    assert os.listdir(tmp_path / 'corrupted_checkpoints') == ['30']
    assert sorted(os.listdir(ckpt)) == ['20']
