"""Smoke test of the benchmark code (it runs and reports); never asserts a speed."""

import json
import os
import subprocess
import sys

import pytest

from jaxres.tools import bench

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


def test_streaming_bench_reports_pipeline_loop_and_memory(capsys):
    config = tiny_config(dataset='synthetic', batch_size=16)
    config.synthetic.image_size = 8
    config.synthetic.num_train = 256
    result = bench.run_streaming_benchmark(config, steps=4)
    for key in ('pipeline_images_per_s', 'step_s_median', 'loop_s', 'loop_overhead'):
        assert result[key] > 0, key
    assert result['input'] == 'streaming' and len(result['peak_rss_mb']) == 5
    assert result['peak_rss_mb'] == sorted(result['peak_rss_mb'])  # a running peak
    print(bench.format_streaming_table(result))
    assert 'loop / (steps x step)' in capsys.readouterr().out


def test_torch_reference_pipeline_runs():
    pytest.importorskip('torch')
    out = subprocess.run([sys.executable, os.path.join('benchmarks', 'torch_reference.py'),
                          '--skip', 'step', '--workers', '1', '--batch_size', '64'],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])['pipeline_images_per_s'] > 0


def test_bench_takes_config_overrides():
    path = os.path.join(ROOT, 'configs', 'default.py')
    _, config = bench.parse_command_line(['--config', path, '--steps', '2',
                                          '--config.backend.conv=xla',
                                          '--config.optimizer.momentum=0.5'])
    assert config.backend.conv == 'xla' and config.optimizer.momentum == 0.5
    with pytest.raises(SystemExit, match='model.no_such_key'):
        bench.parse_command_line(['--config', path, '--config.model.no_such_key=1'])


def test_help_lists_the_flags(capsys):
    assert bench.main(['--help']) == 0
    out = capsys.readouterr().out
    assert out.startswith("Benchmark a config's training on this machine.")
    for flag in ('--config', '--batch_size', '--steps', '--dtype', '--input'):
        assert f'  {flag}:' in out, flag


def test_flops_do_not_depend_on_the_conv_lowering():
    # im2col's patch copies are not arithmetic: the achieved GFLOP/s must not count them.
    flops = {}
    for impl in ('xla', 'im2col'):
        config = tiny_config()
        config.backend.conv = impl
        config = bench.bench_config(config, batch_size=16, steps=2)
        from jaxres import sharding, train
        from jaxres.data import datasets, resident
        syn = config.synthetic
        ds = datasets.load_synthetic(syn.num_train, syn.num_eval, syn.image_size, syn.num_classes)
        mesh = sharding.make_data_mesh()
        setup = train.TrainSetup.build(config, ds, mesh)
        state = setup.init_state()
        feed = setup.resident_input(resident.to_device(ds, mesh, 16))
        flops[impl] = bench.model_flops_per_step(setup, feed, state, feed.order_fn(state.step))
    assert flops['xla'] > 0 and flops['xla'] == flops['im2col']
