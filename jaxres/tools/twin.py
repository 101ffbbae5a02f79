"""Twin runs: a jaxres recipe and a PyTorch port of its seed's code, side by side.

    python benchmarks/twin.py configs/cifar10_resnet2111.py [--epochs N] [--train_subset N]
        [--test_subset N] [--seeds 0 1] [--out DIR] [--same_order | --same_batches]
        [--check_draws N] [--torch_workers N] [--eval_every N] [--torch_from OTHER/twin.json]
        [--config.key=value ...]

For each seed (``config.seed`` and ``torch.manual_seed``), jaxres trains the config
through its own training path (``train.train_and_evaluate``, evaluating every
epoch; the curves are read back from the workdir's metrics.jsonl), then PyTorch
trains the port of the seed's network (``torch_ports.from_config``) with the
recipe written as the seeds' PyTorch code writes it: torchvision transforms on
PIL images in the config's order, a shuffling DataLoader, ``torch.optim`` with
the weight decay added to the gradient (or an L2 loss term, seed 003),
``clip_grad_value_`` before the step, the ``torch.optim.lr_scheduler`` stepped per
batch (OneCycleLR, warm-up cosine) or per epoch (StepLR, ExponentialLR,
CosineAnnealingLR, ...), and evaluation in eval mode.  Both start from jaxres's
initial parameters and BN statistics, read the same examples through the same
loader (``datasets.load_dataset``: ``--train_subset`` is a fixed class-balanced
part) and train for the same epochs.  ``--same_order`` makes PyTorch take
jaxres's batches in jaxres's order (each framework still augments its own way);
``--same_batches`` makes PyTorch train on jaxres's own model inputs (its order,
crops, flips and normalisation: ``jaxres_batches``), so that the arithmetic of the
two frameworks is all that differs.  ``--check_draws N`` first tests whether the
two sides' own crop and flip draws follow the same distribution (a chi-square on N
draws a side, ``same_draw_distribution``).  ``--eval_every N`` evaluates both sides
every N epochs and after the last (the whole test set at the end only costs one
pass).  ``--torch_from`` takes each seed's PyTorch
side from an earlier twin.json of the same settings instead of training it again: a
jaxres variant (``--config.backend.conv=xla``, another init) against the same PyTorch
runs (``reuse_torch`` refuses a twin.json of other seeds, data or batches).

Writes OUT/twin.json (per seed and epoch, for each framework: train loss, test
loss, test accuracy and wall time; ``agreement``: issue 21's acceptance per epoch,
|mean jaxres - mean PyTorch| <= max(1 point, 2 x seed spread); ``paired``: the
per-seed differences, their 95% t interval and the smallest detectable bias D,
``twin_table.paired``), OUT/twin.png (the
curves of both), the jaxres workdirs OUT/jaxres_seed{S}, and prints one JSON line
per epoch, then the agreement and the paired verdict.  ``benchmarks/twin_table.py`` turns twin.json files
into the table of record.  The
hyper-parameters are the config's (each config documents how it follows its
seed's code); the CIFAR-100 recipes run on CIFAR-10 data with
``--config.dataset=cifar10_jpeg --config.data_dir=DIR`` (the head follows the
data's 10 classes).

Departures from the seeds' code, on both sides: the last partial batch of an
epoch is dropped (jaxres's rule, so both take the same steps); evaluation is in
inference mode (seeds 002 and 004 evaluated with batch statistics).  Keras'
continuous shifts (seed 003) are torchvision RandomAffine's whole-pixel ones.
jaxres's epoch 1 wall time includes loading the data and compiling.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxres import config_validation, metric_logging
from jaxres import main as jaxres_main
from jaxres import safe_io, sharding, train
from jaxres.data import datasets, preprocess, resident
from jaxres.tools.twin_table import agreement, paired, paired_line

try:  # torch and torchvision are the bench extra; main() says how to install them
    import torch
    from jaxres.tools import torch_ports
    from jaxres.tools.torch_ports import torchvision_transforms
except ImportError:
    torch = torch_ports = torchvision_transforms = None

INSTALL = 'benchmarks/twin.py needs PyTorch and torchvision: pip install -e ".[bench]"'
CURVES = ('train_loss', 'test_loss', 'test_accuracy', 'train_s', 'eval_s')


class TwinError(ValueError):
    """A config the twin cannot run; the message says which setting and why."""


# --------------------------------------------------------------------------- #
# Config and data
# --------------------------------------------------------------------------- #
def twin_config(config: ml_collections.ConfigDict, seed: int, epochs: int | None = None,
                train_subset: int | None = None, eval_every: int = 1
                ) -> ml_collections.ConfigDict:
    """``config`` for one twin run: this seed, whole epochs, evaluated every
    ``eval_every`` epochs and after the last."""
    config = config.copy_and_resolve_references()
    config.seed = seed
    if epochs is not None:
        config.num_epochs = epochs
    if train_subset is not None:
        config.train_subset = train_subset
    config.eval.every_epochs = eval_every  # 1: a test point per epoch, as the seeds print
    if config.num_epochs != int(config.num_epochs) or config.num_train_steps > 0:
        raise TwinError(f'the twin runs whole epochs: num_epochs={config.num_epochs} and '
                        f'num_train_steps={config.num_train_steps}; use --epochs N.')
    config_validation.validate(config)
    return config


def check_portable(config: ml_collections.ConfigDict, num_classes: int) -> None:
    """Refuses, before any training, settings that have no PyTorch port here (none of
    them is a seed's)."""
    get = lambda key, default: config_validation.lookup(config, key, default)  # noqa: E731
    ported = {  # key: (its value in every seed recipe, or the values ported)
        'optimizer.name': ('sgd', 'adam'),
        'optimizer.weight_decay_mode': ('coupled', 'loss'),
        'optimizer.bn_bias_lr_scale': (1.0,), 'optimizer.freeze': ((),),
        'optimizer.lookahead_every': (0,), 'optimizer.ema_decay': (0.0,),
        'grad_accum_steps': (1,), 'dtype': ('float32',),
        'data.standardize': ('channel', 'scalar'), 'eval.tta': (False,),
        'data.eval_pp': ('normalize',),
    }
    bad = [f'{k}={get(k, ok[0])!r}' for k, ok in ported.items()
           if torch_ports.hashable(get(k, ok[0])) not in ok]
    pipeline = preprocess.Preprocess.from_config(config)
    bad += [f'data.train_pp op {s}' for s in pipeline.steps if s.name not in TORCH_OPS
            or (s.name == 'flip_lr' and s['mode'] != 'random')]
    if bad:
        raise TwinError(f'no PyTorch port for {", ".join(bad)}: no seed uses it.')
    try:
        torch_ports.from_config(config.model, num_classes)
    except ValueError as e:
        raise TwinError(str(e)) from None


def initial_state(config: ml_collections.ConfigDict, ds: datasets.ImageDataset
                  ) -> tuple[dict, train.TrainSetup]:
    """jaxres's initial ``{'params', 'batch_stats'}`` for this config (what
    ``train_and_evaluate`` starts from), and the ``TrainSetup`` built for it."""
    setup = train.TrainSetup.build(config, ds, sharding.make_data_mesh())
    state = setup.init_state()
    if config.init_from:
        from jaxres import finetune  # pylint: disable=g-import-not-at-top
        state = finetune.init_from(state, config.init_from, setup.mesh,
                                   config.checkpoint.best_metric)
    return {'params': state.params, 'batch_stats': state.batch_stats}, setup


def jaxres_batches(setup: train.TrainSetup, ds: datasets.ImageDataset
                   ) -> Callable[[int], Iterator[tuple[np.ndarray, np.ndarray]]]:
    """epoch -> jaxres's own model inputs of each step of that epoch, as (NHWC float
    images, labels) on the host: its order, crops, flips and normalisation, computed
    by the function the jitted step runs (``ResidentInput.batch``).  What
    ``--same_batches`` feeds PyTorch, so that only the two frameworks' arithmetic
    differs."""
    feed = setup.resident_input(resident.to_device(
        ds, setup.mesh, setup.config.eval_batch_size, setup.train_pp,
        packed=setup.choices.packed_pixels))
    batch = jax.jit(feed.batch)

    def epoch_batches(epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        first = epoch * setup.steps_per_epoch
        order = feed.order_fn(jnp.int32(first))
        for step in range(first, first + setup.steps_per_epoch):
            b = jax.device_get(batch(jnp.int32(step), feed.data, order))
            if 'mixed_label' in b:
                raise TwinError('--same_batches feeds PyTorch images and one label each: a '
                                'spec with mixup or cutmix mixes two; leave --same_batches out.')
            yield np.asarray(b['image'], np.float32), np.asarray(b['label'])
    return epoch_batches


def epoch_orders(setup: train.TrainSetup) -> Callable[[int], np.ndarray]:
    """epoch -> jaxres's (steps_per_epoch, batch) example indices of that epoch."""
    return lambda epoch: np.asarray(resident.epoch_order(
        setup.step_options.rngs.data, epoch, setup.num_train, setup.steps_per_epoch,
        setup.config.batch_size))


# --------------------------------------------------------------------------- #
# jaxres
# --------------------------------------------------------------------------- #
def run_jaxres(config: ml_collections.ConfigDict, workdir: str, steps_per_epoch: int,
               ds: datasets.ImageDataset | None = None) -> dict[str, list]:
    """Trains with ``train.train_and_evaluate`` (on ``ds`` when given) in a new
    workdir; the per-epoch curves (and per-step losses when logged every step) read
    back from its records."""
    if os.path.isdir(workdir) and os.listdir(workdir):
        raise TwinError(f'{workdir} is not empty (jaxres would resume from it): choose a new '
                        '--out.')
    t0 = time.time()
    train.train_and_evaluate(config, workdir, ds)
    records = metric_logging.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    curves = jaxres_curves(records, steps_per_epoch)
    curves['train_s'], curves['eval_s'] = jaxres_times(workdir, t0)
    return curves


def jaxres_curves(records: list[dict], steps_per_epoch: int) -> dict[str, list]:
    """Per-epoch train loss (the mean of the epoch's steps), test loss and accuracy
    at the evaluated epochs (``eval_epochs``); ``step_loss`` too when every step was
    logged."""
    logged = sorted((r['step'], float(r['train_loss'])) for r in records if 'train_loss' in r)
    evals = sorted((r['step'], r) for r in records if 'eval_loss' in r)
    sums: dict[int, list[float]] = {}
    previous = 0
    for step, loss in logged:  # a log record averages the steps since the last one
        epoch_sums = sums.setdefault(math.ceil(step / steps_per_epoch), [0.0, 0])
        epoch_sums[0] += loss * (step - previous)
        epoch_sums[1] += step - previous
        previous = step
    curves = {'train_loss': [total / n for _, (total, n) in sorted(sums.items())],
              'test_loss': [float(r['eval_loss']) for _, r in evals],
              'test_accuracy': [float(r['eval_accuracy']) for _, r in evals],
              'eval_epochs': [step // steps_per_epoch for step, _ in evals]}
    if [s for s, _ in logged] == list(range(1, len(logged) + 1)):
        curves['step_loss'] = [loss for _, loss in logged]
    return curves


def jaxres_times(workdir: str, t0: float) -> tuple[list[float], list[float]]:
    """(train, eval) seconds per evaluation from the TensorBoard events' wall times:
    training runs from the previous evaluation (the first: from ``t0``) to the
    evaluated epoch's last log event, its evaluation from there to its eval event."""
    # pylint: disable-next=g-import-not-at-top
    from tensorboard.backend.event_processing import event_accumulator
    events = event_accumulator.EventAccumulator(
        workdir, size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    logged = {e.step: e.wall_time for e in events.Tensors('train_loss')}
    evaluated = sorted((e.step, e.wall_time) for e in events.Tensors('eval_loss'))
    train_s, eval_s, previous = [], [], t0
    for step, done in evaluated:
        trained = logged[step]  # the loop logs at every epoch's end before evaluating
        train_s.append(trained - previous)
        eval_s.append(done - trained)
        previous = done
    return train_s, eval_s


# --------------------------------------------------------------------------- #
# PyTorch
# --------------------------------------------------------------------------- #
class ArrayImages(torch.utils.data.Dataset if torch else object):
    """uint8 (N, H, W, C) images served as PIL images through a torchvision transform,
    as torchvision's CIFAR10 dataset serves them to the seeds' code."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image  # pylint: disable=g-import-not-at-top
        x = self.images[i]
        return self.transform(Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)), \
            int(self.labels[i])


def _torch_affine(T: Any, size: int, /, rotation: float, width_shift: float,
                  height_shift: float, interpolation: str, fill: str) -> list:
    mode = {'bilinear': T.InterpolationMode.BILINEAR, 'nearest': T.InterpolationMode.NEAREST}
    if fill == 'constant' and not (width_shift or height_shift):  # seed 002
        return [T.RandomRotation(rotation, mode[interpolation], fill=0)]
    if fill == 'constant':
        return [T.RandomAffine(rotation, (width_shift, height_shift),
                               interpolation=mode[interpolation], fill=0)]
    # Keras' fill_mode='nearest' (seed 003): warp an edge-padded copy 3x the size
    # (the shift is then a third of its size), keep the centre.
    return [T.Pad(size, padding_mode='edge'),
            T.RandomAffine(rotation, (width_shift / 3, height_shift / 3),
                           interpolation=mode[interpolation]),
            T.CenterCrop(size)]


# jaxres op -> (torchvision module, images of ``size`` pixels, the op's arguments) ->
# its torchvision transforms.
TORCH_OPS: dict[str, Callable[..., list]] = {
    'crop': lambda T, size, /, padding, mode: [T.RandomCrop(size, padding=padding, fill=0,
                                                            padding_mode=mode)],
    'flip_lr': lambda T, size, /, mode: [T.RandomHorizontalFlip()],
    'flip_ud': lambda T, size, /: [T.RandomVerticalFlip()],
    'color_jitter': lambda T, size, /, **factors: [T.ColorJitter(**factors)],
    'random_resized_crop': lambda T, stored, /, size, scale, ratio: [T.RandomResizedCrop(
        size or stored, scale, ratio, T.InterpolationMode.BILINEAR)],
    'affine': _torch_affine,
    'normalize': lambda T, size, /: [],  # at the end, after the resize
}


def torch_transforms(config: ml_collections.ConfigDict, size: int, train_split: bool):
    """The torchvision pipeline of ``data.train_pp`` (train; eval: none) for images of
    ``size`` pixels, then the resize to ``data.image_size`` and the normalisation."""
    T = torchvision_transforms()
    d = config.data
    steps = []
    for step in (preprocess.Preprocess.from_config(config).steps if train_split else ()):
        steps += TORCH_OPS[step.name](T, size, **dict(step.arguments))
        if step.name == 'random_resized_crop':
            size = step['size'] or size
    if d.image_size and d.image_size != size:  # jaxres resizes every batch (bilinear)
        steps.append(T.Resize((d.image_size, d.image_size), T.InterpolationMode.BILINEAR))
    return T.Compose(steps + [T.ToTensor(), T.Normalize(tuple(d.mean), tuple(d.std))])


# --------------------------------------------------------------------------- #
# The two sides' augmentation draws
# --------------------------------------------------------------------------- #
def coordinate_image(size: int) -> np.ndarray:
    """(size, size, 3) uint8 whose pixels name their place: channel 0 = row + 1,
    channel 1 = column + 1 (0 is left to padding)."""
    r, c = np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
    return np.stack([r + 1, c + 1, np.zeros_like(r)], -1).astype(np.uint8)


def decode_draws(images: np.ndarray, padding: int) -> np.ndarray:
    """(N, 3) [dy, dx, flipped] of augmented coordinate images (uint8 NHWC): the
    crop offset in the padded image ([0, 2 x padding]) and the mirror flip, read
    from the centre pixel and its right neighbour (inside the image for any crop)."""
    size = images.shape[2]
    c = size // 2
    row = images[:, c, c, 0].astype(int) - 1
    col, right = images[:, c, c, 1].astype(int) - 1, images[:, c, c + 1, 1].astype(int) - 1
    flipped = right < col
    dx = np.where(flipped, col - (size - 1 - c), col - c) + padding
    return np.stack([row - c + padding, dx, flipped.astype(int)], -1)


def _to_uint8(normalized: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
    """NHWC model inputs back to pixels (undoing ``normalize``)."""
    x = normalized * np.asarray(config.data.std) + np.asarray(config.data.mean)
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def augmentation_draws(config: ml_collections.ConfigDict, n: int, seed: int = 0
                       ) -> dict[str, np.ndarray]:
    """``n`` crop-and-flip draws of each side for ``config.data.train_pp`` (crop and
    flip_lr only): jaxres's over the examples of consecutive steps of 5,000 (its
    per-example keys), torchvision's transforms applied n times; each (n, 3)
    [dy, dx, flipped]."""
    pipeline = preprocess.Preprocess.from_config(config)
    names = [s.name for s in pipeline.steps]
    crops = [s for s in pipeline.steps if s.name == 'crop']
    if set(names) - {'crop', 'flip_lr', 'normalize'} or len(crops) > 1 or any(
            s['mode'] != 'random' for s in pipeline.steps if s.name == 'flip_lr'):
        raise TwinError(f'the draw check covers one crop and random flip_lr; data.train_pp '
                        f'is {config.data.train_pp!r}.')
    padding = crops[0]['padding'] if crops else 0
    size = 32
    image = coordinate_image(size)
    key = jax.random.key(seed)
    augment = jax.jit(lambda x, idx, step: preprocess.augment_batch(
        x, jnp.zeros(len(idx), jnp.int32), idx, step, jnp.int32(0), key, pipeline)['image'])
    chunks, chunk = [], 5000
    for step, start in enumerate(range(0, n, chunk)):  # the keys: (epoch, step, slot)
        idx = jnp.arange(start, min(n, start + chunk))
        x = jnp.broadcast_to(jnp.asarray(image), (len(idx),) + image.shape)
        chunks.append(decode_draws(_to_uint8(np.asarray(augment(x, idx, jnp.int32(step))),
                                             config), padding))
    from PIL import Image  # pylint: disable=g-import-not-at-top
    torch.manual_seed(seed)
    transform = torch_transforms(config, size, train_split=True)
    pil = Image.fromarray(image)
    torch_images = np.stack([transform(pil).numpy().transpose(1, 2, 0) for _ in range(n)])
    return {'jaxres': np.concatenate(chunks),
            'torch': decode_draws(_to_uint8(torch_images, config), padding)}


def same_draw_distribution(draws: dict[str, np.ndarray]) -> dict[str, Any]:
    """Chi-square test of homogeneity of the two sides' joint (dy, dx, flipped)
    draws: a small p-value says they are drawn from different distributions."""
    from scipy import stats  # pylint: disable=g-import-not-at-top
    cells = sorted({tuple(d) for side in draws.values() for d in side.tolist()})
    index = {c: i for i, c in enumerate(cells)}
    table = np.zeros((2, len(cells)), int)
    for row, side in enumerate(('jaxres', 'torch')):
        np.add.at(table[row], [index[tuple(d)] for d in draws[side].tolist()], 1)
    chi2, p_value, dof, _ = stats.chi2_contingency(table)
    return {'draws': int(table[0].sum()), 'cells': len(cells), 'chi2': float(chi2),
            'dof': int(dof), 'p_value': float(p_value)}


def torch_optimizer(config: ml_collections.ConfigDict, model: Any) -> Any:
    """torch.optim.SGD or Adam; coupled weight decay is their ``weight_decay``."""
    o, lr = config.optimizer, config.schedule.learning_rate
    decay = o.weight_decay if o.weight_decay_mode == 'coupled' else 0.0
    if o.name == 'sgd':
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=o.momentum,
                               nesterov=o.nesterov, weight_decay=decay)
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(o.b1, o.b2), eps=o.eps,
                            weight_decay=decay)


def torch_scheduler(config: ml_collections.ConfigDict, optimizer: Any, steps_per_epoch: int,
                    total_steps: int) -> tuple[Any, bool]:
    """The ``torch.optim.lr_scheduler`` of ``config.schedule`` (None: constant), and
    whether it steps per batch (True) or per epoch."""
    s, lr_scheduler = config.schedule, torch.optim.lr_scheduler
    if s.name == 'constant':
        return None, False
    if s.name in ('step', 'exponential') and s.epoch_offset == 0:
        if s.name == 'step':
            return lr_scheduler.StepLR(optimizer, s.decay_epochs, s.decay_rate), False
        return lr_scheduler.ExponentialLR(optimizer, s.decay_rate), False
    if s.name in ('step', 'exponential'):  # seed 000 counts its epochs from 1
        every, rate, offset = (s.decay_epochs if s.name == 'step' else 1), s.decay_rate, \
            s.epoch_offset
        return lr_scheduler.LambdaLR(optimizer, lambda e: rate ** ((e + offset) // every)), False
    if s.name == 'multistep':
        return lr_scheduler.MultiStepLR(optimizer, list(s.milestones), s.decay_rate), False
    if s.name == 'cosine_epochs':
        epochs = math.ceil(total_steps / steps_per_epoch)
        return lr_scheduler.CosineAnnealingLR(optimizer, epochs, s.end_learning_rate), False
    if s.name == 'onecycle':
        return lr_scheduler.OneCycleLR(
            optimizer, s.learning_rate, max(total_steps, 2), pct_start=s.pct_start,
            anneal_strategy=s.anneal, cycle_momentum=s.cycle_momentum,
            base_momentum=s.base_momentum, max_momentum=s.max_momentum,
            div_factor=s.div_factor, final_div_factor=s.final_div_factor), True
    if s.name == 'warmup_cosine':
        return lr_scheduler.LambdaLR(optimizer, warmup_cosine_factor(
            config, steps_per_epoch, total_steps)), True
    raise TwinError(f'no PyTorch port of schedule.name={s.name!r}.')


def warmup_cosine_factor(config: ml_collections.ConfigDict, steps_per_epoch: int,
                         total_steps: int) -> Callable[[int], float]:
    """step -> lr / peak of optax.warmup_cosine_decay_schedule as jaxres builds it."""
    s = config.schedule
    warmup = min(int(round(s.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
    decay = max(total_steps, warmup + 1) - warmup
    end = s.end_learning_rate / s.learning_rate if s.learning_rate else 0.0

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        t = min(step - warmup, decay) / decay
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def torch_train_step(model: Any, optimizer: Any, x: Any, y: Any,
                     config: ml_collections.ConfigDict) -> float:
    """One step as the seeds write it; returns the cross-entropy (without L2 term)."""
    o = config.optimizer
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y,
                                             label_smoothing=config.label_smoothing)
    total = loss
    if o.weight_decay_mode == 'loss' and o.weight_decay:  # Keras l2 on conv/dense kernels
        total = loss + o.weight_decay * sum(p.square().sum() for p in model.parameters()
                                            if p.ndim > 1)
    total.backward()
    if o.grad_clip_value > 0:  # seed 001: clipped before Adam adds the weight decay
        torch.nn.utils.clip_grad_value_(model.parameters(), o.grad_clip_value)
    if o.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip_norm)
    optimizer.step()
    return loss.item()


def torch_evaluate(model: Any, loader: Any) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the loader, BN in inference mode."""
    model.eval()
    loss, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            loss += torch.nn.functional.cross_entropy(logits, y, reduction='sum').item()
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
    return loss / n, correct / n


def run_torch(config: ml_collections.ConfigDict, ds: datasets.ImageDataset, variables: dict,
              seed: int, order: Callable[[int], np.ndarray] | None = None, workers: int = 0,
              batches: Callable[[int], Iterator[tuple[np.ndarray, np.ndarray]]] | None = None
              ) -> dict[str, list]:
    """Trains the seed port from ``variables`` for ``config.num_epochs`` (``config`` with
    its data.mean/std resolved, as ``TrainSetup.config``); per-epoch curves, step losses.

    ``order`` (epoch -> (steps, batch) indices) replaces the shuffling DataLoader;
    ``batches`` (``jaxres_batches``) replaces the loader and its transforms: PyTorch
    trains on jaxres's own model inputs.
    """
    torch.manual_seed(seed)  # dropout masks and the DataLoader's shuffle
    model = torch_ports.load_flax(torch_ports.from_config(config.model, ds.num_classes),
                                  variables)
    steps_per_epoch = len(ds.train_labels) // config.batch_size
    epochs = int(config.num_epochs)
    optimizer = torch_optimizer(config, model)
    scheduler, per_step = torch_scheduler(config, optimizer, steps_per_epoch,
                                          epochs * steps_per_epoch)
    size = ds.image_shape[0]
    train_set = ArrayImages(ds.train_images, ds.train_labels,
                            torch_transforms(config, size, train_split=True))
    eval_loader = torch.utils.data.DataLoader(
        ArrayImages(ds.eval_images, ds.eval_labels, torch_transforms(config, size, False)),
        batch_size=config.eval_batch_size, num_workers=workers)
    shuffled = torch.utils.data.DataLoader(
        train_set, batch_size=config.batch_size, shuffle=True, drop_last=True,
        num_workers=workers, generator=torch.Generator().manual_seed(seed))
    curves: dict[str, list] = {k: [] for k in CURVES + ('step_loss', 'eval_epochs')}
    every = int(config.eval.every_epochs)
    trained_s = 0.0  # since the last evaluation
    for epoch in range(epochs):
        if batches is not None:
            loader = ((torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
                       torch.from_numpy(y.astype(np.int64))) for x, y in batches(epoch))
        elif order is not None:
            loader = torch.utils.data.DataLoader(
                train_set, batch_sampler=order(epoch).tolist(), num_workers=workers)
        else:
            loader = shuffled
        t = time.perf_counter()
        model.train()
        losses = []
        for x, y in loader:
            losses.append(torch_train_step(model, optimizer, x, y, config))
            if scheduler is not None and per_step:
                scheduler.step()
        if scheduler is not None and not per_step:
            scheduler.step()
        trained_s += time.perf_counter() - t
        curves['step_loss'] += losses
        curves['train_loss'].append(float(np.mean(losses)))
        if (epoch + 1) % every and epoch + 1 < epochs:
            continue  # evaluated as jaxres's Cadence does: every N epochs and at the end
        t = time.perf_counter()
        test_loss, test_accuracy = torch_evaluate(model, eval_loader)
        curves['eval_s'].append(time.perf_counter() - t)
        curves['train_s'].append(trained_s)
        trained_s = 0.0
        curves['eval_epochs'].append(epoch + 1)
        curves['test_loss'].append(test_loss)
        curves['test_accuracy'].append(test_accuracy)
    return curves


# --------------------------------------------------------------------------- #
# A twin run and its outputs
# --------------------------------------------------------------------------- #
def run_seed(config: ml_collections.ConfigDict, seed: int, out: str, *,
             same_order: bool = False, same_batches: bool = False, workers: int = 0,
             log_every_steps: int | None = None, test_subset: int = 0,
             torch_run: dict[str, list] | None = None) -> dict[str, Any]:
    """jaxres then PyTorch for one seed, from the same initial weights and data.

    ``log_every_steps`` (default: once per epoch) also gives jaxres's ``step_loss``
    when 1.  ``test_subset`` > 0: both evaluate on a fixed class-balanced part of
    the test set.  ``torch_run``: this seed's PyTorch curves from an earlier run
    (``reuse_torch``), used instead of training PyTorch again.
    """
    config = twin_config(config, seed, eval_every=config.eval.every_epochs)
    ds = datasets.load_dataset(config)
    if test_subset:
        ds = ds.class_balanced_subset(test_subset, 'eval')
    check_portable(config, ds.num_classes)
    variables, setup = initial_state(config, ds)
    config.log_every_steps = log_every_steps or setup.steps_per_epoch
    jaxres_run = run_jaxres(config, os.path.join(out, f'jaxres_seed{seed}'),
                            setup.steps_per_epoch, ds)
    if torch_run is None:
        torch_run = run_torch(setup.config, ds, variables, seed,
                              epoch_orders(setup) if same_order else None, workers,
                              jaxres_batches(setup, ds) if same_batches else None)
    return {'seed': seed, 'num_train': len(ds.train_labels), 'num_eval': len(ds.eval_labels),
            'eval_split': 'validation' if config.validation_size > 0 else config.eval_split,
            'steps_per_epoch': setup.steps_per_epoch, 'jaxres': jaxres_run, 'torch': torch_run}


VARIANT_KEYS = ('--config.backend.', '--config.model.kernel_init=')  # what --torch_from may vary


def reuse_torch(path: str, seeds: list[int], settings: dict[str, Any], config_path: str,
                overrides: list[str]) -> dict[int, dict[str, list]]:
    """seed -> the PyTorch curves of the earlier twin.json at ``path``, after checking
    that it ran these seeds with these ``settings`` (epochs, subsets, order/batches)
    and the same recipe but for ``backend.*`` and ``model.kernel_init`` (what a
    jaxres variant may change).  Each seed's jaxres run must then count the same
    examples and steps (``check_reused``)."""
    try:
        with open(path, encoding='utf-8') as f:
            earlier = json.load(f)
    except (OSError, ValueError) as e:
        raise TwinError(f'--torch_from {path}: cannot read it ({e}); give the twin.json of an '
                        'earlier run.') from None
    recipe = lambda c, o: (os.path.normpath(c), sorted(  # noqa: E731
        x for x in o if not x.startswith(VARIANT_KEYS)))
    settings = dict(settings, recipe=recipe(config_path, overrides))
    earlier['recipe'] = recipe(earlier.get('config', ''), earlier.get('overrides', []))
    earlier.setdefault('eval_every', 1)  # written before --eval_every existed
    differ = [f'{k}={earlier.get(k)!r} there, {v!r} here' for k, v in settings.items()
              if earlier.get(k) != v]
    by_seed = {r['seed']: r for r in earlier.get('runs', [])}
    missing = [s for s in seeds if s not in by_seed]
    if missing:
        differ.append(f'no seed {", ".join(map(str, missing))} there')
    if differ:
        raise TwinError(f'--torch_from {path} ran other settings ({"; ".join(differ)}): run '
                        'PyTorch again (leave --torch_from out) or match them.')
    return {s: dict(by_seed[s]['torch'], reused_from=path, reused_counts={
        k: by_seed[s][k] for k in ('num_train', 'num_eval', 'steps_per_epoch')}) for s in seeds}


def check_reused(run: dict[str, Any]) -> None:
    """Refuses a reused PyTorch side whose data differ from this jaxres run's."""
    counts = run['torch'].get('reused_counts')
    here = {k: run[k] for k in ('num_train', 'num_eval', 'steps_per_epoch')}
    if counts is not None and counts != here:
        raise TwinError(f'--torch_from {run["torch"]["reused_from"]} trained on {counts}, '
                        f'this run on {here}: not the same data.')


def side_by_side(runs: list[dict]) -> list[dict]:
    """One record per seed and epoch: each curve of both frameworks next to each other."""
    rows = []
    for run in runs:
        for e in range(len(run['torch']['train_loss'])):
            row = {'seed': run['seed'], 'epoch': e + 1}
            for key in CURVES:
                for fw in ('jaxres', 'torch'):
                    values = run[fw].get(key, [])
                    i = e if key == 'train_loss' else eval_index(run[fw], e + 1)
                    row[f'{fw}_{key}'] = (round(values[i], 6) if i is not None
                                          and i < len(values) else None)
            rows.append(row)
    return rows


def eval_index(curves: dict[str, list], epoch: int) -> int | None:
    """Where ``epoch``'s evaluation is in ``curves``' test and time lists (None: not
    evaluated; twin.json files without ``eval_epochs`` evaluated every epoch)."""
    epochs = curves.get('eval_epochs') or list(range(1, len(curves['test_accuracy']) + 1))
    return epochs.index(epoch) if epoch in epochs else None


def plot_twin(runs: list[dict], title: str, path: str) -> str:
    """Train loss, test loss, test accuracy and seconds per epoch against epoch:
    jaxres blue, PyTorch orange, one line style per seed."""
    from jaxres.tools import plot  # pylint: disable=g-import-not-at-top  (the headless backend)
    panels = (('train_loss', 'train loss'), ('test_loss', 'test loss'),
              ('test_accuracy', 'test accuracy'),
              (None, 'seconds since the last evaluation (train + eval)'))
    styles = ('-', '--', ':', '-.')
    fig, axes = plot.plt.subplots(2, 2, figsize=(11, 8))
    for ax, (key, label) in zip(axes.ravel(), panels):
        for i, run in enumerate(runs):
            for color, fw in (('C0', 'jaxres'), ('C1', 'torch')):
                c = run[fw]
                y = c[key] if key else np.add(c['train_s'], c['eval_s'])
                x = (np.arange(1, len(y) + 1) if key == 'train_loss'
                     else [e for e in range(1, len(c['train_loss']) + 1)
                           if eval_index(c, e) is not None])
                ax.plot(x, y, styles[i % len(styles)], marker='o',
                        color=color, markersize=4, label=f'{fw} seed {run["seed"]}')
        ax.set_title(label)
        ax.set_xlabel('epoch')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plot.plt.close(fig)
    return path


def write_result(path: str, head: dict[str, Any], runs: list[dict]) -> dict[str, Any]:
    """twin.json: the settings (``head``), the runs so far and their statistics."""
    result = dict(head, runs=runs, epochs_side_by_side=side_by_side(runs),
                  agreement=agreement(runs), paired=paired(runs),
                  note="train_s/eval_s: seconds from the previous evaluation (training) and "
                       "of the evaluation; jaxres's first includes loading the data and "
                       'compiling.')
    safe_io.write_json(path, result)
    return result


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='a config file, e.g. configs/cifar10_resnet2111.py')
    parser.add_argument('--epochs', type=int, default=None, help="default: the config's")
    parser.add_argument('--train_subset', type=int, default=None,
                        help='a class-balanced training subset of N examples (0 = all)')
    parser.add_argument('--test_subset', type=int, default=0,
                        help='evaluate on a class-balanced part of the test set (0 = all)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--out', default=None, help='default: runs/twin/CONFIG_NAME')
    parser.add_argument('--same_order', action='store_true',
                        help="PyTorch takes jaxres's batches in jaxres's order")
    parser.add_argument('--same_batches', action='store_true',
                        help="PyTorch trains on jaxres's own augmented, normalised batches")
    parser.add_argument('--check_draws', type=int, default=0,
                        help="first compare N crop/flip draws of both sides (chi-square)")
    parser.add_argument('--torch_workers', type=int, default=0,
                        help='DataLoader worker processes (0: in the training process)')
    parser.add_argument('--eval_every', type=int, default=1,
                        help='evaluate every N epochs and after the last (a large test set '
                             'costs less: --eval_every 1000 evaluates at the end only)')
    parser.add_argument('--torch_from', default=None,
                        help="reuse the PyTorch side of an earlier twin.json of the same "
                             'settings (a jaxres variant against the same PyTorch runs)')
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith('--config.')]
    if bad:
        parser.error(f'unrecognized arguments: {" ".join(bad)}')
    return args, rest


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if torch is None or importlib.util.find_spec('torchvision') is None:
        print(f'error: {INSTALL}', file=sys.stderr)
        return 2
    from jaxres import console  # pylint: disable=g-import-not-at-top
    console.quiet_library_logs()
    name = os.path.splitext(os.path.basename(args.config))[0]
    out = args.out or os.path.join('runs', 'twin', name)
    try:
        base = twin_config(jaxres_main.load_config(args.config, overrides), args.seeds[0],
                           args.epochs, args.train_subset, args.eval_every)
        os.makedirs(out, exist_ok=True)
        draws = None
        if args.check_draws:
            draws = same_draw_distribution(augmentation_draws(
                train.TrainSetup.build(base, datasets.load_dataset(base),
                                       sharding.make_data_mesh()).config, args.check_draws))
            print(f'augmentation draws: {draws["draws"]:,} a side over {draws["cells"]} '
                  f'(dy, dx, flip) cells: chi-square {draws["chi2"]:.1f}, {draws["dof"]} dof, '
                  f'p = {draws["p_value"]:.3f}', flush=True)
        settings = {'epochs': int(base.num_epochs), 'train_subset': base.train_subset,
                    'test_subset': args.test_subset, 'eval_every': args.eval_every,
                    'same_order': args.same_order,
                    'same_batches': args.same_batches}
        reused = (reuse_torch(args.torch_from, args.seeds, settings, args.config, overrides)
                  if args.torch_from else {})
        head = {'config': args.config, 'overrides': overrides, **settings,
                'torch_from': args.torch_from, 'augmentation_draws': draws,
                'torch_version': torch.__version__}
        runs = []
        for seed in args.seeds:
            runs.append(run_seed(base, seed, out, same_order=args.same_order,
                                 same_batches=args.same_batches, workers=args.torch_workers,
                                 test_subset=args.test_subset, torch_run=reused.get(seed)))
            check_reused(runs[-1])
            for row in side_by_side(runs[-1:]):
                print(json.dumps(row), flush=True)
            # After every seed: a run stopped later keeps the seeds it finished.
            result = write_result(os.path.join(out, 'twin.json'), head, runs)
    except (TwinError, config_validation.ConfigError, datasets.DataError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    png = plot_twin(runs, f'{name}: jaxres vs the PyTorch port of its seed',
                    os.path.join(out, 'twin.png'))
    for row in result['agreement']:
        print(f'epoch {row["epoch"]}: mean test accuracy jaxres {row["jaxres_mean"]:.2%}, '
              f'PyTorch {row["torch_mean"]:.2%}, difference {row["difference"]:+.2%}, '
              f'bound {row["bound"]:.2%} (seed spread {row["spread"]:.2%}): '
              f'{"within" if row["within"] else "OUTSIDE"}')
    for p in result['paired']:
        print(paired_line(p))
    print(f'wrote {os.path.join(out, "twin.json")} and {png}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
