"""The streaming input path: order, sharding over processes, eval coverage, training on
any device count, the input-kind choice and its messages."""

import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxres import checkpointing, sharding, train
from jaxres.data import datasets, prepare, resident, streaming

from conftest import ROOT, SHARED_DATA, imagenet_tree, random_dataset, read_cifar_jpegs
from conftest import tiny_config, xla_flags


def _source(n=50, size=8, seed=0):
    ds = random_dataset(n_train=n, n_eval=1, size=size, seed=seed)
    return datasets.ArraySource(ds.train_images, ds.train_labels)


def _ops(train_=True, shape=(8, 8, 3)):
    return streaming.HostOps(train=train_, channels=shape[-1], out_shape=shape)


def test_epoch_order_is_the_resident_inputs_permutation_each_epoch():
    key = jax.random.key(3)
    order = streaming.EpochOrder.from_key(key, num_records=10, examples_per_epoch=8)
    epochs = [[order(e * 8 + i) for i in range(8)] for e in range(3)]
    for e, drawn in enumerate(epochs):
        assert len(set(drawn)) == 8 and set(drawn) <= set(range(10))  # remainder dropped
        assert drawn == resident.epoch_order(key, e, 10, 2, 4).ravel().tolist()
    assert epochs[0] != epochs[1]
    other = streaming.EpochOrder.from_key(jax.random.key(4), 10, 8)
    assert [other(i) for i in range(8)] != epochs[0]


def test_streaming_and_resident_inputs_give_a_seed_the_same_batches():
    """One order and one augmentation: the streamed batches of two epochs are the
    resident input's, bit for bit."""
    config = tiny_config(**{'input.kind': 'streaming', 'seed': 5})
    ds = random_dataset(n_train=80)
    mesh = sharding.make_data_mesh(jax.devices()[:1])
    setup = train.TrainSetup.build(config, ds, mesh)
    steps = 2 * setup.steps_per_epoch
    stream = setup.streaming_input(ds.info(), steps, ds)
    kept = setup.resident_input(resident.to_device(ds, mesh, config.eval_batch_size,
                                                   setup.train_pp, packed=True))
    state = setup.init_state()
    try:
        for step in range(steps):
            state = state.replace(step=jnp.int32(step))
            a = jax.jit(stream.batch)(state.step, *stream.step_args(step, state))
            b = jax.jit(kept.batch)(state.step, *kept.step_args(step, state))
            assert sorted(a) == sorted(b)
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f'step {step}: {k}')
    finally:
        stream.close()


@pytest.mark.parametrize('processes', [2, 4])
def test_processes_read_disjoint_slices_that_make_the_one_process_batch(processes):
    src = _source()
    kw = dict(data_key=jax.random.key(0), batch_size=8, steps_per_epoch=6, num_steps=9, host_ops=_ops())
    whole = streaming.train_dataset(src, process=(0, 1), **kw)
    parts = [streaming.train_dataset(src, process=(k, processes), **kw)
             for k in range(processes)]
    for step in range(9):
        for key in ('image', 'label', 'index'):
            joined = np.concatenate([p[step][key] for p in parts])
            np.testing.assert_array_equal(joined, whole[step][key])
    # Within an epoch every example is read at most once; records are real examples.
    first_epoch = np.concatenate([whole[s]['index'] for s in range(6)])
    assert len(set(first_epoch.tolist())) == 48
    np.testing.assert_array_equal(whole[0]['image'], src.images[whole[0]['index']])


@pytest.mark.parametrize('processes', [1, 2])
def test_eval_reads_every_example_once_and_masks_the_padding(processes):
    src = _source(n=43)
    parts = [streaming.eval_dataset(src, batch_size=16, host_ops=_ops(False),
                                    process=(k, processes)) for k in range(processes)]
    seen = []
    for p in parts:
        for j in range(len(p)):
            batch = p[j]
            seen += batch['index'][batch['mask']].tolist()
            assert not batch['image'][~batch['mask']].any()
    assert sorted(seen) == list(range(43))
    assert sum(len(p) for p in parts) == 3 * processes


def test_grain_workers_crop_jpegs_as_threads():
    # RandomResizedCrop of JPEGs in spawned workers (TF with one thread each)
    # gives the images the main process's threads give.
    rng = np.random.default_rng(0)
    src = []
    for i in range(24):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 60, 3), dtype=np.uint8)).save(buf, 'JPEG')
        src.append({'image': buf.getvalue(), 'label': i % 3})
    ops = streaming.HostOps(train=True, channels=3, out_shape=(16, 16, 3), image_size=16,
                            random_resized_crop=True, seed=4)
    ds = streaming.train_dataset(src, data_key=jax.random.key(1), batch_size=8, steps_per_epoch=3,
                                 num_steps=3, host_ops=ops, process=(0, 1))
    threads = list(streaming.iterate(ds, workers=0, prefetch=2))
    workers = list(streaming.iterate(ds, workers=2, prefetch=2))
    assert len(threads) == len(workers) == 3
    for a, b in zip(threads, workers):
        assert a['image'].shape == (8, 16, 16, 3) and a['image'].std() > 10
        for key in ('image', 'label', 'index', 'mask'):
            np.testing.assert_array_equal(a[key], b[key])


def test_grain_workers_give_the_same_batches_as_threads():
    src = _source()
    ds = streaming.train_dataset(src, data_key=jax.random.key(1), batch_size=8,
                                 steps_per_epoch=6, num_steps=4, host_ops=_ops(),
                                 process=(0, 1))
    threads = [b['index'] for b in streaming.iterate(ds, workers=0, prefetch=2)]
    workers = [b['index'] for b in streaming.iterate(ds, workers=2, prefetch=2)]
    np.testing.assert_array_equal(np.stack(threads), np.stack(workers))


def _train(tmp_path, name, ds, devices=None, **overrides):
    """Trains with streaming input on ``devices`` (default all 8); (results, variables)."""
    config = tiny_config(**{'input.kind': 'streaming', 'num_epochs': 2, **overrides})
    mesh = sharding.make_data_mesh(devices)
    real = sharding.make_data_mesh
    try:
        sharding.make_data_mesh = lambda devices_=None: mesh
        results = train.train_and_evaluate(config, str(tmp_path / name), ds)
    finally:
        sharding.make_data_mesh = real
    return results, _variables(str(tmp_path / name))[1]


def test_streaming_training_on_8_devices_equals_1_device(tmp_path):
    ds = random_dataset()
    r8, s8 = _train(tmp_path, 'eight', ds)
    r1, s1 = _train(tmp_path, 'one', ds, devices=jax.devices()[:1])
    assert r8['num_examples'] == r1['num_examples'] == 40
    for a, b in zip(jax.tree_util.tree_leaves(s8), jax.tree_util.tree_leaves(s1)):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=0)
    assert r8['accuracy'] == r1['accuracy']


def test_resuming_on_a_changed_data_set_is_refused(tmp_path):
    _train(tmp_path, 'run', random_dataset(n_train=128), **{'num_epochs': 1})
    grown = random_dataset(n_train=160)
    config = tiny_config(**{'input.kind': 'streaming', 'num_epochs': 2})
    with pytest.raises(checkpointing.CheckpointError,
                       match=r'changed since .* \(128 training records then, 160 now\)'):
        train.train_and_evaluate(config, str(tmp_path / 'run'), grown)


def _info(shape=(32, 32, 3), n=1000):
    return datasets.DataInfo('d', n, 10, tuple('abcdefghij'), shape)


def test_auto_keeps_small_data_resident_and_streams_the_rest():
    config = tiny_config(**{'input.resident_budget_gb': 0.001})  # 1 MiB
    cpu = jax.devices()[0]
    assert datasets.choose_input_kind(config, _info(n=100), cpu) == 'resident'  # 0.3 MB
    assert datasets.choose_input_kind(config, _info(n=2000), cpu) == 'streaming'  # 6 MB
    assert datasets.choose_input_kind(config, _info((None, None, 3)), cpu) == 'streaming'


def test_resident_over_the_budget_is_refused_with_the_figures_and_the_fix():
    config = tiny_config(**{'input.kind': 'resident', 'input.resident_budget_gb': 0.001})
    with pytest.raises(datasets.DataError,
                       match=r'is 0.01 GB .* over the resident budget of 0.00 GB.*'
                             r'input.kind=streaming'):
        datasets.choose_input_kind(config, _info(n=2000), jax.devices()[0])
    with pytest.raises(datasets.DataError, match='vary'):
        datasets.choose_input_kind(config, _info((None, None, 3)), jax.devices()[0])


def test_normalisation_comes_from_the_data_and_must_fit_its_channels():
    info = dataclasses.replace(_info((8, 8, 1)), mean=(0.25,), std=(0.5,))
    config = tiny_config()
    with config.unlocked():
        config.data.mean, config.data.std = (), ()
    resolved = datasets.resolve_normalization(config, info)
    assert tuple(resolved.data.mean) == (0.25,) and tuple(resolved.data.std) == (0.5,)
    images = np.full((4, 8, 8, 1), 51, np.uint8)  # 0.2 on [0, 1]
    computed = datasets.resolve_normalization(config, dataclasses.replace(info, mean=None),
                                              images)
    assert computed.data.mean[0] == pytest.approx(0.2)
    with pytest.raises(datasets.DataError, match=r'have 3/3 values .* 1 channel'):
        datasets.resolve_normalization(tiny_config(), info)  # CIFAR-style 3 values
    with pytest.raises(datasets.DataError, match='stores no per-channel mean/std'):
        datasets.resolve_normalization(config, dataclasses.replace(info, mean=None))


# --------------------------------------------------------------------------- #
# An ImageNet-style folder of real JPEGs of many sizes, through prepare_data
# --------------------------------------------------------------------------- #
needs_shared = pytest.mark.skipif(not os.path.exists(SHARED_DATA),
                                  reason='the shared CIFAR-10 JPEG archive is not here')


@pytest.fixture(scope='module')
def imagenet_mini(tmp_path_factory):
    """160 train and 40 val JPEGs of 64-320 px, prepared as ArrayRecord; its data dir."""
    root = tmp_path_factory.mktemp('imagenet_mini')
    imagenet_tree(root / 'imagenet_mini', read_cifar_jpegs(16, 4))
    data_dir = str(root / 'tfds')
    assert prepare.main(['--source', str(root / 'imagenet_mini'), '--data_dir', data_dir,
                         '--val_labels', str(root / 'imagenet_mini' / 'LOC_val_solution.csv'),
                         '--workers', '2']) == 0
    return data_dir


# The same recipe for in-process and launch.py runs: RandomResizedCrop on the host,
# eval resize + centre crop, the data set's own mean/std (stored by prepare_data).
MINI = {'dataset': 'imagenet_mini', 'data.image_size': 24, 'data.eval_resize': 28,
        'data.train_pp': 'random_resized_crop|flip_lr|normalize', 'data.mean': (), 'data.std': (),
        'batch_size': 32, 'eval_batch_size': 16}


def _variables(workdir):
    manager = checkpointing.create_manager(checkpointing.checkpoint_dir(workdir), read_only=True)
    variables = checkpointing.restore_variables(manager, manager.latest_step(),
                                                sharding.replicated(sharding.make_data_mesh()))
    return manager.latest_step(), jax.tree_util.tree_leaves(jax.device_get(variables))


@needs_shared
def test_prepared_folder_streams_alike_on_8_and_1_devices(tmp_path, imagenet_mini):
    r8, s8 = _train(tmp_path, 'eight', None, **MINI, data_dir=imagenet_mini)
    r1, s1 = _train(tmp_path, 'one', None, devices=jax.devices()[:1], **MINI,
                    data_dir=imagenet_mini)
    assert r8['split'] == 'validation' and r8['num_examples'] == r1['num_examples'] == 40
    assert r8['step'] == 10  # 2 epochs of 160 // 32
    # Only the order of the cross-device sums differs: after these 10 steps on real
    # images the weights parted by 2e-5 (CI's CPU) and 3.4e-5 (an AMD EPYC); the same
    # run without its flips, i.e. other batches, parts by 0.18.
    for a, b in zip(jax.tree_util.tree_leaves(s8), jax.tree_util.tree_leaves(s1)):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)
    with open(tmp_path / 'eight' / 'config.json') as f:  # the data set's own statistics
        assert json.load(f)['data']['mean'] == pytest.approx(
            datasets.describe(tiny_config(**MINI, data_dir=imagenet_mini)).mean)


@needs_shared
def test_two_processes_stream_like_one(tmp_path, imagenet_mini):
    args = ['--config', 'configs/quickstart.py', f'--config.data_dir={imagenet_mini}',
            '--config.model.stage_sizes=(1,1)', '--config.model.stem_width=8',
            '--config.num_train_steps=4', '--config.input.workers=1']
    args += [f'--config.{k}={v}' for k, v in MINI.items()]
    port = socket.socket()
    port.bind(('localhost', 0))
    address = f'localhost:{port.getsockname()[1]}'
    port.close()
    env = lambda n: dict(os.environ, XLA_FLAGS=xla_flags(n))
    run = lambda extra, n: subprocess.Popen(
        [sys.executable, 'launch.py', *args, *extra], cwd=ROOT, env=env(n),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    two = [run(['--workdir', str(tmp_path / 'two'),
                f'--config.distributed.coordinator_address={address}',
                '--config.distributed.num_processes=2', f'--config.distributed.process_id={i}',
                '--config.distributed.cpu_collectives=gloo'], 4) for i in range(2)]
    one = run(['--workdir', str(tmp_path / 'one')], 8)
    for p in two + [one]:
        out = p.communicate(timeout=900)[0]
        assert p.returncode == 0, out[-3000:]
    (step2, v2), (step1, v1) = _variables(str(tmp_path / 'two')), _variables(str(tmp_path / 'one'))
    assert step2 == step1 == 4
    for a, b in zip(v2, v1):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    for name in ('two', 'one'):
        with open(tmp_path / name / 'eval_results.json') as f:
            assert json.load(f)['num_examples'] == 40


@needs_shared
def test_a_missing_array_record_file_is_named(tmp_path, imagenet_mini):
    copy = tmp_path / 'tfds'
    shutil.copytree(imagenet_mini, copy)
    (train_file,) = (copy / 'imagenet_mini' / '1.0.0').glob('*-train.array_record*')
    train_file.unlink()
    with pytest.raises(datasets.DataError, match=f'missing, e.g. {train_file}'):
        train.train_and_evaluate(tiny_config(**MINI, data_dir=str(copy)), str(tmp_path / 'w'))
