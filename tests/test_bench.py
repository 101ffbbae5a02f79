"""Smoke test of the benchmark code (it runs and reports); never asserts a speed."""

import json
import os
import subprocess
import sys

import pytest

from jaxres import bench

from conftest import ROOT, tiny_config


def test_bench_reports_every_measurement(capsys):
    config = tiny_config()
    config.synthetic.image_size = 8
    result = bench.run_benchmark(config, batch_size=16, steps=2)
    for key in ('compile_s', 'step_s_median', 'train_images_per_s', 'achieved_gflop_per_s',
                'pipeline_images_per_s', 'loop_overhead'):
        assert result[key] > 0, key
    assert result['epoch_steps'] == 2 and result['gflops_per_step'] > 0
    print(bench.format_table(result))
    assert 'input pipeline images/s' in capsys.readouterr().out


def test_torch_reference_pipeline_runs():
    pytest.importorskip('torch')
    out = subprocess.run([sys.executable, os.path.join('benchmarks', 'torch_reference.py'),
                          '--skip', 'step', '--workers', '1', '--batch_size', '64'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])['pipeline_images_per_s'] > 0
