"""Seed 002: "ResNet9" = kuangliu ResNet [1,1,1,1] on CIFAR-10 (4,903,242 parameters).

Reproduces the report "ResNet9 on CIFAR-10" (colour jitter, rotation, cosine
annealing).  Model: the kuangliu ResNet with one BasicBlock per stage, widths
64-512, global average pool, linear 512->10.  Data, the seed's torchvision
pipeline in its order: ColorJitter(0.1, 0.1, 0.1, hue), horizontal flip,
RandomCrop 32 pad 4, horizontal flip, RandomRotation(10) (nearest
interpolation, black fill), RandomCrop 32 pad 4; normalise with mean 0.5 / std
0.5.  Batch 16 (from the code; the prose says 64).  Recipe (from the code): SGD
lr 0.004, momentum 0.9, CosineAnnealingLR(T_max=60) stepped per epoch, 60
epochs (prose: lr 0.01, 100 epochs).

Command:
    python launch.py --config configs/cifar10_resnet9.py --workdir runs/cifar10_resnet9

Expected: 92% test accuracy (the report's figure; not measured here).

Departures: the seed measured its in-loop test accuracy with BN in training
mode; jaxres evaluates in inference mode.  Its code builds Dropout2d(0.3)
layers that forward() never calls, so there is no dropout here either.  The
hue value is cut off in the report; 0.1 is assumed.  The seed's SGD line is cut
off after momentum; no weight decay is assumed.  Inits are PyTorch's defaults;
BN running variance is tracked unbiased, as PyTorch does.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.mean = (0.5, 0.5, 0.5)
    config.data.std = (0.5, 0.5, 0.5)
    # The seed's torchvision transforms, in its order (the flip and crop twice).
    config.data.train_pp = ('color_jitter(0.1, 0.1, 0.1, 0.1)|flip_lr|crop(4)|flip_lr'
                            "|affine(rotation=10.0, interpolation='nearest')|crop(4)|normalize")

    config.model.stage_sizes = (1, 1, 1, 1)
    config.model.kernel_init = 'pytorch'
    config.model.bn_running_var = 'unbiased'

    config.batch_size = 16
    config.num_epochs = 60
    config.optimizer.weight_decay = 0.0
    config.schedule.name = 'cosine_epochs'
    config.schedule.learning_rate = 0.004
    config.schedule.end_learning_rate = 0.0
    return config
