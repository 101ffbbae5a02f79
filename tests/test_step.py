"""The training step: train_step, its transforms, its options and its one jit site."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxres import models, optim, sharding, step, train
from jaxres.data import preprocess, resident
from jaxres.step import TrainState, ema_update, evaluated_variables, lookahead_update, train_step

from conftest import random_dataset, tiny_config


def _setup(config, ds, devices=None):
    mesh = sharding.make_data_mesh(devices)
    return train.TrainSetup.build(config, ds, mesh), resident.to_device(
        ds, mesh, config.eval_batch_size)


def test_loss_falls_on_a_fixed_batch():
    config = tiny_config(**{'schedule.name': 'constant', 'schedule.learning_rate': 0.05})
    ds = random_dataset(n_train=32)
    setup, _ = _setup(config, ds)
    state = setup.init_state()
    batch = {'image': preprocess.normalize(ds.train_images, setup.train_pp.normalization),
             'label': ds.train_labels}
    step = jax.jit(lambda s, b: train_step(s, b, dropout_key=jax.random.key(0)))
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics['loss']))
    assert losses[-1] < 0.5 * losses[0], losses


def test_a_nonfinite_step_is_skipped_by_the_optimizer_and_keeps_the_bn_statistics():
    """nonfinite='skip': optax.apply_if_finite keeps params and optimizer state, the
    step keeps the BN statistics and counts the step; the next finite step trains."""
    config = tiny_config(nonfinite='skip', **{'schedule.name': 'constant',
                                              'schedule.learning_rate': 0.05})
    ds = random_dataset(n_train=32)
    setup, _ = _setup(config, ds)
    state = setup.init_state()
    image = preprocess.normalize(ds.train_images, setup.train_pp.normalization)
    step = jax.jit(lambda s, b: train_step(s, b, dropout_key=jax.random.key(0),
                                           skip_nonfinite=True))
    good = {'image': image, 'label': ds.train_labels}
    state, _ = step(state, good)  # momentum and BN statistics are not at their start
    bad = {'image': image.at[0, 0, 0, 0].set(jnp.nan), 'label': ds.train_labels}
    after, metrics = step(state, bad)
    assert int(metrics['skipped']) == 1 and float(metrics['loss']) == 0.0
    assert int(after.step) == int(state.step) + 1
    for kept in ('params', 'batch_stats', 'opt_state'):
        jax.tree_util.tree_map(np.testing.assert_array_equal,
                               optax.tree_utils.tree_get(getattr(state, kept), 'inner_state')
                               if kept == 'opt_state' else getattr(state, kept),
                               optax.tree_utils.tree_get(getattr(after, kept), 'inner_state')
                               if kept == 'opt_state' else getattr(after, kept))
    again, metrics = step(after, good)
    assert int(metrics['skipped']) == 0 and np.isfinite(float(metrics['loss']))
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), after.params,
                                   again.params)
    assert all(jax.tree_util.tree_leaves(moved))


def test_frozen_parameters_get_no_gradient_and_their_backward_pass_is_dropped():
    # Whole 'whiten' stem frozen: the step matches the optimizer-masked one, the
    # stem stays put, and the compiled step has fewer convolutions (no gradient
    # into the stem, nor into the first block's input).
    config = tiny_config(**{'model': models.model_config('airbench', stage_widths=(8, 8),
                                                         pool_sizes=(1, 2)),
                            'backend.conv': 'xla',
                            'schedule.name': 'constant', 'schedule.learning_rate': 0.05,
                            'optimizer.freeze': ('stem',)})
    ds = random_dataset(n_train=32)
    setup, _ = _setup(config, ds)
    state = setup.init_state()
    batch = {'image': preprocess.normalize(ds.train_images, setup.train_pp.normalization),
             'label': ds.train_labels}

    def step(frozen):
        return jax.jit(lambda s, b: train_step(s, b, dropout_key=jax.random.key(0),
                                                     frozen=frozen))

    masked_only = step(None)
    pruned = step(optim.path_mask(('stem',)))
    want, _ = masked_only(state, batch)
    got, _ = pruned(state, batch)
    for a, b in zip(jax.tree_util.tree_leaves(want.params), jax.tree_util.tree_leaves(got.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.params['stem']['conv']['kernel'],
                                  state.params['stem']['conv']['kernel'])
    np.testing.assert_array_equal(got.params['stem']['conv']['bias'],
                                  state.params['stem']['conv']['bias'])

    def convolutions(fn):
        return fn.lower(state, batch).compile().as_text().count(' convolution(')

    assert convolutions(pruned) < convolutions(masked_only)


def test_step_compiles_once(tmp_path):
    ds = random_dataset()
    config = tiny_config()
    mesh = sharding.make_data_mesh()
    setup = train.TrainSetup.build(config, ds, mesh)
    feed = setup.resident_input(resident.to_device(ds, mesh, config.eval_batch_size))
    step_fn = setup.step_fn(feed.batch)
    state = setup.init_state()
    with jax.transfer_guard('disallow'):
        for i in range(6):
            state, _ = step_fn(state, *feed.step_args(i, state))
    assert step_fn._cache_size() == 1


def test_lookahead_moves_weights_to_their_ema_every_n_steps_and_ends_on_it():
    zeros = {'params': {'w': jnp.zeros(2)}, 'batch_stats': {'m': jnp.zeros(1)}}
    state = TrainState.create(apply_fn=None, params=zeros['params'],
                                    batch_stats=zeros['batch_stats'], tx=optax.sgd(1.0),
                                    lookahead=zeros)

    def step(s):  # an optimizer step adding 1 to every weight and statistic
        s = s.apply_gradients(grads={'w': -jnp.ones(2)},
                              batch_stats={'m': s.batch_stats['m'] + 1})
        return lookahead_update(s, every=2, decay=0.9, total_steps=4)

    s1 = step(state)  # not a sync step: the EMA waits
    np.testing.assert_array_equal(s1.params['w'], [1, 1])
    np.testing.assert_array_equal(s1.lookahead['params']['w'], [0, 0])
    s2 = step(s1)  # sync at t = 2/4: EMA = 0 + (1 - 0.9**2 * 0.5**3) * (2 - 0), model reset to it
    expected = (1 - 0.9 ** 2 * 0.5 ** 3) * 2
    for leaf in (s2.params['w'], s2.lookahead['params']['w'], s2.batch_stats['m'],
                 s2.lookahead['batch_stats']['m']):
        np.testing.assert_allclose(leaf, expected, rtol=1e-6)
    s4 = step(step(s2))  # the last step: decay 1, the model becomes the (unchanged) EMA
    np.testing.assert_allclose(step(s2).params['w'], expected + 1, rtol=1e-6)
    np.testing.assert_allclose(s4.params['w'], expected, rtol=1e-6)
    np.testing.assert_allclose(s4.batch_stats['m'], expected, rtol=1e-6)


def test_gradient_accumulation_averages_micro_batch_gradients():
    # Constant lr, no momentum or decay: the update is -lr * the mean gradient
    # of the micro-batches (examples 0, 2, 4, ... and 1, 3, 5, ...), and the BN
    # running statistics are updated by one micro-batch after the other.
    config = tiny_config(**{'schedule.name': 'constant', 'schedule.learning_rate': 0.1,
                            'optimizer.momentum': 0.0, 'optimizer.weight_decay': 0.0})
    ds = random_dataset(n_train=32)
    setup, _ = _setup(config, ds)
    state = setup.init_state()
    batch = {'image': preprocess.normalize(ds.train_images, setup.train_pp.normalization),
             'label': ds.train_labels}
    step = jax.jit(lambda s, b, k: train_step(s, b, dropout_key=jax.random.key(0),
                                                    accum_steps=k), static_argnums=2)
    first, second = ({k: v[i::2] for k, v in batch.items()} for i in (0, 1))
    s1, m1 = step(state, first, 1)
    s2, m2 = step(state.replace(batch_stats=s1.batch_stats), second, 1)
    got, metrics = step(state, batch, 2)
    for g, a, b in zip(*(jax.tree_util.tree_leaves(t.params) for t in (got, s1, s2))):
        np.testing.assert_allclose(g, (a + b) / 2, rtol=1e-4, atol=1e-6)
    for g, b in zip(*(jax.tree_util.tree_leaves(t.batch_stats) for t in (got, s2))):
        np.testing.assert_allclose(g, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics['loss'], (m1['loss'] + m2['loss']) / 2, rtol=1e-5)
    assert int(got.step) == 1


def test_ema_update_averages_weights_and_statistics_and_leaves_them_alone():
    zeros = {'params': {'w': jnp.zeros(2)}, 'batch_stats': {'m': jnp.zeros(1)}}
    state = TrainState.create(apply_fn=None, params=zeros['params'],
                                    batch_stats=zeros['batch_stats'], tx=optax.sgd(1.0),
                                    ema=zeros)
    for _ in range(3):  # each step adds 1 to every weight and statistic
        state = state.apply_gradients(grads={'w': -jnp.ones(2)},
                                      batch_stats={'m': state.batch_stats['m'] + 1})
        state = ema_update(state, 0.9)
    # ema_t = 0.9 ema_{t-1} + 0.1 t: 0.1, 0.29, 0.561; the live weights are 3.
    np.testing.assert_allclose(state.ema['params']['w'], [0.561, 0.561], rtol=1e-6)
    np.testing.assert_allclose(state.ema['batch_stats']['m'], [0.561], rtol=1e-6)
    np.testing.assert_array_equal(state.params['w'], [3, 3])
    assert evaluated_variables(state, use_ema=False)['params'] is state.params
    assert evaluated_variables(state, use_ema=True) is state.ema


def test_rng_streams_are_named_and_keep_their_seed_offsets():
    """init / data / dropout are seed, seed + 1, seed + 2: the draws of every earlier
    version (first batches, initial weights) stay the same."""
    rngs = step.RngStreams(7)
    for key, offset in ((rngs.init, 0), (rngs.data, 1), (rngs.dropout, 2)):
        np.testing.assert_array_equal(jax.random.key_data(key),
                                      jax.random.key_data(jax.random.key(7 + offset)))


def test_step_options_read_the_config_once():
    config = tiny_config(**{'label_smoothing': 0.1, 'optimizer.weight_decay_mode': 'loss',
                            'optimizer.weight_decay': 5e-4, 'nonfinite': 'skip',
                            'grad_accum_steps': 2, 'optimizer.ema_decay': 0.99})
    options = step.StepOptions.from_config(config, schedule_steps=40)
    assert (options.label_smoothing, options.l2_weight, options.skip_nonfinite,
            options.accum_steps, options.ema_decay, options.lookahead_steps) == (
                0.1, 5e-4, True, 2, 0.99, 40)
    assert options.rngs == step.RngStreams(config.seed) and options.frozen is None
    assert step.StepOptions.from_config(tiny_config(), 1).l2_weight == 0.0  # decay not in the loss


def test_jit_step_runs_the_input_batch_then_update_and_scans_k_steps():
    """One jitted step = the input's batch, then update; K steps in one dispatch
    equal K single steps (same state and metrics)."""
    config = tiny_config()
    ds = random_dataset()
    setup, data = _setup(config, ds)
    feed = setup.resident_input(data)
    one = step.jit_step(feed.batch, setup.step_options, setup.mesh)
    three = step.jit_step(feed.batch, setup.step_options, setup.mesh, steps=3)
    state = setup.init_state()
    order = feed.order_fn(state.step)
    batch = jax.jit(feed.batch)(jnp.asarray(0), data, order)
    want, metrics = jax.jit(lambda s, b: step.update(s, b, setup.step_options, setup.mesh))(
        state, batch)
    got, got_metrics = one(setup.init_state(), data, order)
    for a, b in zip(jax.tree_util.tree_leaves(want.params), jax.tree_util.tree_leaves(got.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    singles = setup.init_state()
    losses = []
    for _ in range(3):
        singles, m = one(singles, data, order)
        losses.append(float(m['loss']))
    scanned, stacked = three(setup.init_state(), data, order)
    assert int(scanned.step) == int(singles.step) == 3
    np.testing.assert_allclose(np.asarray(stacked['loss']), losses, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(singles.params),
                    jax.tree_util.tree_leaves(scanned.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
