"""Train, evaluate, predict with, export or summarise a jaxres config.

    python launch.py --config configs/cifar10_resnet18.py --workdir runs/r18 \
        [--mode train|eval|predict|export|summary] [--config.key=value ...]
"""

import os
import sys

if __name__ == '__main__':  # before JAX and TensorFlow are imported
    from jaxres import console
    from jaxres.cpu import host_memory
    console.quiet_native_startup(os.environ, sys.argv)
    host_memory.reexec_with_hugepages([sys.executable] + sys.argv)

from absl import app, flags

from jaxres import main as jaxres_main

FLAGS = flags.FLAGS
jaxres_main.define_config_flag(FLAGS)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'export', 'summary'], 'What to do.')
flags.mark_flags_as_required(['config'])


def main(argv):
    del argv
    config = jaxres_main.parsed_config(FLAGS)
    # An exported model needs no workdir to predict with (config.predict.model).
    if FLAGS.mode != 'summary' and not FLAGS.workdir and not (
            FLAGS.mode == 'predict' and config.predict.model):
        sys.exit('error: --workdir is required for --mode=' + FLAGS.mode)
    return jaxres_main.run(config, FLAGS.workdir or '', FLAGS.mode)


if __name__ == '__main__':
    app.run(main, flags_parser=lambda argv: jaxres_main.parse_flags(FLAGS, argv))
