"""Quick start: a small ResNet (77,754 parameters) on scikit-learn's bundled 8x8 digits.

Not a reproduction: the README's first command, with no download.  Data: 1,797
real 8x8 grey images of handwritten digits that ship inside scikit-learn; a
fixed split (seeded permutation, last 360 images = test set).  Model: the same
ResNet family as every config, at 8x8: CIFAR stem of width 16, three
BasicBlock stages (16/32/64 channels, strides 1/2/2).  Augmentation: pad-1
random crop (no flip: a mirrored digit is another symbol).  SGD lr 0.1, one
warm-up epoch then cosine, batch 64, 15 epochs.

Command:
    python launch.py --config configs/quickstart.py --workdir runs/quickstart

Expected: 98.9% test accuracy (measured on 2 CPU cores, README).  Next step:
the CIFAR-10 configs (README).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset = 'digits'
    config.data.mean = (0.5,)
    config.data.std = (0.5,)
    config.data.train_pp = 'crop(1)|normalize'

    config.model.stage_sizes = (1, 1, 1)
    config.model.stem_width = 16

    config.batch_size = 64
    config.eval_batch_size = 120
    config.num_epochs = 15
    config.schedule.learning_rate = 0.1
    config.schedule.warmup_epochs = 1.0
    config.log_every_steps = 20
    config.checkpoint.every_epochs = 5
    return config
