"""checkpointing: another model's workdir refused, a broken newest checkpoint passed
over, a full disk loses nothing."""

import errno
import logging
import os

import pytest

from jaxres import checkpointing, metric_logging, train

from conftest import random_dataset, tiny_config


def _steps(workdir):
    return checkpointing.create_manager(checkpointing.checkpoint_dir(workdir),
                                        read_only=True).all_steps()


def test_workdir_of_another_model_is_refused_with_the_differences(tmp_path):
    ds = random_dataset()
    train.train_and_evaluate(tiny_config(), str(tmp_path), ds)
    before = sorted(os.listdir(checkpointing.checkpoint_dir(str(tmp_path))))
    with pytest.raises(checkpointing.CheckpointError,
                       match=r'model.stem_width: 8 -> 16.*--config.init_from'):
        train.train_and_evaluate(tiny_config(**{'model.stem_width': 16}), str(tmp_path), ds)
    assert sorted(os.listdir(checkpointing.checkpoint_dir(str(tmp_path)))) == before


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    ds = random_dataset()
    workdir = str(tmp_path)
    train.train_and_evaluate(tiny_config(), workdir, ds)  # checkpoints at steps 4 and 8
    state_dir = os.path.join(checkpointing.checkpoint_dir(workdir), '8', 'state')
    for root, _, files in os.walk(state_dir):
        for name in files:  # truncate every file of the newest checkpoint
            with open(os.path.join(root, name), 'r+b') as f:
                f.truncate(max(0, os.path.getsize(f.name) // 3))
    with caplog.at_level(logging.WARNING):
        results = train.train_and_evaluate(tiny_config(num_epochs=3), workdir, ds)
    assert 'checkpoint step 8' in caplog.text and 'earlier one' in caplog.text
    assert results['step'] == 12
    first_logged = [r['step'] for r in metric_logging.read_jsonl(
        os.path.join(workdir, 'metrics.jsonl')) if 'train_loss' in r]
    assert 6 in first_logged[4:]  # steps 5..8 were trained again from step 4


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ds = random_dataset()
    workdir = str(tmp_path)
    real_save = checkpointing.ocp.CheckpointManager.save

    def save_until_disk_is_full(self, step, *args, **kwargs):
        if step > 4:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(checkpointing.ocp.CheckpointManager, 'save', save_until_disk_is_full)
    with pytest.raises(checkpointing.CheckpointError,
                       match=r'No space left on device.*earlier checkpoints \(\[4\]\) are intact'):
        train.train_and_evaluate(tiny_config(), workdir, ds)
    monkeypatch.undo()
    assert _steps(workdir) == [4]
    assert train.train_and_evaluate(tiny_config(), workdir, ds)['step'] == 8  # resumes
