"""WRN-28-10 with Cutout on CIFAR-10 (36,479,194 parameters): the Cutout paper's recipe.

Reproduces DeVries & Taylor, "Improved Regularization of Convolutional Neural
Networks with Cutout" (2017), Wide ResNet row, as their code trains it
(uoguelph-mlrg/Cutout): WRN-28-10 (Zagoruyko & Komodakis) with dropout 0.3
between each block's convs; pad-4 random crop + horizontal flip, normalisation
with their mean/std, then a 16x16 cutout of each normalised image; SGD lr 0.1,
Nesterov momentum 0.9, weight decay 5e-4 (coupled), batch 128, 200 epochs,
lr x0.2 at epochs 60, 120 and 160.

Command:
    python launch.py --config configs/cifar10_wrn28_10.py --workdir runs/wrn28_10

Expected: 96.9% test accuracy (3.08% error): the paper's figure on a GPU, not
measured here (these machines have 2 CPU cores).

Departures: none known; the paper's ``Cutout`` draws the square's centre with
numpy, jaxres from the run's per-example keys.
"""

from configs import default
from jaxres import models


def get_config():
    config = default.get_config()
    config.data.mean = (125.3 / 255, 123.0 / 255, 113.9 / 255)
    config.data.std = (63.0 / 255, 62.1 / 255, 66.7 / 255)
    config.data.train_pp = 'crop(4)|flip_lr|normalize|cutout(16)'
    config.model = models.model_config('wide_resnet', depth=28, widen_factor=10,
                                       dropout_rate=0.3)

    config.num_epochs = 200
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-4
    config.schedule.name = 'multistep'
    config.schedule.learning_rate = 0.1
    config.schedule.milestones = (60, 120, 160)
    config.schedule.decay_rate = 0.2
    return config
