"""main: configs loaded with command-line overrides, a bad override as one 'error:'
line that names the fix, and the modes' exit statuses."""

import os

import pytest

from jaxres import main

from conftest import ROOT

DEFAULT = os.path.join(ROOT, 'configs', 'default.py')


def test_overrides_are_parsed_as_the_command_line_does():
    config = main.load_config(DEFAULT, ['--config.batch_size=64',
                                        '--config.schedule.learning_rate=0.2'])
    assert config.batch_size == 64 and config.schedule.learning_rate == 0.2
    assert main.load_config(DEFAULT).batch_size != 64


@pytest.mark.parametrize('override, message', [
    ('--config.model.conv_impl=xla', 'error: config.model.conv_impl is now config.backend.conv '
                                     '(the same values; it no longer counts as part of the '
                                     'model): use --config.backend.conv=xla.'),
    ('--config.data.hflip=True', "error: config.data.hflip is now flip_lr(mode='random'|"
                                 "'alternate') in the spec config.data.train_pp"),
    ('--config.bach_size=64', "error: unknown or invalid config key in '--config.bach_size=64'"),
    ('--config.batch_size=many', "error: invalid value in '--config.batch_size=many'"),
])
def test_a_bad_override_is_one_error_line_with_the_fix(override, message):
    with pytest.raises(SystemExit) as e:
        main.load_config(DEFAULT, [override])
    assert str(e.value).startswith(message)
    assert '\n' not in str(e.value)


def test_a_missing_config_file_is_one_error_line(tmp_path):
    with pytest.raises(SystemExit) as e:
        main.load_config(str(tmp_path / 'nope.py'))
    assert str(e.value).startswith('error: cannot load --config: ')


def test_a_user_error_exits_2_with_one_line_and_summary_counts_parameters(capsys, tmp_path):
    config = main.load_config(os.path.join(ROOT, 'configs', 'cifar10_resnet18.py'))
    assert main.run(config, str(tmp_path), 'bogus') == 2
    assert capsys.readouterr().err.strip() == (
        "error: --mode='bogus' is not valid; choose train, eval, predict, export or summary.")
    assert main.run(config, str(tmp_path), 'summary') == 0
    assert capsys.readouterr().out.rstrip().endswith('Total parameters: 11,173,962')


@pytest.mark.parametrize('override, expected', [
    ('--config.schedule.learning_rate=-1', 'config.schedule.learning_rate=-1.0 must be >= 0'),
    ('--config.model.block=resnext', "config.model.block='resnext' is not valid"),
    ('--config.data.train_pp=crop(4)|flip', "unknown preprocessing op 'flip'"),
])
def test_an_invalid_config_stops_training_with_one_error_line(override, expected, capsys,
                                                               tmp_path):
    config = main.load_config(os.path.join(ROOT, 'configs', 'quickstart.py'), [override])
    assert main.run(config, str(tmp_path / 'w'), 'train') == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and expected in err and '\n' not in err
