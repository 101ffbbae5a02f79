"""airbench94_muon's own training code, ported to CPU PyTorch: the reference figure R.

Ports ``airbench94_muon.py`` of Keller Jordan's cifar10-airbench
(https://github.com/KellerJordan/cifar10-airbench, commit
096d14d9aa92dcc837ab4f1f288dffea2bbe41b7; 94.01% mean CIFAR-10 test accuracy in 8
epochs on an A100) statement by statement: the net (2x2 patch-whitening conv of 24
filters, kernel frozen and computed from 5000 training images with eps
5e-4, its bias trained only in the first 3 epochs; GELU; three conv groups of
widths 64/256/256, conv -> max-pool 2 -> BN -> GELU -> conv -> BN -> GELU, convs
without bias, dirac on their first in-channels filters; BatchNorm eps 1e-12,
PyTorch momentum 0.4, weight frozen at 1; max-pool 3; bias-free linear head
rescaled to std 1, logits divided by the 256 features), the optimisers (Muon on
the conv kernels: lr 0.24, Nesterov momentum 0.6, kernel renormalised to norm
sqrt(out channels) before each step, update orthogonalised by 3 quintic
Newton-Schulz steps in bfloat16; fused Nesterov SGD, momentum 0.85, on the
whitening bias and BN biases at lr 0.053 and on the head at lr 0.67, weight
decay ``2e-6 * batch_size / lr`` per group; each lr linear to zero over the run,
the whitening bias's over its 3 epochs), cross-entropy with label smoothing 0.2
summed over the batch, the loader (normalised with airbench's CIFAR mean/std,
a random half of the images mirrored once, then all of them mirrored in odd
epochs; reflect-padded random translation by up to 2 pixels, done with
airbench's mask loop; ``randperm`` shuffling; batch 2000, last partial batch
dropped) and the evaluation (batches of 2000 in eval mode; every epoch without
TTA, at the end TTA level 2: mirror and one-pixel translations, 6 views).

Data: the images are read through jaxres's own loader
(``jaxres.main.load_config('configs/cifar10_speedrun.py', ...)`` and
``jaxres.data.datasets.load_dataset``), so the port and jaxres's
``configs/cifar10_speedrun.py`` train on identical uint8 images in the same stored
order, and the whitening kernel comes from the same 5000 of them: every tenth
(``datasets.spread_sample``), where airbench takes the first 5000, because the
prepared JPEG CIFAR-10 is stored class by class (its first 5000 are all airplanes)
while the official order is mixed.

Departures from the original, and why:
  * float32 throughout on the CPU (airbench: fp16 weights and activations with
    float32 BatchNorm, fp16 parameters updated in place; CUDA-only speed features).
    ``--autocast_bf16`` runs forward and backward under
    ``torch.autocast('cpu', dtype=torch.bfloat16)`` with channels_last instead,
    the nearest CPU equivalent of its fp16 (weights stay float32).  Muon's
    Newton-Schulz iteration stays in bfloat16, as in the original (it runs on CPUs).
  * No ``torch.compile`` (neither on the model nor on the Newton-Schulz function),
    no ``cudnn.benchmark``; timing by ``time.perf_counter`` instead of CUDA events;
    ``--channels_last`` (the images and the model in that memory format, float32)
    steps ~1.3x faster here.  Speed only.
  * No "warmup" run on random labels (it only warmed the compiled kernels), and
    ``--seeds`` runs instead of 200 unseeded ones: each seed sets
    ``torch.manual_seed``, and every random draw (init, flips, crops, shuffles)
    comes from the CPU generator (airbench's came from the CUDA one).
  * Data: the prepared JPEG CIFAR-10 from jaxres's loader instead of torchvision's
    CIFAR-10 pickle; ``--train_subset N`` (jaxres's fixed class-balanced subset,
    ``config.train_subset``) and ``--test_subset N`` (the same on the test split)
    exist for smoke runs and are not the original's.
  * The loader keeps only the pre-processed copy its later epochs read (the
    padded one) rather than all three; memory only, the same images.
  * ``--epochs`` (default 8) sets the run length: total steps ``ceil(epochs *
    steps per epoch)`` as airbench's ``ceil(8 * len(train_loader))``.
    ``batch_size`` (also ``--batch_size``, default 2000) and ``whiten_samples``
    are arguments of ``train`` (for the tests' tiny runs); the weight decay keeps
    airbench's ``2e-6 * batch_size``.
  * Extra logging only, the training unchanged: each epoch's mean training loss
    (smoothed, per example) and accuracy over all its batches, the test loss,
    beside airbench's own train_acc (the last batch's) and test accuracy.

Command (as ``benchmarks/airbench_ref.py``; the data preparation is one-off):

    python -m jaxres.prepare_data --source ../shared/data/cifar10-jpeg.tar.gz \\
        --data_dir /tmp/prep/tfds
    python benchmarks/airbench_ref.py --data_dir /tmp/prep/tfds --dataset cifar10_jpeg \\
        --epochs 8 --seeds 0 1 --out runs/airbench_ref [--train_subset N] \\
        [--test_subset N] [--threads 2] [--channels_last] [--autocast_bf16]

Prints the parameter count (the module's, and without BatchNorm's frozen unit
weights, which jaxres's bias-only BatchNorm lacks: that one equals the speedrun
net's 1,971,640), then one JSON line per epoch and seed (train loss, train
accuracy, last-batch train accuracy, test loss and accuracy without TTA, wall
seconds of training and of evaluation, seconds per step), then each seed's test
accuracy with TTA; writes all of it to OUT/airbench_ref.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from jaxres.data import datasets

INSTALL = 'benchmarks/airbench_ref.py needs PyTorch: pip install -e ".[torch]"'
try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as e:  # pragma: no cover - the torch extra is missing
    raise ImportError(INSTALL) from e

SOURCE = {'repo': 'KellerJordan/cifar10-airbench', 'path': 'airbench94_muon.py',
          'commit': '096d14d9aa92dcc837ab4f1f288dffea2bbe41b7'}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = 'configs/cifar10_speedrun.py'
JAXRES_SPEEDRUN_PARAMETERS = 1_971_640  # launch.py --config configs/cifar10_speedrun.py --mode=summary

CIFAR_MEAN = torch.tensor((0.4914, 0.4822, 0.4465))
CIFAR_STD = torch.tensor((0.2470, 0.2435, 0.2616))


# --------------------------------------------------------------------------- #
# Muon optimizer
# --------------------------------------------------------------------------- #
def zeropower_via_newtonschulz5(G: torch.Tensor, steps: int = 3, eps: float = 1e-7,
                                dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """airbench's quintic Newton-Schulz iteration: G -> roughly U S' V^T with S'_ii in
    about (0.5, 1.5), where U S V^T = G (in bfloat16, as the original)."""
    assert len(G.shape) == 2
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.to(dtype)
    X /= (X.norm() + eps)  # ensure top singular value <= 1
    if G.size(0) > G.size(1):
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(0) > G.size(1):
        X = X.T
    return X


class Muon(torch.optim.Optimizer):
    """airbench94_muon's Muon: (Nesterov) momentum, the kernel renormalised to norm
    sqrt(out channels), then a step along the orthogonalised update."""

    def __init__(self, params, lr=1e-3, momentum=0, nesterov=False):
        if lr < 0.0:
            raise ValueError(f'Invalid learning rate: {lr}')
        if momentum < 0.0:
            raise ValueError(f'Invalid momentum value: {momentum}')
        if nesterov and momentum <= 0:
            raise ValueError('Nesterov momentum requires a momentum')
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr = group['lr']
            momentum = group['momentum']
            for p in group['params']:
                g = p.grad
                if g is None:
                    continue
                state = self.state[p]
                if 'momentum_buffer' not in state.keys():
                    state['momentum_buffer'] = torch.zeros_like(g)
                buf = state['momentum_buffer']
                buf.mul_(momentum).add_(g)
                g = g.add(buf, alpha=momentum) if group['nesterov'] else buf
                p.data.mul_(len(p.data)**0.5 / p.data.norm())  # normalize the weight
                update = zeropower_via_newtonschulz5(g.reshape(len(g), -1)).view(g.shape)
                p.data.add_(update, alpha=-lr)  # take a step


# --------------------------------------------------------------------------- #
# DataLoader
# --------------------------------------------------------------------------- #
def normalize(images: torch.Tensor) -> torch.Tensor:
    """torchvision's ``T.Normalize(CIFAR_MEAN, CIFAR_STD)`` on (N, 3, H, W)."""
    return (images - CIFAR_MEAN.view(1, -1, 1, 1)) / CIFAR_STD.view(1, -1, 1, 1)


def batch_flip_lr(inputs: torch.Tensor) -> torch.Tensor:
    flip_mask = (torch.rand(len(inputs)) < 0.5).view(-1, 1, 1, 1)
    return torch.where(flip_mask, inputs.flip(-1), inputs)


def batch_crop(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Random translation of padded images: airbench's two (equivalent) mask loops."""
    r = (images.size(-1) - crop_size) // 2
    shifts = torch.randint(-r, r + 1, size=(len(images), 2))
    images_out = torch.empty((len(images), 3, crop_size, crop_size), dtype=images.dtype)
    if r <= 2:
        for sy in range(-r, r + 1):
            for sx in range(-r, r + 1):
                mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
                images_out[mask] = images[mask, :, r + sy:r + sy + crop_size,
                                          r + sx:r + sx + crop_size]
    else:
        images_tmp = torch.empty((len(images), 3, crop_size, crop_size + 2 * r),
                                 dtype=images.dtype)
        for s in range(-r, r + 1):
            mask = (shifts[:, 0] == s)
            images_tmp[mask] = images[mask, :, r + s:r + s + crop_size, :]
        for s in range(-r, r + 1):
            mask = (shifts[:, 1] == s)
            images_out[mask] = images_tmp[mask, :, :, r + s:r + s + crop_size]
    return images_out


class CifarLoader:
    """airbench's CifarLoader over uint8 NHWC images (float32, on the CPU)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, train: bool = True,
                 batch_size: int = 500, aug: dict | None = None,
                 channels_last: bool = False):
        self.images = torch.as_tensor(np.asarray(images)).float().div(255).permute(0, 3, 1, 2)
        self.images = self.images.contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self.labels = torch.as_tensor(np.asarray(labels)).long()
        self.normalize = normalize
        self.proc_images = {}  # the processed images later epochs read, made in the first
        self.epoch = 0
        self.aug = aug or {}
        for k in self.aug.keys():
            assert k in ['flip', 'translate'], 'Unrecognized key: %s' % k
        self.batch_size = batch_size
        self.drop_last = train
        self.shuffle = train

    def __len__(self):
        return (len(self.images) // self.batch_size if self.drop_last
                else math.ceil(len(self.images) / self.batch_size))

    def __iter__(self):
        pad = self.aug.get('translate', 0)
        if self.epoch == 0:
            images = self.normalize(self.images)
            key = 'norm'
            # Pre-flip images in order to do every-other epoch flipping scheme
            if self.aug.get('flip', False):
                images, key = batch_flip_lr(images), 'flip'
            # Pre-pad images to save time when doing random translation
            if pad > 0:
                images, key = F.pad(images, (pad,) * 4, 'reflect'), 'pad'
            self.proc_images = {key: images}  # the original also keeps the others

        if pad > 0:
            images = batch_crop(self.proc_images['pad'], self.images.shape[-2])
        elif self.aug.get('flip', False):
            images = self.proc_images['flip']
        else:
            images = self.proc_images['norm']
        # Flip all images together every other epoch.
        if self.aug.get('flip', False):
            if self.epoch % 2 == 1:
                images = images.flip(-1)

        self.epoch += 1

        indices = (torch.randperm if self.shuffle else torch.arange)(len(images))
        for i in range(len(self)):
            idxs = indices[i * self.batch_size:(i + 1) * self.batch_size]
            yield (images[idxs], self.labels[idxs])


# --------------------------------------------------------------------------- #
# Network
# --------------------------------------------------------------------------- #
class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with stats momentum 0.6 in airbench's sense (PyTorch's 0.4), eps
    1e-12 and its weight frozen at one."""

    def __init__(self, num_features, momentum=0.6, eps=1e-12):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    """3x3 'same' conv without bias; its first in_channels filters start as identities."""

    def __init__(self, in_channels, out_channels):
        super().__init__(in_channels, out_channels, kernel_size=3, padding='same', bias=False)

    def reset_parameters(self):
        super().reset_parameters()
        w = self.weight.data
        torch.nn.init.dirac_(w[:w.size(1)])


class ConvGroup(nn.Module):

    def __init__(self, channels_in, channels_out):
        super().__init__()
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out)
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.conv1(x)
        x = self.pool(x)
        x = self.norm1(x)
        x = self.activ(x)
        x = self.conv2(x)
        x = self.norm2(x)
        x = self.activ(x)
        return x


class CifarNet(nn.Module):
    """airbench94_muon's net (float32: the original casts all but BatchNorm to fp16)."""

    def __init__(self):
        super().__init__()
        widths = dict(block1=64, block2=256, block3=256)
        whiten_kernel_size = 2
        whiten_width = 2 * 3 * whiten_kernel_size**2
        self.whiten = nn.Conv2d(3, whiten_width, whiten_kernel_size, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        self.layers = nn.Sequential(
            nn.GELU(),
            ConvGroup(whiten_width, widths['block1']),
            ConvGroup(widths['block1'], widths['block2']),
            ConvGroup(widths['block2'], widths['block3']),
            nn.MaxPool2d(3),
        )
        self.head = nn.Linear(widths['block3'], 10, bias=False)

    def reset(self):
        for m in self.modules():
            if type(m) in (nn.Conv2d, Conv, BatchNorm, nn.Linear):
                m.reset_parameters()
        w = self.head.weight.data
        w *= 1 / w.std()

    @torch.no_grad()
    def init_whiten(self, train_images, eps=5e-4):
        c, (h, w) = train_images.shape[1], self.whiten.weight.shape[2:]
        patches = train_images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(
            -1, c, h, w).float()
        patches_flat = patches.view(len(patches), -1)
        est_patch_covariance = (patches_flat.T @ patches_flat) / len(patches_flat)
        eigenvalues, eigenvectors = torch.linalg.eigh(est_patch_covariance, UPLO='U')
        eigenvectors_scaled = (eigenvectors.T.reshape(-1, c, h, w)
                               / torch.sqrt(eigenvalues.view(-1, 1, 1, 1) + eps))
        self.whiten.weight.data[:] = torch.cat((eigenvectors_scaled, -eigenvectors_scaled))

    def forward(self, x, whiten_bias_grad=True):
        b = self.whiten.bias
        x = F.conv2d(x, self.whiten.weight, b if whiten_bias_grad else b.detach())
        x = self.layers(x)
        x = x.view(len(x), -1)
        return self.head(x) / x.size(-1)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """The module's parameters, and without BatchNorm's frozen unit weights (which
    jaxres's bias-only BatchNorm does not have)."""
    total = sum(p.numel() for p in model.parameters())
    bn_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, BatchNorm))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {'parameters': total, 'bn_unit_weights': bn_weights,
            'parameters_without_bn_weights': total - bn_weights,
            'trainable_parameters': trainable,
            'jaxres_speedrun_parameters': JAXRES_SPEEDRUN_PARAMETERS,
            'matches_jaxres': total - bn_weights == JAXRES_SPEEDRUN_PARAMETERS}


# --------------------------------------------------------------------------- #
# Evaluation
# --------------------------------------------------------------------------- #
def infer(model, loader, tta_level=0, autocast_bf16=False):
    """Logits of the loader's images in eval mode; TTA level 1 adds the mirror,
    level 2 also the one-pixel translations (6 views)."""

    def infer_basic(inputs, net):
        return net(inputs).clone()

    def infer_mirror(inputs, net):
        return 0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))

    def infer_mirror_translate(inputs, net):
        logits = infer_mirror(inputs, net)
        pad = 1
        padded_inputs = F.pad(inputs, (pad,) * 4, 'reflect')
        inputs_translate_list = [
            padded_inputs[:, :, 0:32, 0:32],
            padded_inputs[:, :, 2:34, 2:34],
        ]
        logits_translate_list = [infer_mirror(inputs_translate, net)
                                 for inputs_translate in inputs_translate_list]
        logits_translate = torch.stack(logits_translate_list).mean(0)
        return 0.5 * logits + 0.5 * logits_translate

    model.eval()
    test_images = loader.normalize(loader.images)
    infer_fn = [infer_basic, infer_mirror, infer_mirror_translate][tta_level]
    with torch.no_grad(), _autocast(autocast_bf16):
        return torch.cat([infer_fn(inputs, model).float()
                          for inputs in test_images.split(2000)])


def evaluate(model, loader, tta_level=0, autocast_bf16=False) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on the loader's images."""
    logits = infer(model, loader, tta_level, autocast_bf16)
    accuracy = (logits.argmax(1) == loader.labels).float().mean().item()
    return accuracy, F.cross_entropy(logits, loader.labels).item()


def _autocast(enabled: bool):
    return torch.autocast('cpu', dtype=torch.bfloat16, enabled=enabled)


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
def train(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
          test_labels: np.ndarray, *, seed: int = 0, epochs: float = 8,
          batch_size: int = 2000, whiten_samples: int = 5000,
          whiten_bias_epochs: float = 3, autocast_bf16: bool = False,
          channels_last: bool | None = None,
          log: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """airbench94_muon's ``main``: one run on uint8 NHWC images and int labels.

    Returns the per-epoch records, the final test accuracy with TTA level 2, the
    parameter counts and airbench's ``time_seconds`` (whitening init, training and
    the TTA evaluation; not the per-epoch evaluations).  ``log`` gets each epoch's
    record as it ends.
    """
    torch.manual_seed(seed)
    if channels_last is None:
        channels_last = autocast_bf16
    bias_lr = 0.053
    head_lr = 0.67
    wd = 2e-6 * batch_size

    test_loader = CifarLoader(test_images, test_labels, train=False, batch_size=2000,
                              channels_last=channels_last)
    train_loader = CifarLoader(train_images, train_labels, train=True, batch_size=batch_size,
                               aug=dict(flip=True, translate=2), channels_last=channels_last)
    if len(train_loader) == 0:
        raise ValueError(f'{len(train_labels)} training images make no batch of {batch_size}.')
    total_train_steps = math.ceil(epochs * len(train_loader))
    whiten_bias_train_steps = math.ceil(whiten_bias_epochs * len(train_loader))

    model = CifarNet()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    # Create optimizers and learning rate schedulers
    filter_params = [p for p in model.parameters() if len(p.shape) == 4 and p.requires_grad]
    norm_biases = [p for n, p in model.named_parameters() if 'norm' in n and p.requires_grad]
    param_configs = [dict(params=[model.whiten.bias], lr=bias_lr, weight_decay=wd / bias_lr),
                     dict(params=norm_biases, lr=bias_lr, weight_decay=wd / bias_lr),
                     dict(params=[model.head.weight], lr=head_lr, weight_decay=wd / head_lr)]
    optimizer1 = torch.optim.SGD(param_configs, momentum=0.85, nesterov=True, fused=True)
    optimizer2 = Muon(filter_params, lr=0.24, momentum=0.6, nesterov=True)
    optimizers = [optimizer1, optimizer2]
    for opt in optimizers:
        for group in opt.param_groups:
            group['initial_lr'] = group['lr']

    time_seconds = 0.0
    model.reset()
    step = 0

    # Initialize the whitening layer using training images
    start = time.perf_counter()
    # jaxres's sample (evenly spaced over the split): airbench's first 5000 of the official
    # CIFAR-10 order hold every class, the first 5000 of a class-sorted split do not.
    picked = torch.as_tensor(datasets.spread_sample(len(train_loader.images), whiten_samples))
    model.init_whiten(train_loader.normalize(train_loader.images[picked]))
    time_seconds += time.perf_counter() - start

    records = []
    for epoch in range(math.ceil(total_train_steps / len(train_loader))):
        start = time.perf_counter()
        model.train()
        loss_sum, correct, seen, steps = 0.0, 0, 0, 0
        for inputs, labels in train_loader:
            with _autocast(autocast_bf16):
                outputs = model(inputs, whiten_bias_grad=(step < whiten_bias_train_steps))
                loss = F.cross_entropy(outputs.float(), labels, label_smoothing=0.2,
                                       reduction='sum')
            loss.backward()
            for group in optimizer1.param_groups[:1]:
                group['lr'] = group['initial_lr'] * (1 - step / whiten_bias_train_steps)
            for group in optimizer1.param_groups[1:] + optimizer2.param_groups:
                group['lr'] = group['initial_lr'] * (1 - step / total_train_steps)
            for opt in optimizers:
                opt.step()
            model.zero_grad(set_to_none=True)
            loss_sum += loss.item()
            correct += (outputs.detach().argmax(1) == labels).sum().item()
            seen += len(labels)
            steps += 1
            step += 1
            if step >= total_train_steps:
                break
        train_s = time.perf_counter() - start
        time_seconds += train_s

        # airbench's train_acc: the last training batch's
        last_batch_acc = (outputs.detach().argmax(1) == labels).float().mean().item()
        start = time.perf_counter()
        test_acc, test_loss = evaluate(model, test_loader, 0, autocast_bf16)
        record = {'seed': seed, 'epoch': epoch + 1, 'steps': step,
                  'train_loss': loss_sum / seen, 'train_acc': correct / seen,
                  'last_batch_train_acc': last_batch_acc, 'test_loss': test_loss,
                  'test_acc': test_acc, 'train_s': train_s, 'step_s': train_s / steps,
                  'eval_s': time.perf_counter() - start}
        records.append(record)
        if log is not None:
            log(record)

    start = time.perf_counter()
    tta_acc, tta_loss = evaluate(model, test_loader, 2, autocast_bf16)
    tta_s = time.perf_counter() - start
    time_seconds += tta_s
    return {'seed': seed, 'epochs': records, 'tta_test_acc': tta_acc, 'tta_test_loss': tta_loss,
            'tta_eval_s': tta_s, 'time_seconds': time_seconds, 'steps': step,
            'whiten_bias_train_steps': whiten_bias_train_steps,
            'parameters': parameter_counts(model)}


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #
def load_data(dataset: str, data_dir: str, train_subset: int = 0, test_subset: int = 0):
    """jaxres's own loader on configs/cifar10_speedrun.py: uint8 NHWC arrays."""
    from jaxres import main as jaxres_main  # pylint: disable=g-import-not-at-top
    from jaxres.data import datasets  # pylint: disable=g-import-not-at-top
    overrides = [f'--config.dataset={dataset}', f'--config.data_dir={data_dir}']
    if train_subset:
        overrides.append(f'--config.train_subset={train_subset}')
    config = jaxres_main.load_config(os.path.join(REPO_ROOT, CONFIG), overrides)
    ds = datasets.load_dataset(config)
    if test_subset:
        ds = ds.class_balanced_subset(test_subset, split='eval')
    return ds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data_dir', required=True, help='TFDS directory of the prepared data')
    p.add_argument('--dataset', default='cifar10_jpeg', help='its TFDS name')
    p.add_argument('--epochs', type=float, default=8)
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--out', default='runs/airbench_ref', help='writes OUT/airbench_ref.json')
    p.add_argument('--train_subset', type=int, default=0,
                   help='train on the fixed class-balanced first N (config.train_subset)')
    p.add_argument('--test_subset', type=int, default=0,
                   help='evaluate on a class-balanced N of the test split (smoke runs)')
    p.add_argument('--batch_size', type=int, default=2000)
    p.add_argument('--threads', type=int, default=None,
                   help="torch.set_num_threads (default: torch's own)")
    p.add_argument('--autocast_bf16', action='store_true',
                   help="torch.autocast('cpu', bfloat16) with channels_last")
    p.add_argument('--channels_last', action='store_true',
                   help='channels_last memory format (speed only; implied by --autocast_bf16)')
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_data(args.dataset, args.data_dir, args.train_subset, args.test_subset)
    counts = parameter_counts(CifarNet())
    print(json.dumps(counts), flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, 'airbench_ref.json')
    result = {'source': SOURCE, 'args': vars(args), 'threads': torch.get_num_threads(),
              'torch': torch.__version__, 'num_train': len(ds.train_labels),
              'num_test': len(ds.eval_labels), 'parameters': counts, 'runs': []}

    def log(record):
        print(json.dumps(record), flush=True)

    for seed in args.seeds:
        run = train(ds.train_images, ds.train_labels, ds.eval_images, ds.eval_labels,
                    seed=seed, epochs=args.epochs, batch_size=args.batch_size,
                    autocast_bf16=args.autocast_bf16,
                    channels_last=args.channels_last or args.autocast_bf16, log=log)
        run.pop('parameters')
        result['runs'].append(run)
        print(json.dumps({'seed': seed, 'tta_test_acc': run['tta_test_acc'],
                          'time_seconds': run['time_seconds']}), flush=True)
        accs = np.array([r['tta_test_acc'] for r in result['runs']])
        result['tta_test_acc_mean'] = float(accs.mean())
        result['tta_test_acc_std'] = float(accs.std(ddof=1)) if len(accs) > 1 else None
        with open(path, 'w') as f:  # rewritten after each seed
            json.dump(result, f, indent=1)
    print(json.dumps({'tta_test_acc_mean': result['tta_test_acc_mean'],
                      'tta_test_acc_std': result['tta_test_acc_std'], 'out': path}), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
