"""python -m jaxres.tools.plot writes PNGs of a workdir's curves."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxres import metric_logging
from jaxres.tools import plot

from conftest import ROOT

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _fake_workdir(path, with_results=True):
    """metrics.jsonl as the training loop writes it (with a resumed, repeated step)."""
    records = []
    for step in range(1, 21):
        records.append({'step': step * 10, 'epoch': step / 2, 'lr': 0.1 * (1 - step / 21),
                        'train_loss': 2.0 / step, 'train_accuracy': 1 - 1 / step,
                        'images_per_sec': 1000.0})
        if step % 2 == 0:
            records.append({'step': step * 10, 'epoch': step / 2, 'eval_loss': 2.2 / step,
                            'eval_accuracy': 0.9 - 1 / step, 'eval_top5_accuracy': 0.99})
    records.insert(3, {'step': 30, 'epoch': 1.5, 'lr': 0.1, 'train_loss': 'nan',
                       'train_accuracy': 0.0, 'images_per_sec': 1.0})  # replaced on resume
    with open(path / 'metrics.jsonl', 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
        f.write('{"step": 210, "epo')  # killed mid-write
    if with_results:
        cm = np.diag([8, 9, 7]) + 1
        results = {'accuracy': 0.8, 'split': 'test', 'step': 200,
                   'per_class_accuracy': {'cat': 0.8, 'dog': 0.82, 'frog': 0.78},
                   'confusion_matrix': cm.tolist()}
        (path / 'eval_results.json').write_text(json.dumps(results))


def _is_png(path):
    with open(path, 'rb') as f:
        return f.read(8) == PNG_SIGNATURE and os.path.getsize(path) > 5000


def test_series_keeps_the_last_record_per_step(tmp_path):
    _fake_workdir(tmp_path)
    records = metric_logging.read_jsonl(str(tmp_path / 'metrics.jsonl'))
    epochs, losses = plot.series(records, 'train_loss')
    assert len(epochs) == 20 and np.all(np.diff(epochs) > 0)
    assert losses[2] == pytest.approx(2.0 / 3)  # the resumed run's value, not 'nan'
    assert len(plot.series(records, 'eval_accuracy')[0]) == 10


def test_plot_command_writes_non_empty_pngs(tmp_path):
    _fake_workdir(tmp_path)
    out = subprocess.run([sys.executable, '-m', 'jaxres.tools.plot', str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    paths = out.stdout.split()
    assert [os.path.basename(p) for p in paths] == ['learning_curves.png',
                                                    'confusion_matrix.png']
    assert all(_is_png(p) and p.startswith(str(tmp_path / 'plots')) for p in paths)


def test_plot_without_eval_results_and_with_nothing(tmp_path, capsys):
    _fake_workdir(tmp_path, with_results=False)
    assert plot.main([str(tmp_path), '--out', str(tmp_path / 'pngs')]) == 0
    assert os.listdir(tmp_path / 'pngs') == ['learning_curves.png']
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert plot.main([str(empty)]) == 2
    assert 'neither metrics.jsonl nor eval_results.json' in capsys.readouterr().err
