"""The streaming input path: order, sharding over processes, eval coverage, training on
any device count, the input-kind choice and its messages."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxres import datasets, sharding, streaming, train

from conftest import random_dataset, tiny_config


def _source(n=50, size=8, seed=0):
    ds = random_dataset(n_train=n, n_eval=1, size=size, seed=seed)
    return datasets.ArraySource(ds.train_images, ds.train_labels)


def _ops(train_=True, shape=(8, 8, 3)):
    return streaming.HostOps(train=train_, channels=shape[-1], out_shape=shape)


def test_epoch_order_is_a_fresh_seeded_permutation_each_epoch():
    order = streaming.EpochOrder(seed=3, num_records=10, examples_per_epoch=8)
    epochs = [[order(e * 8 + i) for i in range(8)] for e in range(3)]
    for e in epochs:
        assert len(set(e)) == 8 and set(e) <= set(range(10))  # remainder dropped
    assert epochs[0] != epochs[1]
    again = streaming.EpochOrder(seed=3, num_records=10, examples_per_epoch=8)
    assert [again(i) for i in range(8)] == epochs[0]
    assert [streaming.EpochOrder(4, 10, 8)(i) for i in range(8)] != epochs[0]


@pytest.mark.parametrize('processes', [2, 4])
def test_processes_read_disjoint_slices_that_make_the_one_process_batch(processes):
    src = _source()
    kw = dict(seed=0, batch_size=8, steps_per_epoch=6, num_steps=9, host_ops=_ops())
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


def test_grain_workers_give_the_same_batches_as_threads():
    src = _source()
    ds = streaming.train_dataset(src, seed=1, batch_size=8, steps_per_epoch=6, num_steps=4,
                                 host_ops=_ops(), process=(0, 1))
    threads = [b['index'] for b in streaming.iterate(ds, workers=0, prefetch=2)]
    workers = [b['index'] for b in streaming.iterate(ds, workers=2, prefetch=2)]
    np.testing.assert_array_equal(np.stack(threads), np.stack(workers))


def _train(tmp_path, name, ds, devices=None, **overrides):
    config = tiny_config(**{'input.kind': 'streaming', 'num_epochs': 2, **overrides})
    mesh = sharding.make_data_mesh(devices)
    real = sharding.make_data_mesh
    try:
        sharding.make_data_mesh = lambda devices_=None: mesh
        results = train.train_and_evaluate(config, str(tmp_path / name), ds)
    finally:
        sharding.make_data_mesh = real
    from jaxres import checkpointing
    manager = checkpointing.create_manager(checkpointing.checkpoint_dir(str(tmp_path / name)),
                                           read_only=True)
    trainer = train.Trainer.build(config, ds, mesh)
    state = checkpointing.restore_state(manager, manager.latest_step(), trainer.abstract_state())
    return results, jax.device_get((state.params, state.batch_stats))


def test_streaming_training_on_8_devices_equals_1_device(tmp_path):
    ds = random_dataset()
    r8, s8 = _train(tmp_path, 'eight', ds)
    r1, s1 = _train(tmp_path, 'one', ds, devices=jax.devices()[:1])
    assert r8['num_examples'] == r1['num_examples'] == 40
    for a, b in zip(jax.tree_util.tree_leaves(s8), jax.tree_util.tree_leaves(s1)):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=0)
    assert r8['accuracy'] == r1['accuracy']


def test_resuming_on_a_changed_data_set_is_refused(tmp_path):
    from jaxres import checkpointing
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
