"""Seed 001: kuangliu ResNet [2,1,1,1] on CIFAR-10 with OneCycle (4,977,226 parameters).

Reproduces the report "ResNet [2,1,1,1] on CIFAR-10" (70 epochs).  Model: the
kuangliu/pytorch-cifar ResNet with BasicBlocks [2,1,1,1], widths 64/128/256/512,
stem conv3x3 + BN + ReLU, conv1x1 + BN shortcuts, global average pool, linear
512->10.  Data: all 50,000 training images; the 10,000 test images are the
report's "validation" set; random crop with reflect padding 4, horizontal flip,
CIFAR-10 per-channel normalisation; batch 400.  Recipe (from the code): Adam
(eps 1e-8) with weight decay 1e-6 added to the gradient, gradient clipping by
value at 0.1 applied before the decay term; OneCycle per step over 70 epochs:
max lr 0.01, 30% warm-up, cosine, initial lr max/25, final lr initial/1e4, Adam
beta1 cycled 0.95 -> 0.85 -> 0.95.

Command:
    python launch.py --config configs/cifar10_resnet2111.py --workdir runs/cifar10_resnet2111

Variants the report also trains: the half-width [6,5,4,3] at 32-256 (4,865,322
parameters, 93.87%): --config.model.stage_sizes='(6,5,4,3)'
--config.model.stem_width=32; and [1,1,1,1] (93.38%): see cifar10_resnet9.py.

Expected: 93.81% test accuracy (the report's figure; not measured here).

Departures: none intended.  Inits are PyTorch's defaults (kuangliu sets none);
BN running variance is tracked unbiased, as PyTorch does.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.mean = (0.4914, 0.4822, 0.4465)  # as the seed (kuangliu's values)
    config.data.std = (0.2023, 0.1994, 0.2010)
    config.data.train_pp = "crop(4, 'reflect')|flip_lr|normalize"

    config.model.stage_sizes = (2, 1, 1, 1)
    config.model.kernel_init = 'pytorch'
    config.model.bn_running_var = 'unbiased'

    config.batch_size = 400
    config.num_epochs = 70
    config.optimizer.name = 'adam'
    config.optimizer.eps = 1e-8
    config.optimizer.weight_decay = 1e-6
    config.optimizer.weight_decay_mode = 'coupled'
    config.optimizer.grad_clip_value = 0.1
    config.schedule.name = 'onecycle'
    config.schedule.learning_rate = 0.01  # the peak
    return config
