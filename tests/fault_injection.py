"""Fault injection: SIGKILL a training run at random points, resume, compare bitwise.

    python tests/fault_injection.py [--kills 5] [--seed 0] [--workdir /tmp/faults]
                                    [--input resident|streaming]

Trains a small ResNet on generated data through ``launch.py`` (the user's
command), once uninterrupted and once killed with SIGKILL at ``--kills``
random steps (one of them while an async checkpoint is being written) and
re-run with the same command after each kill.  The final parameters, BatchNorm
statistics and optimizer state must be bitwise identical.  A third run is sent
SIGTERM and must exit with status 143 and a checkpoint at the step it reached.
With ``--input streaming`` the batches are read by grain (two worker processes)
and checkpoints are also written every 5 steps: the data position saved in them
must resume exactly too.  Prints a table of faults and outcomes; exits non-zero
on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A ~6k-parameter ResNet on 16x16 generated images: 16 steps per epoch, 12 epochs.
# Dropout, crops and flips are on, so every kind of randomness must resume exactly.
OVERRIDES = [
    '--config', 'configs/quickstart.py', '--config.dataset=synthetic',
    '--config.synthetic.num_train=512', '--config.synthetic.num_eval=128',
    '--config.synthetic.image_size=16', '--config.synthetic.num_classes=4',
    '--config.data.train_pp=crop(2)|flip_lr|normalize',
    '--config.model.stage_sizes=(1,1)', '--config.model.stem_width=8',
    '--config.model.stem_dropout=0.1', '--config.batch_size=32', '--config.eval_batch_size=64',
    '--config.num_epochs=12', '--config.log_every_steps=1', '--config.eval.every_epochs=4',
    '--config.checkpoint.every_epochs=1', '--config.checkpoint.max_to_keep=2',
]
TOTAL_STEPS = 12 * 16
INPUTS = {
    'resident': ['--config.input.kind=resident'],
    'streaming': ['--config.input.kind=streaming', '--config.input.workers=2',
                  '--config.checkpoint.every_steps=5'],
}


def launch(workdir: str, devices: int = 1, input_kind: str = 'resident') -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices), PYTHONUNBUFFERED='1')
    return subprocess.Popen([sys.executable, 'launch.py', *OVERRIDES, *INPUTS[input_kind],
                             '--workdir', workdir],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: see kill()


def kill(proc: subprocess.Popen) -> None:
    """SIGKILLs the trainer alone, then ends what it leaves behind in its process group.

    grain's worker processes outlive a SIGKILLed trainer (blocked on their queues, parent
    1); SIGTERM ends them, after which multiprocessing's resource tracker (which ignores
    SIGTERM) sees its last reader go, frees their shared memory and exits.
    """
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # nothing was left
        pass


def logged_step(workdir: str, offset: int) -> int:
    """The highest step logged to metrics.jsonl after byte ``offset``."""
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        return -1
    with open(path, 'rb') as f:
        f.seek(offset)
        steps = [json.loads(line)['step'] for line in f.read().decode().splitlines()
                 if line.strip().endswith('}')]
    return max(steps, default=-1)


def jsonl_size(workdir: str) -> int:
    path = os.path.join(workdir, 'metrics.jsonl')
    return os.path.getsize(path) if os.path.exists(path) else 0


def wait_for_step(proc: subprocess.Popen, workdir: str, offset: int, target: int,
                  timeout: float = 600) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        step = logged_step(workdir, offset)
        if step >= target or proc.poll() is not None:
            return step
        time.sleep(0.02)
    raise TimeoutError(f'step {target} not reached in {timeout}s')


def saving_in_progress(workdir: str) -> bool:
    ckpt = os.path.join(workdir, 'checkpoints')
    return os.path.isdir(ckpt) and any('tmp' in n for n in os.listdir(ckpt))


def final_state(workdir: str) -> tuple[int, list[np.ndarray]]:
    """The latest checkpoint's step and all its arrays (no model needed)."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                                    item_names=('state', 'meta'),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    import jax  # pylint: disable=g-import-not-at-top
    return step, [np.asarray(x) for x in jax.tree_util.tree_leaves(state['state'])]


def run_faults(base: str, kills: int = 5, seed: int = 0, input_kind: str = 'resident'
               ) -> list[dict]:
    """Runs the experiment; returns one row per fault (raises on a mismatch)."""
    launch_run = lambda workdir: launch(workdir, input_kind=input_kind)
    rng = np.random.default_rng(seed)
    rows = []
    clean, faulty, term = (os.path.join(base, n) for n in ('clean', 'faulty', 'sigterm'))

    proc = launch_run(clean)
    _, err = proc.communicate(timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError('uninterrupted run failed:\n' + err[-3000:])
    rows.append({'fault': 'none (reference run)', 'at_step': '-', 'outcome': 'completed'})

    targets = sorted(rng.choice(np.arange(3, TOTAL_STEPS - 8), kills, replace=False))
    during_save = int(rng.integers(kills))
    for i, target in enumerate(targets):
        offset = jsonl_size(faulty)
        proc = launch_run(faulty)
        step = wait_for_step(proc, faulty, offset, int(target))
        kind = 'SIGKILL'
        if i == during_save:  # wait for an async checkpoint write, kill inside it
            deadline = time.time() + 30
            while not saving_in_progress(faulty) and time.time() < deadline:
                time.sleep(0.001)
            kind = 'SIGKILL during checkpoint write' if saving_in_progress(faulty) else kind
        else:
            time.sleep(float(rng.uniform(0, 0.3)))
        step = logged_step(faulty, offset)
        kill(proc)
        ckpts = sorted(int(n) for n in os.listdir(os.path.join(faulty, 'checkpoints'))
                       if n.isdigit()) if os.path.isdir(os.path.join(faulty, 'checkpoints')) else []
        rows.append({'fault': kind, 'at_step': step,
                     'outcome': f'killed; complete checkpoints {ckpts}'})
    proc = launch_run(faulty)
    _, err = proc.communicate(timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError('resumed run failed:\n' + err[-3000:])

    step_a, a = final_state(clean)
    step_b, b = final_state(faulty)
    same = step_a == step_b == TOTAL_STEPS and len(a) == len(b) and all(
        x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))
    rows.append({'fault': 'final comparison', 'at_step': step_b,
                 'outcome': 'bitwise identical to the uninterrupted run' if same
                 else 'MISMATCH'})
    if not same:
        raise AssertionError(f'resumed run differs from the uninterrupted run: {rows}')

    # SIGTERM: clean exit with a checkpoint at the step reached.
    target = int(rng.integers(20, TOTAL_STEPS - 20))
    while target % 16 == 0:  # land between the periodic (epoch-end) checkpoints
        target += 1
    proc = launch_run(term)
    wait_for_step(proc, term, 0, target)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    match = re.search(r'saved a checkpoint at step (\d+)', err)
    saved = int(match.group(1)) if match else None
    latest = final_state(term)[0] if saved else None
    ok = proc.returncode == 143 and saved is not None and saved == latest and saved >= target
    rows.append({'fault': 'SIGTERM', 'at_step': target,
                 'outcome': f'exit {proc.returncode}; checkpoint at step {latest}' if ok
                 else f'FAILED: exit {proc.returncode}, message {err[-500:]!r}'})
    if not ok:
        raise AssertionError(f'SIGTERM handling failed: {rows[-1]}')
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--kills', type=int, default=5)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workdir', default=None, help='default: a fresh temp dir')
    parser.add_argument('--input', default='resident', choices=sorted(INPUTS))
    args = parser.parse_args()
    base = args.workdir or tempfile.mkdtemp(prefix='jaxres_faults_')
    try:
        rows = run_faults(base, args.kills, args.seed, args.input)
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    print('| fault | at step | outcome |\n| --- | --- | --- |')
    for r in rows:
        print(f"| {r['fault']} | {r['at_step']} | {r['outcome']} |")
    return 0


if __name__ == '__main__':
    sys.exit(main())
