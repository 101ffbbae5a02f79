"""PyTorch reference for jaxres.bench: the same ResNet-18 step and the seeds' input pipeline.

    python benchmarks/torch_reference.py [--batch_size 128] [--steps 10] [--workers 2]
        [--setting fp32|best] [--skip step|pipeline]

* train step: kuangliu CIFAR ResNet-18 (11,173,962 parameters), SGD lr 0.1
  momentum 0.9 weight decay 5e-4, BatchNorm in training mode, cross-entropy;
  median time of ``steps`` steps after one warm-up step.  ``--setting fp32``:
  float32 NCHW (PyTorch's default); ``--setting best``: PyTorch's fastest CPU
  setting, bf16 autocast with channels_last model and inputs (float32 weights).
* input pipeline: what the seed notebooks do: a torchvision-style
  ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` + ``ToTensor`` +
  ``Normalize`` on PIL images in a ``DataLoader`` with worker processes;
  augmented images/s delivered (to the CPU "device").
Needs only torch (no torchvision): the transforms are written out here.
Prints a table and one JSON line with the same keys as jaxres.bench.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """kuangliu/pytorch-cifar ResNet-18."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class AugmentedCifar(torch.utils.data.Dataset):
    """PIL images -> RandomCrop(32, padding=4) -> flip -> tensor -> normalise."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from PIL import Image  # pylint: disable=g-import-not-at-top
        self.images = [Image.fromarray(x) for x in images]
        self.labels = labels
        self.mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
        self.std = torch.tensor([0.2023, 0.1994, 0.2010]).view(3, 1, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import ImageOps  # pylint: disable=g-import-not-at-top
        img = ImageOps.expand(self.images[i], border=4, fill=0)
        dx, dy = np.random.randint(0, 9, 2)
        img = img.crop((dx, dy, dx + 32, dy + 32))
        if np.random.rand() < 0.5:
            img = ImageOps.mirror(img)
        x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)
        return (x - self.mean) / self.std, int(self.labels[i])


def config_net(path: str) -> nn.Module:
    """PyTorch's build of a config's network: the seed port (``torch_ports``) or,
    for the speedrun net, airbench94_muon's own (``airbench_ref.CifarNet``)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from jaxres import main as jaxres_main  # pylint: disable=g-import-not-at-top
    from jaxres.data import datasets  # pylint: disable=g-import-not-at-top
    config = jaxres_main.load_config(path)
    if config.model.family == 'airbench':
        from jaxres.tools import airbench_ref  # pylint: disable=g-import-not-at-top
        net = airbench_ref.CifarNet()
        net.reset()
        return net
    from jaxres.tools import torch_ports  # pylint: disable=g-import-not-at-top
    with config.unlocked():  # the running variance's estimator does not change the speed
        config.model.bn_running_var = 'unbiased'
    return torch_ports.from_config(config.model, datasets.KNOWN_SHAPES[config.dataset][0])


def bench_step(batch_size: int, steps: int, setting: str = 'fp32', config: str = '') -> dict:
    torch.manual_seed(0)
    model = config_net(config) if config else ResNet18()
    x = torch.randn(batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (batch_size,))
    best = setting == 'best'
    if best:
        model, x = model.to(memory_format=torch.channels_last), x.to(
            memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=best):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    step()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    s = statistics.median(times)
    return {'step_s_median': s, 'train_images_per_s': batch_size / s}


def bench_pipeline(batch_size: int, workers: int, num_images: int = 10_000) -> dict:
    rng = np.random.default_rng(0)
    ds = AugmentedCifar(rng.integers(0, 256, (num_images, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, num_images))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                         num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0)
    for _ in loader:  # warm-up epoch (worker start-up)
        break
    t = time.perf_counter()
    n = 0
    for xb, _ in loader:
        n += len(xb)
    return {'pipeline_images_per_s': n / (time.perf_counter() - t)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch_size', type=int, default=128)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--skip', choices=['step', 'pipeline'], default=None)
    parser.add_argument('--setting', choices=['fp32', 'best'], default='fp32')
    parser.add_argument('--config', default='',
                        help="a jaxres config whose network to time (default: kuangliu's "
                             'ResNet-18, as cifar10_resnet18)')
    args = parser.parse_args(argv)
    result = {'framework': f'torch {torch.__version__}', 'threads': torch.get_num_threads(),
              'batch_size': args.batch_size, 'setting': args.setting}
    if args.skip != 'step':
        result.update(bench_step(args.batch_size, args.steps, args.setting, args.config))
    if args.skip != 'pipeline':
        result.update(bench_pipeline(args.batch_size, args.workers))
    for k, v in result.items():
        print(f'{k:<24}  {v:.4g}' if isinstance(v, float) else f'{k:<24}  {v}')
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
