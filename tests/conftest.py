"""Shared test setup: 8 fake CPU devices, the repo root on sys.path, tiny configs."""

import os
import sys

# Must happen before JAX initialises its backends: every test then runs the
# sharded code paths on 8 devices, as on an 8-GPU machine.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from configs import default  # noqa: E402
from jaxres import datasets  # noqa: E402

SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'cifar10-jpeg.tar.gz')


def tiny_config(**overrides):
    """A ResNet of ~6k parameters on 8x8 images; runs in seconds on CPU."""
    c = default.get_config()
    c.dataset = 'arrays'
    c.data.mean = (0.5, 0.5, 0.5)
    c.data.std = (0.25, 0.25, 0.25)
    c.data.crop_padding = 1
    c.model.stage_sizes = (1, 1)
    c.model.stem_width = 8
    c.batch_size = 32
    c.eval_batch_size = 40
    c.num_epochs = 2
    c.schedule.warmup_epochs = 0.5
    c.log_every_steps = 2
    c.checkpoint.async_save = False
    for k, v in overrides.items():
        target = c
        *parents, leaf = k.split('.')
        for p in parents:
            target = target[p]
        target[leaf] = v
    return c


def random_dataset(n_train=128, n_eval=40, size=8, channels=3, classes=4, seed=0):
    """Images whose class is visible (a class-dependent brightness) plus noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 96, (n, size, size, channels)) + (y * 160 // classes)[:, None, None, None]
        return x.astype(np.uint8), y

    (xt, yt), (xe, ye) = make(n_train), make(n_eval)
    return datasets.ImageDataset.from_arrays(xt, yt, xe, ye)


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture
def small_ds():
    return random_dataset()
