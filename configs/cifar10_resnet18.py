"""ResNet-18 (kuangliu CIFAR layout, 11,173,962 parameters) on CIFAR-10: the standard recipe.

Source: kuangliu/pytorch-cifar (its ResNet18 and main.py).  Recipe: SGD lr 0.1,
momentum 0.9, weight decay 5e-4 (coupled, as PyTorch), batch 128, 5 warm-up
epochs then cosine to 0 over 200 epochs, pad-4 random crop + horizontal flip,
kuangliu's per-channel normalisation.

Command:
    python launch.py --config configs/cifar10_resnet18.py --workdir runs/r18

Expected: about 95% test accuracy on one GPU, an expectation for this recipe,
not measured here (no GPU on these machines) and not the source's own table,
which lists 93.02% for ResNet18.

Departures: from kuangliu's main.py, 5 linear warm-up epochs and a cosine
stepped per step; main.py has no warm-up and steps CosineAnnealingLR(T_max=200)
once per epoch.  Conv init kaiming_fan_out (torchvision's, the model default)
where kuangliu keeps PyTorch's default (about 6x smaller variance on equal-width
3x3 convs); --config.model.kernel_init=pytorch gives kuangliu's.  Measured effect
in a short run (3 epochs of 2,560 images, lr 0.02, 3 seeds; benchmarks/RESULTS.md,
issue 32): PyTorch's init +4.33 pt test accuracy (95% interval +2.13 to +6.53).
"""

from configs import default


def get_config():
    config = default.get_config()
    # kuangliu/pytorch-cifar's normalisation (its std is not CIFAR-10's own).
    config.data.mean = (0.4914, 0.4822, 0.4465)
    config.data.std = (0.2023, 0.1994, 0.2010)
    return config
