"""airbench94's net and SGD recipe on 2 CPU cores: CIFAR-10 time to accuracy (1,971,640 parameters).

Reproduces airbench94 (Keller Jordan's CIFAR-10 speed records: 94% in 9.9
epochs) from jaxres's general parts; the base of ``cifar10_speedrun`` (Muon).
Net (jaxres/models/airbench.py): patch-whitening stem (kernel frozen), three
conv-pool groups of widths 64/256/256, dirac-initialised convs, bias-only
BatchNorm, max-pooled head x 1/9.  Nesterov SGD (momentum 0.85, BN biases at
64x the lr), linear one-cycle ("triangle") schedule, label smoothing 0.2,
alternating flips, reflect-padded 2-pixel translations, lookahead every 5
steps, flip + translate TTA; batch 512, lr 0.75, coupled weight decay 1.33e-3,
6 epochs.  How lr and weight decay follow from airbench's, and why batch 512:
benchmarks/RESULTS.md, "Config notes moved from configs/".

Command (real CIFAR-10 JPEGs of ../shared/data; the preparation is one-off;
with the official files, TFDS ``cifar10``, drop the two dataset overrides):

    python -m jaxres.prepare_data --source ../shared/data/cifar10-jpeg.tar.gz \\
        --data_dir /tmp/jr/tfds
    python launch.py --config configs/cifar10_speedrun_sgd.py --workdir runs/speedrun_sgd \\
        --config.dataset=cifar10_jpeg --config.data_dir=/tmp/jr/tfds

Expected: 89.55% test accuracy with TTA, mean of 3 seeds at 6 epochs, each run
within 29.4 minutes (measured on 2 CPU cores, benchmarks/RESULTS.md); short of
issue 8's >= 90%, which ``cifar10_speedrun`` meets.  Measured with the whitening
kernel from the first 5000 training images (one class on the prepared data), not
re-measured with every tenth image (375776a), which left ``cifar10_speedrun``
where it was (90.35% against 90.50% for seed 0).

Departures: 6 epochs, not 9.9, in float32 (airbench: fp16).  Batch 512, not
1024, the lr scaled linearly (the same per example); lr and weight decay
converted to jaxres's mean loss and PyTorch-coupled decay.  The whitening bias
trains throughout (airbench freezes it after 3 epochs).
"""

import ml_collections

from configs import default
from jaxres import models


def get_config() -> ml_collections.ConfigDict:
    """The airbench-style recipe."""
    c = default.get_config()
    c.dataset = 'cifar10'

    c.data.mean = (0.4914, 0.4822, 0.4465)
    c.data.std = (0.2470, 0.2435, 0.2616)
    c.data.train_pp = "crop(2, 'reflect')|flip_lr('alternate')|normalize"

    # airbench94's net (jaxres/models/airbench.py; its defaults are airbench94's):
    # widths (64, 256, 256), 2x2 whitening stem, GELU, dirac init, BN momentum 0.4
    # (Flax convention; airbench's is 0.6 in it: RESULTS.md, issue 35's lead), logits x 1/9.
    # (airbench93's narrower widths (64, 128, 128) reached less in the same time
    # here: benchmarks/RESULTS.md.)
    c.model = models.model_config('airbench')

    c.batch_size = 512  # airbench: 1024; lr scaled linearly (RESULTS.md: why 512)
    c.eval_batch_size = 1000
    c.num_epochs = 6  # what fits the 30-minute budget on 2 CPU cores, evaluation included
    c.label_smoothing = 0.2

    c.optimizer.name = 'sgd'
    c.optimizer.momentum = 0.85
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 1.33e-3
    c.optimizer.bn_bias_lr_scale = 64.0
    c.optimizer.freeze = ('stem/conv/kernel',)
    c.optimizer.lookahead_every = 5
    c.optimizer.lookahead_decay = 0.95

    c.schedule.name = 'onecycle'
    c.schedule.anneal = 'linear'
    c.schedule.learning_rate = 0.75  # 1.5 at airbench's batch 1024, scaled linearly
    c.schedule.pct_start = 0.23
    c.schedule.div_factor = 1 / 0.2  # starts at 0.2x the peak
    c.schedule.final_div_factor = 0.2 / 0.07  # ends at 0.07x the peak
    c.schedule.cycle_momentum = False

    c.log_every_steps = 12
    c.eval.every_epochs = 100  # > num_epochs: only the final evaluation (TTA is costly)
    c.eval.tta = True
    c.eval.tta_translate = True
    c.checkpoint.every_epochs = 1
    return c
