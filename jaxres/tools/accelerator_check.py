"""The check to run on a machine with a GPU or TPU: devices, step speed, a short training.

    pip install -e ".[cuda12]"        # or [cuda13], [tpu]
    python benchmarks/accelerator_check.py [--out figures.jsonl]

1. Prints the devices JAX sees and what ``backend.choose`` picks there.
2. ``jaxres.bench`` of ResNet-18 (``configs/cifar10_resnet18.py``) at global
   batch 512, in float32 and in bfloat16: compile time, step images/s, input
   pipeline images/s, loop overhead.
3. ``configs/cifar10_speedrun.py`` trained for 100 steps on generated data
   through the training loop (checkpoints, eval): wall time and images/s.

Writes one JSON object per figure (stdout, and ``--out``).  Every size is a
flag, so the same script smoke-tests on a CPU (``tests/test_accelerator_check.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

from jaxres import train
from jaxres.cpu import backend
from jaxres.tools import bench
from jaxres import main as jaxres_main


def device_figures() -> list[dict]:
    devices = jax.devices()
    choices = backend.choose(jaxres_main.load_config(os.path.join(ROOT, 'configs', 'default.py')))
    return [{'figure': 'devices', 'platform': devices[0].platform, 'count': len(devices),
             'kind': devices[0].device_kind, 'processes': jax.process_count(),
             'conv': choices.conv, 'max_pool': choices.max_pool,
             'packed_pixels': choices.packed_pixels}]


def bench_figures(config_path: str, batch_size: int, steps: int) -> list[dict]:
    out = []
    for dtype in ('float32', 'bfloat16'):
        config = jaxres_main.load_config(config_path)
        config.dtype = dtype
        r = bench.run_benchmark(config, batch_size, steps)
        out.append({'figure': 'bench', 'config': os.path.basename(config_path), **r})
    return out


def train_figures(config_path: str, steps: int, num_train: int) -> list[dict]:
    config = jaxres_main.load_config(config_path)
    with config.unlocked():
        config.dataset = 'synthetic'
        config.synthetic.num_train = num_train
        config.synthetic.num_eval = 1000
        config.num_train_steps = steps
        config.log_every_steps = max(1, steps // 4)
        config.checkpoint.async_save = True
    t = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        results = train.train_and_evaluate(config, workdir)
    wall = time.time() - t
    return [{'figure': 'train', 'config': os.path.basename(config_path), 'steps': steps,
             'batch_size': config.batch_size, 'wall_s': wall,
             'images_per_s_incl_compile': steps * config.batch_size / wall,
             'eval_accuracy': results['accuracy'], 'num_eval': results['num_examples']}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--bench_config', default=os.path.join(ROOT, 'configs',
                                                               'cifar10_resnet18.py'))
    parser.add_argument('--bench_batch', type=int, default=512)
    parser.add_argument('--bench_steps', type=int, default=20)
    parser.add_argument('--train_config', default=os.path.join(ROOT, 'configs',
                                                               'cifar10_speedrun.py'))
    parser.add_argument('--train_steps', type=int, default=100)
    parser.add_argument('--train_examples', type=int, default=50_000)
    parser.add_argument('--out', default='')
    args = parser.parse_args(argv)
    figures = device_figures()
    print(json.dumps(figures[-1]), flush=True)
    for more in (bench_figures(args.bench_config, args.bench_batch, args.bench_steps),
                 train_figures(args.train_config, args.train_steps, args.train_examples)):
        for f in more:
            print(json.dumps(f), flush=True)
        figures += more
    if args.out:
        with open(args.out, 'w') as f:
            f.writelines(json.dumps(x) + '\n' for x in figures)
    return 0


if __name__ == '__main__':
    sys.exit(main())
