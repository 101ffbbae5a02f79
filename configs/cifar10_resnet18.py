"""ResNet-18 (kuangliu CIFAR layout, 11,173,962 parameters) on CIFAR-10.

The standard recipe: SGD lr 0.1, momentum 0.9, weight decay 5e-4 (coupled, as
PyTorch), batch 128, 5 warm-up epochs then cosine to 0 over 200 epochs, pad-4
random crop + horizontal flip, per-channel normalisation.

Run:
    python launch.py --config configs/cifar10_resnet18.py --workdir runs/r18

Expected (not measured here, no GPU on these machines): about 95% test accuracy
on one GPU, the figure kuangliu/pytorch-cifar reports for this recipe.
"""

from configs import default


def get_config():
    config = default.get_config()
    # kuangliu/pytorch-cifar's normalisation (its std is not CIFAR-10's own).
    config.data.mean = (0.4914, 0.4822, 0.4465)
    config.data.std = (0.2023, 0.1994, 0.2010)
    return config
