"""Seed 003: pre-activation ResNet (TF/Keras) on CIFAR-10 (1,570,378 parameters).

Reproduces the report "Pre-activation ResNet on CIFAR-10/100" (Keras; CIFAR-100:
cifar100_preact.py).  Model (from the code): stem conv7x7 3->32, stride 1, with
bias, no BN; 12 pre-activation units in 3 groups of 4 at 32/64/128 channels; a
unit is x + conv3x3(relu(BN(x))) then x + Dropout(0.1)(conv3x3(relu(BN(x)))),
except the first unit of groups 2 and 3, which widens with a biased conv1x1 and
then takes conv3x3/2(relu(BN(x))) with no skip; every conv biased, he_normal
init, Keras 'same' padding, BN momentum 0.99 / eps 1e-3; head BN, 8x8 average
pool, dense.  Data: one scalar mean/std over all training pixels (CIFAR-10:
120.707/255, 64.150/255); Keras ImageDataGenerator: rotation up to 30 degrees,
width/height shift 0.1, nearest fill, bilinear, horizontal and vertical flip;
batch 32.  Recipe: Adam lr 1e-3 x 0.99^epoch (Keras LearningRateScheduler), L2
1e-6 on conv and dense kernels as a loss term, 100 epochs.

Command:
    python launch.py --config configs/cifar10_preact.py --workdir runs/cifar10_preact

Expected: 93.42% test accuracy (the report's figure; not measured here).

Departures: the activation is ReLU as in the code; the prose says ELU:
--config.model.activation=elu.  Adam's eps is Keras' 1e-7 (Keras adds it to
the uncorrected sqrt(v), optax to the corrected one: a negligible difference).
BN running variance is tracked unbiased, as Keras' fused kernel does.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.standardize = 'scalar'
    config.data.mean = (120.707 / 255,)  # over every training pixel and channel
    config.data.std = (64.150 / 255,)
    # Keras ImageDataGenerator: one warp (rotation + shifts, edge fill), then the flips.
    config.data.train_pp = ("affine(rotation=30.0, width_shift=0.1, height_shift=0.1, "
                            "fill='nearest')|flip_lr|flip_ud|normalize")

    config.model.block = 'preact'
    config.model.stage_sizes = (4, 4, 4)
    config.model.stem = 'conv7x7_bias'
    config.model.stem_width = 32
    config.model.stage_widths = (32, 64, 128)
    config.model.conv_bias = True
    config.model.conv_padding = 'same'
    config.model.head_norm = True
    config.model.block_dropout = 0.1
    config.model.activation = 'relu'
    config.model.kernel_init = 'he_normal'
    config.model.dense_init = 'he_normal'
    config.model.bn_momentum = 0.99
    config.model.bn_epsilon = 1e-3
    config.model.bn_running_var = 'unbiased'

    config.batch_size = 32
    config.num_epochs = 100
    config.optimizer.name = 'adam'
    config.optimizer.eps = 1e-7
    config.optimizer.weight_decay = 1e-6
    config.optimizer.weight_decay_mode = 'loss'
    config.schedule.name = 'exponential'
    config.schedule.learning_rate = 1e-3
    config.schedule.decay_rate = 0.99
    return config
