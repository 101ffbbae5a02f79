"""Train, evaluate, predict or summarise a jaxres config.

    python launch.py --config configs/cifar10_resnet18.py --workdir runs/r18 \
        [--mode train|eval|predict|summary] [--config.key=value ...]
"""

import os
import sys

if __name__ == '__main__':  # before JAX and TensorFlow are imported
    from jaxres import console, host_memory
    console.quiet_native_startup(os.environ, sys.argv)
    host_memory.reexec_with_hugepages([sys.executable] + sys.argv)

from absl import app, flags
from ml_collections import config_flags

from jaxres import main as jaxres_main

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file in configs/.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'summary'], 'What to do.')
flags.mark_flags_as_required(['config'])


def parse_flags(argv):
    """absl parsing, with bad flags and config overrides as one 'error:' line."""
    try:
        return FLAGS(argv)
    except Exception as e:  # flags.Error, or ml_collections' KeyError/AttributeError/TypeError
        sys.exit('error: ' + jaxres_main.explain_flag_error(argv, e))


def main(argv):
    del argv
    if FLAGS.mode != 'summary' and not FLAGS.workdir:
        sys.exit('error: --workdir is required for --mode=' + FLAGS.mode)
    try:
        config = FLAGS.config
        config.keys()  # a config file that failed to load raises on first use
    except OSError as e:  # config_flags loads the file lazily
        sys.exit('error: cannot load --config: ' + str(e).strip().splitlines()[-1].strip())
    return jaxres_main.run(config, FLAGS.workdir or '', FLAGS.mode)


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
