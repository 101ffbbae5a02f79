"""jaxres vs PyTorch on this machine: alternating runs, medians, ratios.

    python benchmarks/compare.py [--runs 5] [--batch_size 128] [--steps 5]
        [--config configs/cifar10_resnet18.py] [--no_bf16]

Each run is four fresh processes, alternating so that all see the same machine
conditions: ``python -m jaxres.bench`` in float32 (the config's own lowering),
``python benchmarks/torch_reference.py`` in float32 NCHW (PyTorch's default),
then, unless ``--no_bf16``, jaxres in bfloat16 with the 'onednn' conv lowering
and PyTorch's best CPU setting (bf16 autocast, channels_last).  Prints every
run, the medians and the ratios against the targets of issues 7 and 31; writes
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _json_line(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--batch_size', type=int, default=128)
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--config', default='configs/cifar10_resnet18.py')
    parser.add_argument('--no_bf16', action='store_true',
                        help='float32 only (no jaxres onednn / PyTorch best-setting pair)')
    args = parser.parse_args()
    size = ['--batch_size', str(args.batch_size), '--steps', str(args.steps)]
    jaxres_cmd = [sys.executable, '-m', 'jaxres.bench', '--config', args.config, *size]
    torch_cmd = [sys.executable, 'benchmarks/torch_reference.py', *size]
    jax_runs, torch_runs, bf16_runs, best_runs = [], [], [], []
    for i in range(args.runs):
        jax_runs.append(_json_line(jaxres_cmd))
        torch_runs.append(_json_line(torch_cmd))
        print(f"run {i + 1}: jaxres {jax_runs[-1]['train_images_per_s']:.1f} img/s, "
              f"pipeline {jax_runs[-1]['pipeline_images_per_s']:,.0f} img/s, "
              f"overhead {jax_runs[-1]['loop_overhead']:.3f}, "
              f"compile {jax_runs[-1]['compile_s']:.1f} s | torch "
              f"{torch_runs[-1]['train_images_per_s']:.1f} img/s, pipeline "
              f"{torch_runs[-1]['pipeline_images_per_s']:,.0f} img/s", flush=True)
        if args.no_bf16:
            continue
        bf16_runs.append(_json_line([*jaxres_cmd, '--config.dtype=bfloat16',
                                     '--config.backend.conv=onednn']))
        best_runs.append(_json_line([*torch_cmd, '--setting=best', '--skip=pipeline']))
        print(f"       jaxres bf16 onednn {bf16_runs[-1]['train_images_per_s']:.1f} img/s | "
              f"torch bf16 autocast channels_last {best_runs[-1]['train_images_per_s']:.1f} "
              'img/s', flush=True)

    med = lambda runs, k: statistics.median(r[k] for r in runs)
    summary = {
        'jaxres_train_images_per_s': med(jax_runs, 'train_images_per_s'),
        'torch_train_images_per_s': med(torch_runs, 'train_images_per_s'),
        'jaxres_pipeline_images_per_s': med(jax_runs, 'pipeline_images_per_s'),
        'torch_pipeline_images_per_s': med(torch_runs, 'pipeline_images_per_s'),
        'jaxres_loop_overhead': med(jax_runs, 'loop_overhead'),
        'jaxres_compile_s': med(jax_runs, 'compile_s'),
        'jaxres_achieved_gflop_per_s': med(jax_runs, 'achieved_gflop_per_s'),
    }
    summary['train_step_ratio'] = (summary['jaxres_train_images_per_s'] /
                                   summary['torch_train_images_per_s'])
    summary['pipeline_ratio'] = (summary['jaxres_pipeline_images_per_s'] /
                                 summary['torch_pipeline_images_per_s'])
    targets = [('train_step_ratio', '>= 1.2'), ('pipeline_ratio', '>= 20'),
               ('jaxres_pipeline_images_per_s', '>= 100,000'),
               ('jaxres_loop_overhead', '<= 1.03'), ('jaxres_compile_s', '<= 20')]
    if bf16_runs:
        summary['jaxres_bf16_train_images_per_s'] = med(bf16_runs, 'train_images_per_s')
        summary['torch_best_train_images_per_s'] = med(best_runs, 'train_images_per_s')
        summary['bf16_vs_jaxres_f32'] = (summary['jaxres_bf16_train_images_per_s'] /
                                         summary['jaxres_train_images_per_s'])
        summary['bf16_vs_torch_best'] = (summary['jaxres_bf16_train_images_per_s'] /
                                         summary['torch_best_train_images_per_s'])
        targets += [('bf16_vs_jaxres_f32', '>= 2'), ('bf16_vs_torch_best', '>= 1.2')]
    print(f"\nmedians of {args.runs} alternating runs (batch {args.batch_size}):")
    for k, target in targets:
        print(f'  {k:<30} {summary[k]:>12,.3f}   target {target}')
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
