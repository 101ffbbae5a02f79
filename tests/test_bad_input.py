"""Every mistake a user can make gets one clear message and loses nothing."""

import os

import jax
import numpy as np
import pytest

from jaxres import checkpointing, config_validation, metric_logging, train
from jaxres.data import datasets

from conftest import random_dataset, tiny_config


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    with pytest.raises(config_validation.ConfigError, match='cannot write to --workdir'):
        train.train_and_evaluate(tiny_config(), str(blocker / 'run'), random_dataset())


def test_nonfinite_skip_mode_skips_and_counts(tmp_path):
    ds = random_dataset()
    config = tiny_config(nonfinite='skip', **{'schedule.name': 'constant',
                                              'schedule.learning_rate': 1e30})
    train.train_and_evaluate(config, str(tmp_path), ds)
    records = metric_logging.read_jsonl(os.path.join(str(tmp_path), 'metrics.jsonl'))
    assert sum(r.get('skipped_steps', 0) for r in records) > 0
    manager = checkpointing.create_manager(checkpointing.checkpoint_dir(str(tmp_path)),
                                           read_only=True)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
    setup = train.TrainSetup.build(config, ds, mesh)
    state = checkpointing.restore_state(manager, 8, setup.abstract_state())
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state.params))


@pytest.mark.parametrize('kwargs,match', [
    (dict(y_train=np.array([0, 0, 2, 2])), r"classes \['1'\] have no training example"),
    (dict(x_train=np.zeros((4, 8, 8, 2), np.uint8)), r'x_train has shape \(4, 8, 8, 2\)'),
    (dict(x_test=np.zeros((2, 4, 4, 3), np.uint8)), 'both splits need one image shape'),
    (dict(y_test=np.array([0, 1, 5])), 'differ in length'),
])
def test_in_memory_arrays_are_checked(kwargs, match):
    args = dict(x_train=np.zeros((4, 8, 8, 3), np.uint8), y_train=np.array([0, 1, 2, 2]),
                x_test=np.zeros((2, 8, 8, 3), np.uint8), y_test=np.array([0, 1]))
    args.update(kwargs)
    with pytest.raises(datasets.DataError, match=match):
        datasets.ImageDataset.from_arrays(**args)
