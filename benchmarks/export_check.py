"""Exported models on a real test set: accuracy against --mode=eval, images/s side by side.

    python launch.py --config configs/cifar10_resnet18.py --workdir W --mode=export \
        --config.dataset=cifar10_jpeg --config.data_dir=DATA
    python benchmarks/export_check.py --workdir W --config configs/cifar10_resnet18.py \
        --config.dataset=cifar10_jpeg --config.data_dir=DATA [--rounds 3]

Reads the config's eval split whole, labels it with every file in
``W/export`` (ONNX Runtime, TensorFlow, the deserialised JAX program) and with
jaxres's own ``--mode=predict`` path, and prints each one's top-1 accuracy
beside ``W/eval_results.json`` (``--mode=eval``'s), then inference images/s of
each, the runtimes alternating round by round (median of ``--rounds``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from jaxres import export, inference, main, sharding  # noqa: E402
from jaxres.data import datasets, inputs  # noqa: E402
from streaming_decode import cpu_model  # noqa: E402  (benchmarks/, beside this file)


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--config', required=True)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--batch_size', type=int, default=500)
    args, overrides = parser.parse_known_args()
    config = main.load_config(args.config, overrides)
    info = datasets.describe(config)
    images, labels = datasets.read_split(datasets.tfds_builder(config), config.dataset,
                                         info.eval_split)
    with open(os.path.join(args.workdir, 'eval_results.json')) as f:
        evaluated = json.load(f)
    print(f'{cpu_model()}, {os.cpu_count()} cores; {len(images)} {info.eval_split} images; '
          f'--mode=eval: accuracy {evaluated["accuracy"]:.4f} at step {evaluated["step"]}')

    mesh = sharding.make_data_mesh()
    restored = inference.load_for_inference(config, args.workdir, images.shape[1:], mesh=mesh,
                                            purpose='predict')
    evaluator = restored.evaluator(mesh)
    runners = {'jaxres (--mode=predict)': lambda x: evaluator.predict(
        restored.variables, inputs.array_batches(x, mesh, args.batch_size))}
    out = os.path.join(args.workdir, 'export')
    for fmt, name in export.FILES.items():
        if os.path.exists(os.path.join(out, name)):
            loaded = export.load_exported(os.path.join(out, name))
            runners[f'{fmt} ({name})'] = lambda x, m=loaded: m.predict(x, args.batch_size)

    for name, fn in runners.items():
        probs = fn(images)
        accuracy = float(np.mean(np.argmax(probs, -1) == labels))
        same = 'equal' if accuracy == evaluated['accuracy'] else 'DIFFERENT'
        print(f'{name}: accuracy {accuracy:.4f} ({same} to --mode=eval\'s)')

    rates = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn(images)
            rates[name].append(len(images) / (time.perf_counter() - start))
    print(f'inference images/s, batch {args.batch_size}, median of {args.rounds} '
          'alternating rounds:')
    for name, r in rates.items():
        print(f'  {name}: {statistics.median(r):.0f} ({", ".join(f"{x:.0f}" for x in r)})')
    return 0


if __name__ == '__main__':
    sys.exit(run())
