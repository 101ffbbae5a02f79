"""Train, evaluate, predict or summarise a jaxres config.

    python launch.py --config configs/cifar10_resnet18.py --workdir runs/r18 \
        [--mode train|eval|predict|summary] [--config.key=value ...]
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from jaxres import main as jaxres_main

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file in configs/.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'summary'], 'What to do.')
flags.mark_flags_as_required(['config'])


def main(argv):
    del argv
    if FLAGS.mode != 'summary' and not FLAGS.workdir:
        sys.exit('error: --workdir is required for --mode=' + FLAGS.mode)
    return jaxres_main.run(FLAGS.config, FLAGS.workdir or '', FLAGS.mode)


if __name__ == '__main__':
    app.run(main)
