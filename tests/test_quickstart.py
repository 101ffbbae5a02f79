"""The README's first command: the digits quick-start (a few steps here)."""

import os

from jaxres import main

from configs import quickstart


def test_quickstart_runs_end_to_end(tmp_path, capsys):
    config = quickstart.get_config()
    config.num_train_steps = 30
    workdir = str(tmp_path / 'qs')
    assert main.run(config, workdir, 'train') == 0
    out = capsys.readouterr().out
    assert 'test accuracy' in out and 'on 360 examples' in out
    assert os.path.exists(os.path.join(workdir, 'eval_results.json'))
    assert 'configs/cifar10_resnet18.py' in out  # the closing summary says what is next
    assert os.path.getsize(os.path.join(workdir, 'plots', 'learning_curves.png')) > 0


def test_after_cifar_training_the_next_step_uses_the_checkpoint():
    config = quickstart.get_config()
    assert 'configs/cifar10_resnet18.py' in main.next_step(config, 'runs/qs')
    config.dataset = 'cifar10'
    hint = main.next_step(config, 'runs/r18')
    assert '--workdir runs/r18 --mode=predict' in hint and 'cifar10_resnet18' not in hint
