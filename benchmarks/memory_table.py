"""Device memory of every config's train step, and the largest batch that fits.

    python benchmarks/memory_table.py [--configs cifar10_resnet18 ...] [--json OUT]

For each config: parameters, the bytes of parameters + BatchNorm statistics
and of the optimizer state, the activation memory of one train step at the
config's batch on one device (XLA's memory analysis of the compiled step:
its scratch, i.e. activations kept for the backward pass, gradients and
workspace), and the resident data set's bytes per device (uint8 on GPU/TPU).
The step is compiled here, on the CPU, with the accelerators' choices (XLA
convolutions, uint8 images: ``backend.choose('cuda')``); a GPU compiles the
same program, with its own fusions and convolution workspaces, so read the
figures as estimates.  Scratch grows linearly with the batch, so two batch
sizes give the largest per-device batch that fits 16, 40 and 80 GB (leaving
10% for the runtime).  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxres.data import datasets  # noqa: E402
from jaxres.tools import accelerators  # noqa: E402

TRAIN_EXAMPLES = {'cifar10': 50_000, 'cifar100': 50_000, 'digits': 1_437}
MEMORIES_GB = (16, 40, 80)


def config_row(name: str) -> dict:
    config = importlib.import_module(f'configs.{name}').get_config()
    k = config.grad_accum_steps
    small, large = 32 * k, 64 * k  # per-device batches measured
    at_small = accelerators.step_memory(config, small)
    at_large = accelerators.step_memory(config, large)
    per_example = (at_large['temp'] - at_small['temp']) / (large - small)
    fixed_temp = at_small['temp'] - per_example * small
    batch = config.batch_size
    temp_at_batch = fixed_temp + per_example * batch
    num_classes, shape = datasets.KNOWN_SHAPES[config.dataset]
    streamed = config.input.kind == 'streaming'  # read from disk: no data set on the device
    dataset_bytes = 0 if streamed else TRAIN_EXAMPLES[config.dataset] * (int(np.prod(shape)) + 4)
    resident = at_small['state'] + dataset_bytes
    fits = {}
    for gb in MEMORIES_GB:
        room = 0.9 * gb * 2**30 - resident - fixed_temp
        fits[gb] = max(0, int(room // per_example) // k * k) if per_example > 0 else None
    return {'config': name, 'params': at_small['num_params'], 'params_bytes': at_small['params'], 'opt_state_bytes': at_small['opt_state'],
            'batch': batch, 'activation_bytes_at_batch': int(temp_at_batch),
            'activation_bytes_per_example': int(per_example), 'dataset_bytes': dataset_bytes,
            'streamed': streamed,
            'max_batch_per_device': fits}


def _mb(n: float) -> str:
    return f'{n / 2**20:,.0f} MB' if n < 2**30 else f'{n / 2**30:,.1f} GB'


def markdown(rows: list[dict]) -> str:
    head = ('| config | params | params + BN | optimizer state | activations at its batch '
            '(1 device) | per example | data set | max batch/device 16 / 40 / 80 GB |\n'
            '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
    lines = [head]
    for r in rows:
        fits = ' / '.join(f'{r["max_batch_per_device"][gb]:,}' for gb in MEMORIES_GB)
        lines.append(f'| `{r["config"]}` | {r["params"]:,} | {_mb(r["params_bytes"])} | '
                     f'{_mb(r["opt_state_bytes"])} | {_mb(r["activation_bytes_at_batch"])} '
                     f'(batch {r["batch"]}) | {r["activation_bytes_per_example"] / 2**20:.1f} MB | '
                     f'{"streamed" if r.get("streamed") else _mb(r["dataset_bytes"])} | {fits} |')
    return '\n'.join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                   if not p.endswith(('__init__.py', 'default.py')))
    parser.add_argument('--configs', nargs='*', default=names)
    parser.add_argument('--json', default='')
    args = parser.parse_args()
    rows = []
    for name in args.configs:
        rows.append(config_row(name))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=2)
    print(markdown(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
