"""Shared test setup: 8 fake CPU devices, the repo root on sys.path, tiny configs."""

import functools
import io
import os
import sys
import tarfile
import tempfile


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for ``devices`` fake CPU devices, compiled as every test compiles.

    The tests' programs are tiny, so compiling dominates their time: without
    LLVM's optimisations XLA:CPU compiles them in about half the time (the HLO
    passes, sharding and collectives included, still run).  Subprocesses that
    tests start (launch.py, multi-process runs) pass it on.
    """
    return (f'--xla_force_host_platform_device_count={devices} '
            '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true')


# Must happen before JAX initialises its backends: every test then runs the
# sharded code paths on 8 devices, as on an 8-GPU machine.
os.environ.setdefault('XLA_FLAGS', xla_flags(8))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One persistent XLA cache per test session, shared by both xdist workers and every
# subprocess they start: a restarted run (SIGKILL/SIGTERM resumes, launch.py twice,
# multi-process runs) loads the programs its predecessor compiled instead of
# compiling them again.  Cache hits are the same executables, so bitwise
# comparisons are unaffected; each session starts empty, as a fresh clone does.
SESSION_DIR = os.path.join(
    tempfile.gettempdir(),
    f"jaxres-tests-{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}")
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(SESSION_DIR, 'xla'))
# The oneDNN conv library is built anew each session too (tests/test_onednn_conv.py
# then tests the build, not a library left by an earlier run).
os.environ.setdefault('JAXRES_CACHE_DIR', os.path.join(SESSION_DIR, 'jaxres'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from configs import default  # noqa: E402
from jaxres.data import datasets  # noqa: E402

if os.environ.get('CI') == 'true':
    # CI runs the PyTorch parity tests (test_seed_models, test_twin, ...); without
    # torch they would skip, so a CI machine without it fails here instead.
    import importlib
    import importlib.util
    importlib.import_module('torch')  # an import that fails says why
    if importlib.util.find_spec('torchvision') is None:  # imported as torch_ports does
        raise ImportError('CI needs torchvision (.ci/run installs it)')

SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'cifar10-jpeg.tar.gz')


def tiny_config(**overrides):
    """A ResNet of ~6k parameters on 8x8 images; runs in seconds on CPU."""
    c = default.get_config()
    c.dataset = 'arrays'
    c.data.mean = (0.5, 0.5, 0.5)
    c.data.std = (0.25, 0.25, 0.25)
    c.data.train_pp = 'crop(1)|flip_lr|normalize'
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


def tiny_width(config):
    """``config`` with one block per stage and 1/16 of its widths (the same kinds of
    stem, block and head), smaller inputs where it resizes; in place, returned."""
    from jaxres import models  # pylint: disable=g-import-not-at-top
    m = config.model
    if m.family == 'airbench':
        m.stage_widths = tuple(max(4, w // 16) for w in m.stage_widths)
        m.whiten_samples = 64
    elif m.family == 'wide_resnet':
        m.depth, m.widen_factor = 10, 1
    else:
        if not m.stage_sizes:
            m.block, sizes = models.DEPTHS[m.depth]
            m.stage_sizes = sizes
        m.stage_sizes = (1,) * len(m.stage_sizes)
        m.stem_width = max(4, m.stem_width // 16)
        m.stage_widths = tuple(max(4, w // 16) for w in m.stage_widths)
    if config.data.image_size:
        config.data.image_size = 48  # 224 in the fine-tuning recipe
    return config


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


@functools.lru_cache(maxsize=None)
def read_cifar_jpegs(train_per_class: int, test_per_class: int) -> dict:
    """{(split, class): [JPEG bytes]}: the first files per class of the shared archive."""
    wanted = {'train': train_per_class, 'test': test_per_class}
    found = {}
    with tarfile.open(SHARED_DATA, 'r|gz') as tar:
        for m in tar:
            parts = m.name.lstrip('./').split('/')
            if m.isfile() and len(parts) == 3 and parts[0] in wanted:
                got = found.setdefault((parts[0], parts[1]), [])
                if len(got) < wanted[parts[0]]:
                    got.append(tar.extractfile(m).read())
            if len(found) == 20 and all(len(v) == wanted[k[0]] for k, v in found.items()):
                break
    return found


def imagenet_tree(root, jpegs, seed=0):
    """train/<class>/*.JPEG and a flat val/ of JPEGs resized to 64-320 px, with
    Kaggle's LOC_val_solution.csv; returns {val file stem: class}."""
    from PIL import Image  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(seed)
    val_labels = {}
    for (split, cls), images in sorted(jpegs.items()):
        for i, data in enumerate(images):
            w, h = rng.integers(64, 321, 2)
            im = Image.open(io.BytesIO(data)).resize((int(w), int(h)))
            if split == 'train':
                (root / 'train' / cls).mkdir(parents=True, exist_ok=True)
                im.save(root / 'train' / cls / f'{cls}_{i}.JPEG', quality=90)
            else:
                stem = f'ILSVRC2012_val_{len(val_labels) + 1:08d}'
                (root / 'val').mkdir(parents=True, exist_ok=True)
                im.save(root / 'val' / f'{stem}.JPEG', quality=90)
                val_labels[stem] = cls
    with open(root / 'LOC_val_solution.csv', 'w') as f:
        f.write('ImageId,PredictionString\n')
        for stem, cls in val_labels.items():
            f.write(f'{stem},{cls} 12 34 200 180 {cls} 1 2 3 4\n')
    return val_labels
