"""Seed 003 on CIFAR-100: the pre-activation ResNet of cifar10_preact.py (1,581,988 parameters).

Reproduces the report's CIFAR-100 result.  Everything as cifar10_preact.py
except the data set, the 100-way dense head and the scalar standardisation
(CIFAR-100: 121.936/255, 68.389/255); the best checkpoint is picked by top-5.

Command:
    python launch.py --config configs/cifar100_preact.py --workdir runs/cifar100_preact

Expected: 88.40% top-5 test accuracy (the report's figure and its metric for
CIFAR-100; not measured here).  jaxres reports top-1 and top-5 in every
evaluation.

Departures: as cifar10_preact.py (ReLU as in the code; ELU per the prose with
--config.model.activation=elu).
"""

from configs import cifar10_preact


def get_config():
    config = cifar10_preact.get_config()
    config.dataset = 'cifar100'
    config.data.mean = (121.936 / 255,)
    config.data.std = (68.389 / 255,)
    config.checkpoint.best_metric = 'eval_top5_accuracy'
    return config
