"""``python -m jaxres.tools.plot WORKDIR``: learning curves and the confusion matrix as PNGs.

Reads ``WORKDIR/metrics.jsonl`` (train/eval loss, accuracy, top-5 accuracy and
learning rate against epoch) and, if present, ``WORKDIR/eval_results.json``
(the confusion matrix), and writes ``WORKDIR/plots/learning_curves.png`` and
``WORKDIR/plots/confusion_matrix.png`` (or under ``--out DIR``).  Headless:
matplotlib's Agg backend, no display needed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Sequence

import matplotlib

matplotlib.use('Agg')  # before pyplot: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top

# (panel title, [(metrics.jsonl key, legend label), ...])
PANELS = (
    ('loss', [('train_loss', 'train'), ('eval_loss', 'eval')]),
    ('accuracy', [('train_accuracy', 'train'), ('eval_accuracy', 'eval')]),
    ('top-5 accuracy', [('eval_top5_accuracy', 'eval')]),
    ('learning rate', [('lr', 'lr')]),
)


class PlotError(ValueError):
    """Nothing to plot in the workdir; the message says what is missing."""


def series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of ``key``, one point per step (the last record wins).

    A resumed run appends records for steps it had already logged; keeping the
    last per step draws the run that produced the checkpoints.  Non-finite
    values, which metrics.jsonl stores as strings, become NaN.
    """
    by_step: dict[int, tuple[float, float]] = {}
    for r in records:
        if key in r:
            x = r.get('epoch', r.get('step'))
            by_step[int(r['step'])] = (float(x), _number(r[key]))
    points = [by_step[s] for s in sorted(by_step)]
    return (np.asarray([p[0] for p in points], float), np.asarray([p[1] for p in points], float))


def _number(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def plot_learning_curves(records: Sequence[dict], path: str) -> str:
    """A 2x2 figure: loss, accuracy, top-5 accuracy, learning rate against epoch."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (title, keys) in zip(axes.ravel(), PANELS):
        drawn = False
        for key, label in keys:
            x, y = series(records, key)
            if len(x):
                style = '-' if key.startswith('train') or key == 'lr' else 'o-'
                ax.plot(x, y, style, label=label, markersize=3)
                drawn = True
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, 'not recorded', ha='center', va='center', transform=ax.transAxes)
        if title == 'loss' and drawn and _spans_decades(records, keys):
            ax.set_yscale('log')  # a long run's loss falls by decades
        ax.set_title(title)
        ax.set_xlabel('epoch')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _spans_decades(records: Sequence[dict], keys) -> bool:
    values = np.concatenate([series(records, k)[1] for k, _ in keys])
    values = values[np.isfinite(values)]
    return bool(len(values)) and values.min() > 0 and values.max() / values.min() > 10


def plot_confusion_matrix(results: dict, path: str) -> str:
    """Rows: true class, columns: predicted; colour = fraction of the row, text = count."""
    cm = np.asarray(results['confusion_matrix'], float)
    names = list(results.get('per_class_accuracy') or [str(i) for i in range(len(cm))])
    if len(names) != len(cm):
        names = [str(i) for i in range(len(cm))]
    fractions = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = min(4 + 0.5 * len(cm), 30)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(fractions, cmap='Blues', vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label='fraction of the true class')
    if len(cm) <= 20:  # beyond that, labels and counts no longer fit
        ax.set_xticks(range(len(cm)), names, rotation=45, ha='right')
        ax.set_yticks(range(len(cm)), names)
        for i in range(len(cm)):
            for j in range(len(cm)):
                ax.text(j, i, int(cm[i, j]), ha='center', va='center', fontsize=8,
                        color='white' if fractions[i, j] > 0.5 else 'black')
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    acc = results.get('accuracy')
    ax.set_title(f"confusion matrix, {results.get('split', 'eval')}"
                 + (f', accuracy {acc:.4f}' if acc is not None else '')
                 + (f", step {results['step']}" if 'step' in results else ''))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_workdir(workdir: str, out_dir: str | None = None) -> list[str]:
    """Writes every plot the workdir has data for; returns the PNG paths."""
    metrics_path = os.path.join(workdir, 'metrics.jsonl')
    results_path = os.path.join(workdir, 'eval_results.json')
    if not os.path.exists(metrics_path) and not os.path.exists(results_path):
        raise PlotError(f'{workdir} has neither metrics.jsonl nor eval_results.json; point '
                        'it at a training workdir (--workdir of --mode=train or eval).')
    out_dir = out_dir or os.path.join(workdir, 'plots')
    os.makedirs(out_dir, exist_ok=True)
    written = []
    if os.path.exists(metrics_path):
        from jaxres import metric_logging  # pylint: disable=g-import-not-at-top  (clu: slow import)
        records = metric_logging.read_jsonl(metrics_path)
        if records:
            written.append(plot_learning_curves(
                records, os.path.join(out_dir, 'learning_curves.png')))
    if os.path.exists(results_path):
        with open(results_path, encoding='utf-8') as f:
            results = json.load(f)
        if results.get('confusion_matrix'):
            written.append(plot_confusion_matrix(
                results, os.path.join(out_dir, 'confusion_matrix.png')))
    if not written:
        raise PlotError(f'{workdir}: metrics.jsonl and eval_results.json hold nothing to plot.')
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m jaxres.tools.plot', description=__doc__.split(
        '\n')[0])
    parser.add_argument('workdir', help='a training workdir (holds metrics.jsonl)')
    parser.add_argument('--out', default=None, help='output directory (default WORKDIR/plots)')
    args = parser.parse_args(argv)
    try:
        paths = plot_workdir(args.workdir, args.out)
    except (PlotError, OSError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    for p in paths:
        print(os.path.abspath(p))
    return 0


if __name__ == '__main__':
    sys.exit(main())
