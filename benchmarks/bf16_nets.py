"""Each seed's net in bf16: jaxres ('onednn' convs) against PyTorch's best CPU setting.

    python benchmarks/bf16_nets.py [--runs 3] [--batch_size 128]
        [--steps 10] [--configs cifar10_resnet18 cifar10_preact cifar10_resnet_b cifar10_resnet9
         cifar10_speedrun] [--f32]

For every config and run, fresh processes alternate on the same machine:
``python -m jaxres.bench`` with ``--config.dtype=bfloat16
--config.backend.conv=onednn`` (one batch per step: ``grad_accum_steps=1``; SGD,
the optimizer of the PyTorch side, whatever the config trains with: Muon's
Newton-Schulz iterations or Adam are not the net's speed) and
``python benchmarks/torch_reference.py --config ... --setting=best`` (the same
network in PyTorch, bf16 autocast with channels_last); ``--f32`` adds jaxres in
float32 (its default lowering).  Prints every run, then per config the medians
in images/s and the ratio jaxres bf16 / PyTorch best (issue 31: >= 1.0, and
>= 1.2 for ResNet-18); writes nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from compare import _json_line

NETS = ('cifar10_resnet18', 'cifar10_preact', 'cifar10_resnet_b', 'cifar10_resnet9',
        'cifar10_speedrun')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--batch_size', type=int, default=128)
    # 10: the first few bf16 steps still grow oneDNN's per-thread buffers.
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--configs', nargs='+', default=list(NETS))
    parser.add_argument('--f32', action='store_true', help='also jaxres in float32')
    args = parser.parse_args()
    size = ['--batch_size', str(args.batch_size), '--steps', str(args.steps)]
    kinds = {'jaxres_bf16': ['--config.dtype=bfloat16', '--config.backend.conv=onednn'],
             'torch_best': None}
    if args.f32:
        kinds['jaxres_f32'] = ['--config.dtype=float32']
    runs = {(c, k): [] for c in args.configs for k in kinds}
    for i in range(args.runs):
        for name in args.configs:
            path = f'configs/{name}.py'
            for kind, flags in kinds.items():
                cmd = ([sys.executable, 'benchmarks/torch_reference.py', '--config', path,
                        '--setting=best', '--skip=pipeline', *size] if flags is None else
                       [sys.executable, '-m', 'jaxres.bench', '--config', path, *size,
                        '--config.grad_accum_steps=1', '--config.optimizer.name=sgd', *flags])
                runs[name, kind].append(_json_line(cmd)['train_images_per_s'])
            print(f'run {i + 1} {name}: ' + ', '.join(
                f'{k} {runs[name, k][-1]:.1f}' for k in kinds) + ' img/s', flush=True)
    print(f'\nmedians of {args.runs} alternating runs, batch {args.batch_size}, images/s:')
    summary = {}
    for name in args.configs:
        med = {k: statistics.median(runs[name, k]) for k in kinds}
        med['bf16_vs_torch_best'] = med['jaxres_bf16'] / med['torch_best']
        if args.f32:
            med['bf16_vs_jaxres_f32'] = med['jaxres_bf16'] / med['jaxres_f32']
        summary[name] = med
        print(f'  {name:<18} ' + '  '.join(f'{k} {v:,.2f}' for k, v in med.items()))
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
