"""Data parallelism: 8 devices == 1 device, one combined gradient all-reduce, bf16,
several steps per dispatch, restore onto another device count."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxres import sharding, train
from jaxres.data import resident

from conftest import random_dataset, tiny_config


def _run_steps(config, ds, devices, steps):
    mesh = sharding.make_data_mesh(devices)
    setup = train.TrainSetup.build(config, ds, mesh)
    feed = setup.resident_input(resident.to_device(ds, mesh, config.eval_batch_size))
    step_fn = setup.step_fn(feed.batch)
    state = setup.init_state()
    losses = []
    with jax.transfer_guard('disallow'):
        for step in range(steps):
            state, metrics = step_fn(state, *feed.step_args(step, state))
            losses.append(metrics['loss'])
    return setup, feed.data, state, [float(l) for l in jax.device_get(losses)]


def test_8_devices_match_1_device():
    assert jax.device_count() == 8
    ds = random_dataset()
    config = tiny_config()
    _, _, one, _ = _run_steps(config, ds, jax.devices()[:1], 3)
    _, _, eight, _ = _run_steps(config, ds, jax.devices(), 3)
    assert int(one.step) == int(eight.step) == 3
    for tree in ('params', 'batch_stats'):
        for a, b in zip(jax.tree_util.tree_leaves(getattr(one, tree)),
                        jax.tree_util.tree_leaves(getattr(eight, tree))):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_compiled_step_has_combined_all_reduce_and_no_host_callbacks():
    ds = random_dataset()
    config = tiny_config()
    mesh = sharding.make_data_mesh()
    setup = train.TrainSetup.build(config, ds, mesh)
    feed = setup.resident_input(resident.to_device(ds, mesh, config.eval_batch_size))
    state = setup.init_state()
    hlo = setup.step_fn(feed.batch).lower(state, *feed.step_args(0, state)).compile().as_text()
    all_reduces = [l for l in hlo.splitlines() if re.search(r'\ball-reduce(-start)?\(', l)]
    num_params = len(jax.tree_util.tree_leaves(state.params))
    assert all_reduces, 'no cross-device reduction: gradients are not averaged'
    # Gradients travel in combined (tuple) all-reduces, not one per parameter; the
    # rest are the synchronised BatchNorm statistics.
    assert len(all_reduces) < num_params
    # Several kernel gradients (rank >= 2; as f32[3,3,C,O], or f32[9C,O] when the
    # convs are lowered to im2col matrix products) in one all-reduce.
    results = [re.split(r'\ball-reduce(?:-start)?\(', l)[0] for l in all_reduces]
    assert any(len(re.findall(r'f32\[\d+,\d+[,\]]', r)) >= 3 for r in results)
    # Each device gathers its own slice of the replicated data set: no gathers.
    assert 'all-gather' not in hlo and 'all-to-all' not in hlo
    targets = re.findall(r'custom_call_target="([^"]+)"', hlo)
    assert not [t for t in targets if 'callback' in t.lower()], targets


def test_bfloat16_trains_with_float32_params():
    ds = random_dataset(n_train=64)
    config = tiny_config(dtype='bfloat16', **{'schedule.name': 'constant',
                                              'schedule.learning_rate': 0.05})
    _, _, state, losses = _run_steps(config, ds, jax.devices(), 12)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    dtypes = {x.dtype for x in jax.tree_util.tree_leaves((state.params, state.batch_stats,
                                                         state.opt_state))
              if jnp.issubdtype(x.dtype, jnp.floating)}  # (the optimizer's step count is int)
    assert dtypes == {jnp.dtype('float32')}


def test_steps_per_dispatch_equals_single_steps(tmp_path):
    ds = random_dataset()
    results = {}
    for k in (1, 4):
        config = tiny_config(steps_per_dispatch=k, log_every_steps=4)
        results[k] = train.train_and_evaluate(config, str(tmp_path / str(k)), ds)
    assert results[1]['step'] == results[4]['step'] == 8
    assert results[1]['loss'] == pytest.approx(results[4]['loss'], rel=1e-5)
    assert results[1]['accuracy'] == results[4]['accuracy']


def test_state_restores_onto_a_different_device_count(tmp_path):
    from jaxres import checkpointing
    ds = random_dataset()
    config = tiny_config()
    setup8, data8, state8, _ = _run_steps(config, ds, jax.devices(), 2)
    manager = checkpointing.create_manager(str(tmp_path / 'ckpt'), config)
    checkpointing.save(manager, 2, state8, {'config': {}})
    manager.wait_until_finished()
    mesh1 = sharding.make_data_mesh(jax.devices()[:1])
    setup1 = train.TrainSetup.build(config, ds, mesh1)
    state1 = checkpointing.restore_state(manager, 2, setup1.abstract_state())
    assert state1.params['head']['kernel'].sharding.device_set == {jax.devices()[0]}
    data1 = resident.to_device(ds, mesh1, config.eval_batch_size)
    r1, r8 = setup1.evaluate(state1, data1), setup8.evaluate(state8, data8)
    assert r1['accuracy'] == r8['accuracy'] and r1['loss'] == pytest.approx(r8['loss'], rel=1e-5)
