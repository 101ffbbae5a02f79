"""The training loop: workdir, checkpoints, resume, evaluation, cadence, on tiny models."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxres import checkpointing, evaluate, main, metric_logging, sharding, train
from jaxres.data import resident

from conftest import random_dataset, tiny_config


def _setup(config, ds, devices=None):
    mesh = sharding.make_data_mesh(devices)
    return train.TrainSetup.build(config, ds, mesh), resident.to_device(
        ds, mesh, config.eval_batch_size)


def _params(workdir, config, ds):
    setup, _ = _setup(config, ds)
    manager = checkpointing.create_manager(checkpointing.checkpoint_dir(workdir), read_only=True)
    state = checkpointing.restore_state(manager, manager.latest_step(), setup.abstract_state())
    return jax.device_get((state.params, state.batch_stats, state.opt_state))


@pytest.mark.parametrize('extra', [{}, {'optimizer.lookahead_every': 2}],
                         ids=['plain', 'lookahead'])
def test_train_writes_workdir_and_resume_continues_the_same_run(tmp_path, extra):
    ds = random_dataset()
    config = tiny_config(**extra)  # 4 steps per epoch, 2 epochs
    full = str(tmp_path / 'full')
    results = train.train_and_evaluate(config, full, ds)
    assert results['step'] == 8 and results['num_examples'] == 40
    assert set(os.listdir(full)) >= {'checkpoints', 'metrics.jsonl', 'config.json',
                                     'eval_results.json'}
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(full))
    records = metric_logging.read_jsonl(os.path.join(full, 'metrics.jsonl'))
    train_rec = [r for r in records if 'train_loss' in r]
    assert [r['step'] for r in train_rec] == [2, 4, 6, 8]
    assert {'epoch', 'lr', 'train_accuracy', 'images_per_sec'} <= set(train_rec[0])
    assert [r['step'] for r in records if 'eval_accuracy' in r] == [4, 8]

    # Interrupted after 3 steps (mid-epoch), then the same command again.
    part = str(tmp_path / 'part')
    config_stop = tiny_config(num_train_steps=3, **{'checkpoint.every_epochs': 1}, **extra)
    train.train_and_evaluate(config_stop, part, ds)
    manager = checkpointing.create_manager(checkpointing.checkpoint_dir(part), read_only=True)
    assert manager.latest_step() == 3
    resumed = train.train_and_evaluate(config, part, ds)
    assert resumed['step'] == 8
    a, b = _params(full, config, ds), _params(part, config, ds)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)  # bitwise: same data order, keys and schedule
    assert resumed['accuracy'] == results['accuracy']


def test_eval_of_restored_checkpoint_equals_end_of_training(tmp_path, monkeypatch):
    ds = random_dataset()
    config = tiny_config()
    workdir = str(tmp_path)
    at_end = train.train_and_evaluate(config, workdir, ds)
    monkeypatch.setattr(main.datasets, 'load_dataset', lambda cfg: ds)
    for which in ('latest', 'best', '8'):
        config.eval.checkpoint = which
        restored = main.evaluate_checkpoint(config, workdir)
        assert restored['step'] == 8
        for k in ('accuracy', 'top5_accuracy', 'loss', 'num_examples'):
            assert restored[k] == pytest.approx(at_end[k], rel=1e-6)
    with open(os.path.join(workdir, 'eval_results.json')) as f:
        assert json.load(f)['num_examples'] == 40


def test_fractional_epochs_end_mid_epoch_with_the_final_evaluation(tmp_path):
    # 4 steps per epoch: 1.5 epochs are 6 steps, 0.7 epochs ceil(2.8) = 3.
    ds = random_dataset()
    assert _setup(tiny_config(num_epochs=0.7), ds)[0].schedule_steps == 3
    config = tiny_config(num_epochs=1.5, **{'eval.every_epochs': 100})
    results = train.train_and_evaluate(config, str(tmp_path), ds)
    assert results['step'] == 6
    records = metric_logging.read_jsonl(os.path.join(tmp_path, 'metrics.jsonl'))
    assert [r['step'] for r in records if 'eval_accuracy' in r] == [6]

def test_eval_counts_10000_examples_with_a_batch_that_does_not_divide_it():
    ds = random_dataset(n_train=64, n_eval=10_000)
    config = tiny_config(eval_batch_size=48)
    setup, data = _setup(config, ds)
    results = setup.evaluate(setup.init_state(), data)
    assert results['num_examples'] == 10_000
    assert np.sum(results['confusion_matrix']) == 10_000
    predicted_right = np.trace(results['confusion_matrix'])
    assert results['accuracy'] == pytest.approx(predicted_right / 10_000)


def test_nan_loss_stops_with_step_and_last_checkpoint(tmp_path):
    ds = random_dataset()
    config = tiny_config(**{'schedule.learning_rate': 1e30, 'schedule.name': 'constant'})
    with pytest.raises(train.NonFiniteLossError, match=r'by step \d+\. Last good checkpoint'):
        train.train_and_evaluate(config, str(tmp_path), ds)


def test_tta_probabilities_weights_and_views():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(3, 6, 6, 2)), jnp.float32)
    seen = []
    # Logits that depend on where the image's content is: each view differs.
    logits_fn = lambda x: (seen.append(x) or jnp.stack([x[:, 0, 0, 0], x[:, -1, -1, 0]], -1))
    flip_only = evaluate.tta_probabilities(logits_fn, images)
    assert len(seen) == 2
    np.testing.assert_array_equal(seen[1], images[:, :, ::-1])
    seen.clear()
    both = evaluate.tta_probabilities(logits_fn, images, translate=True)
    assert len(seen) == 6
    padded = np.pad(np.asarray(images), ((0, 0), (1, 1), (1, 1), (0, 0)), 'reflect')
    np.testing.assert_array_equal(seen[2], padded[:, :6, :6])  # shifted down-right by 1
    np.testing.assert_array_equal(seen[4], padded[:, 2:, 2:])
    sm = lambda x: jax.nn.softmax(logits_fn(x))
    avg = lambda x: (sm(x) + sm(x[:, :, ::-1])) / 2
    np.testing.assert_allclose(both, avg(images) / 2 + avg(seen[2]) / 4 + avg(seen[4]) / 4,
                               rtol=1e-6)
    np.testing.assert_allclose(np.sum(both, -1), 1.0, rtol=1e-6)
    assert not np.allclose(both, flip_only)


def test_cadence_by_epoch_step_and_minutes():
    cadence = train.Cadence(steps_per_epoch=10, total_steps=35, log_every_steps=4,
                            eval_every_epochs=2, eval_every_steps=0, save_every_epochs=1,
                            save_every_steps=7, save_every_minutes=30.0)
    # The loop stops at every log step, epoch end, step-save and the last step.
    events, step = [], 0
    while step < 35:
        step = cadence.next_event(step)
        events.append(step)
    assert events == [4, 7, 8, 10, 12, 14, 16, 20, 21, 24, 28, 30, 32, 35]
    assert [s for s in events if cadence.evaluate(s)] == [20, 35]
    assert [s for s in events if cadence.save(s, 0.0)] == [7, 10, 14, 20, 21, 28, 30, 35]
    # By time: only at log steps, once the interval has passed.
    assert cadence.save(12, 31.0) and not cadence.save(13, 31.0) and not cadence.save(12, 29.0)
    # The progress line's "next eval": the first evaluating step after this one.
    assert [cadence.next_eval(s) for s in (0, 19, 20, 34)] == [20, 20, 35, 35]
    by_step = dataclasses.replace(cadence, eval_every_steps=6)
    assert [by_step.next_eval(s) for s in (0, 6, 17, 18, 30)] == [6, 12, 18, 20, 35]


def test_ema_is_evaluated_saved_and_restored_for_eval(tmp_path, monkeypatch):
    ds = random_dataset()
    config = tiny_config(**{'optimizer.ema_decay': 0.5})
    workdir = str(tmp_path)
    at_end = train.train_and_evaluate(config, workdir, ds)
    setup, _ = _setup(config, ds)
    manager = checkpointing.create_manager(checkpointing.checkpoint_dir(workdir), read_only=True)
    state = checkpointing.restore_state(manager, 8, setup.abstract_state())
    data = resident.to_device(ds, setup.mesh, config.eval_batch_size)
    # The run's evaluation is the EMA's, not the live weights'.
    assert setup.evaluate(state, data)['loss'] == pytest.approx(at_end['loss'], rel=1e-6)
    config.eval.ema = False
    live = _setup(config, ds)[0].evaluate(state, data)
    assert live['loss'] != pytest.approx(at_end['loss'], rel=1e-3)
    # --mode=eval restores the EMA (eval.ema, the default) or the live weights.
    monkeypatch.setattr(main.datasets, 'load_dataset', lambda cfg: ds)
    assert main.evaluate_checkpoint(config, workdir)['loss'] == pytest.approx(live['loss'],
                                                                             rel=1e-6)
    config.eval.ema = True
    assert main.evaluate_checkpoint(config, workdir)['loss'] == pytest.approx(at_end['loss'],
                                                                             rel=1e-6)


def test_cutout_mixup_cutmix_stochastic_depth_and_ema_train_together(tmp_path):
    ds = random_dataset()
    config = tiny_config(**{'data.train_pp': 'crop(1)|flip_lr|normalize|cutout(3)|mixup(0.2)|cutmix(1.0)',
                            'model.stochastic_depth': 0.2, 'optimizer.ema_decay': 0.9})
    setup, data = _setup(config, ds)
    order = setup.resident_input(data).order_fn(jnp.asarray(0))
    batch = resident.train_batch(data, order, jnp.asarray(0), jnp.asarray(0),
                                 jax.random.key(1), setup.train_pp)
    assert set(batch) == {'image', 'label', 'mixed_label', 'mix_weight'}
    results = train.train_and_evaluate(config, str(tmp_path), ds)
    assert results['step'] == 8 and np.isfinite(results['loss'])
    records = metric_logging.read_jsonl(str(tmp_path / 'metrics.jsonl'))
    assert all(np.isfinite(r['train_loss']) for r in records if 'train_loss' in r)
