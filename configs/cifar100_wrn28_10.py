"""WRN-28-10 with Cutout on CIFAR-100 (36,536,884 parameters): the Cutout paper's recipe.

``cifar10_wrn28_10`` on CIFAR-100: the paper's CIFAR-100 normalisation and an
8x8 cutout (their choice for CIFAR-100); everything else the same.

Command:
    python launch.py --config configs/cifar100_wrn28_10.py --workdir runs/wrn28_10_c100

Expected: 81.6% test accuracy (18.41% error): the paper's figure on a GPU, not
measured here.

Departures: as cifar10_wrn28_10.py.
"""

from configs import cifar10_wrn28_10


def get_config():
    config = cifar10_wrn28_10.get_config()
    config.dataset = 'cifar100'
    config.data.mean = (129.3 / 255, 124.1 / 255, 112.4 / 255)
    config.data.std = (68.2 / 255, 65.4 / 255, 70.4 / 255)
    config.data.train_pp = 'crop(4)|flip_lr|normalize|cutout(8)'
    return config
