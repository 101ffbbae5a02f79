"""--mode=eval: flip TTA, another device count, copied checkpoints, best by a metric."""

import os
import shutil

import jax
import numpy as np
import pytest

from jaxres import checkpointing, main, predict, sharding, train

from conftest import random_dataset, tiny_config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny model trained 4 epochs on 8 devices, eval + checkpoint every epoch."""
    ds = random_dataset()
    workdir = str(tmp_path_factory.mktemp('run'))
    config = tiny_config(num_epochs=4, **{'checkpoint.max_to_keep': 1})
    at_end = train.train_and_evaluate(config, workdir, ds)
    return workdir, ds, config, at_end


@pytest.fixture
def data_from(monkeypatch):
    def use(ds):
        monkeypatch.setattr(main.datasets, 'load_dataset', lambda cfg: ds)
    return use


def _same(a, b):
    for k in ('accuracy', 'top5_accuracy', 'loss', 'num_examples'):
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    assert a['confusion_matrix'] == b['confusion_matrix']


@pytest.mark.parametrize('translate', [False, True])
def test_eval_with_flip_tta(trained, data_from, tmp_path, translate):
    workdir, ds, config, _ = trained
    data_from(ds)
    config = config.copy_and_resolve_references()
    config.eval.tta = True
    config.eval.tta_translate = translate
    config.eval.checkpoint = workdir
    results = main.evaluate_checkpoint(config, str(tmp_path))  # results go to another dir
    assert results['num_examples'] == 40 and os.path.exists(tmp_path / 'eval_results.json')
    # The TTA loss is the cross-entropy of the averaged probabilities of image and mirror.
    np.save(tmp_path / 'x.npy', ds.eval_images)
    config.predict.input, config.predict.output = str(tmp_path / 'x.npy'), str(tmp_path / 'p.npy')
    predict.predict_to_file(config, workdir)
    probs = np.load(tmp_path / 'p.npy')
    loss = -np.mean(np.log(probs[np.arange(40), ds.eval_labels]))
    assert results['loss'] == pytest.approx(loss, rel=1e-4)
    assert results['accuracy'] == np.mean(np.argmax(probs, -1) == ds.eval_labels)


def test_eval_on_one_device_equals_eight(trained, data_from, monkeypatch):
    workdir, ds, config, _ = trained
    data_from(ds)
    on_eight = main.evaluate_checkpoint(config, workdir)
    make_mesh = sharding.make_data_mesh
    monkeypatch.setattr(main.sharding, 'make_data_mesh',
                        lambda devices=None: make_mesh(jax.devices()[:1]))
    on_one = main.evaluate_checkpoint(config, workdir)
    _same(on_one, on_eight)


def test_eval_of_a_checkpoints_dir_copied_elsewhere(trained, data_from, tmp_path):
    workdir, ds, config, _ = trained
    data_from(ds)
    reference = main.evaluate_checkpoint(config, workdir)
    copied = tmp_path / 'elsewhere' / 'ckpts'
    shutil.copytree(checkpointing.checkpoint_dir(workdir), copied)
    config = config.copy_and_resolve_references()
    for path in (copied, tmp_path / 'elsewhere' / 'ckpts' / str(reference['step'])):
        config.eval.checkpoint = str(path)
        results = main.evaluate_checkpoint(config, str(tmp_path / 'other_workdir'))
        _same(results, reference)
        assert results['checkpoint'] == os.path.join(str(copied), str(reference['step']))
    shutil.copytree(workdir, tmp_path / 'workdir_copy')
    config.eval.checkpoint = str(tmp_path / 'workdir_copy')  # a whole workdir works too
    _same(main.evaluate_checkpoint(config, str(tmp_path / 'other_workdir')), reference)


def test_best_is_the_kept_checkpoint_with_the_highest_metric(trained, data_from):
    """Training with max_to_keep=1 keeps the latest plus the best by eval_accuracy."""
    workdir, ds, config, _ = trained
    manager = checkpointing.create_manager(checkpointing.checkpoint_dir(workdir), read_only=True)
    recorded = {s: checkpointing.read_meta(manager, s)['metrics']['eval_accuracy']
                for s in manager.all_steps()}
    best = max(recorded, key=lambda s: (recorded[s], -s))
    data_from(ds)
    config = config.copy_and_resolve_references()
    config.eval.checkpoint = 'best'
    results = main.evaluate_checkpoint(config, workdir)
    assert results['step'] == best
    assert results['accuracy'] == pytest.approx(recorded[best])


def test_best_by_a_chosen_metric_survives_rotation(tmp_path):
    """Lowest loss is best for eval_loss, highest accuracy for eval_accuracy."""
    config = tiny_config(**{'checkpoint.best_metric': 'eval_loss', 'checkpoint.max_to_keep': 2})
    manager = checkpointing.create_manager(str(tmp_path / 'checkpoints'), config)
    state = {'params': {'w': jax.numpy.zeros(3)}}  # retention does not depend on the state
    losses, accuracies = [0.2, 0.8, 0.6, 0.9], [0.3, 0.4, 0.9, 0.2]
    for step, (loss, acc) in enumerate(zip(losses, accuracies), start=1):
        metrics = {'eval_accuracy': acc, 'eval_top5_accuracy': 1.0, 'eval_loss': loss}
        checkpointing.save(manager, step, state, {'metrics': metrics}, metrics=metrics)
    manager.wait_until_finished()
    reader = checkpointing.create_manager(str(tmp_path / 'checkpoints'), read_only=True)
    assert set(reader.all_steps()) == {1, 3, 4}  # the last 2 and the lowest loss
    assert checkpointing.resolve_step(reader, 'best', 'eval_loss') == 1
    assert checkpointing.resolve_step(reader, 'best', 'eval_accuracy') == 3  # of those kept


def test_unknown_best_metric_is_one_clear_error(tmp_path):
    config = tiny_config(**{'checkpoint.best_metric': 'val_acc'})
    with pytest.raises(checkpointing.CheckpointError, match="best_metric='val_acc'.*choose one"):
        checkpointing.create_manager(str(tmp_path / 'checkpoints'), config)
