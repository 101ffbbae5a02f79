"""console: library start-up notices and INFO chatter hidden, warnings and
--verbosity kept."""

import logging

import pytest

from jaxres import console


@pytest.mark.parametrize('argv, loud', [
    (['launch.py'], False), (['launch.py', '--verbosity=1'], True),
    (['launch.py', '-v', '2'], True), (['launch.py', '--verbosity', '0'], False),
    (['launch.py', '-v=-1'], False), (['launch.py', '--verbosity'], False),
])
def test_verbose_reads_absl_verbosity_from_the_command_line(argv, loud):
    assert console.verbose(argv) is loud


def test_quiet_native_startup_silences_tensorflow_unless_verbose():
    env = {}
    console.quiet_native_startup(env, ['launch.py'])
    assert env == {'TF_ENABLE_ONEDNN_OPTS': '0', 'TF_CPP_MIN_LOG_LEVEL': '1'}
    mine = {'TF_CPP_MIN_LOG_LEVEL': '0'}  # the user's own setting wins
    console.quiet_native_startup(mine, ['launch.py'])
    assert mine['TF_CPP_MIN_LOG_LEVEL'] == '0'
    loud = {}
    console.quiet_native_startup(loud, ['launch.py', '-v', '1'])
    assert loud == {}


def _record(pathname, level, msg):
    return logging.LogRecord('x', level, pathname, 1, msg, None, None)


@pytest.mark.parametrize('pathname, level, msg, shown', [
    ('/site-packages/orbax/checkpoint/manager.py', logging.INFO, 'Saving step 3', False),
    ('/site-packages/orbax/checkpoint/manager.py', logging.WARNING, 'slow save', True),
    ('/site-packages/tensorflow_datasets/core/x.py', logging.WARNING,
     'OpenCV is not installed, ...', False),
    ('/site-packages/jax/_src/xla_bridge.py', logging.INFO, 'Unable to initialize backend',
     False),
    ('/work/jaxres/train.py', logging.INFO, 'step 10/100 | ...', True),
])
def test_library_chatter_is_dropped_and_warnings_and_jaxres_lines_kept(pathname, level, msg,
                                                                        shown):
    assert console._DropLibraryChatter().filter(_record(pathname, level, msg)) is shown
