"""config.init_from: torchvision state_dicts and jaxres checkpoints as starting weights."""

import os

import jax
import numpy as np
import pytest

from configs import default
from jaxres import checkpointing, finetune, sharding, train
from jaxres.data import datasets

from conftest import random_dataset, tiny_config

torch = pytest.importorskip('torch')
nn = torch.nn


# --------------------------------------------------------------------------- #
# A PyTorch ResNet with torchvision's exact module names and shapes
# (torchvision itself is not installed here; this mirrors torchvision.models.resnet).
# --------------------------------------------------------------------------- #
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class TorchResNet(nn.Module):

    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def torch_resnet(depth, num_classes=1000, seed=0):
    """A torchvision-layout ResNet with non-trivial BatchNorm statistics (eval mode)."""
    torch.manual_seed(seed)
    block, layers = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
                     50: (Bottleneck, [3, 4, 6, 3])}[depth]
    model = TorchResNet(block, layers, num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def imagenet_config(depth=18):
    c = default.get_config()
    c.dataset = 'arrays'
    c.model.stem = 'imagenet'
    c.model.depth = depth
    c.batch_size = 8
    c.eval_batch_size = 8
    return c


def placeholder_dataset(num_classes, size=64, n=8):
    """Only what TrainSetup.build reads (the class count, image shape, train size)."""
    x = np.zeros((n, size, size, 3), np.uint8)
    y = np.arange(n, dtype=np.int32) % num_classes
    return datasets.ImageDataset(x, y, x, y, tuple(str(i) for i in range(num_classes)))


def _setup(config, ds):
    return train.TrainSetup.build(config, ds, sharding.make_data_mesh())


def _jax_logits(state, x_nhwc):
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    return np.asarray(jax.jit(lambda v, x: state.apply_fn(v, x, train=False))(variables, x_nhwc))


def _torch_logits(model, x_nhwc):
    with torch.no_grad():
        return model(torch.from_numpy(np.transpose(x_nhwc, (0, 3, 1, 2)).copy())).numpy()


@pytest.fixture(scope='module')
def resnet18_pth(tmp_path_factory):
    model = torch_resnet(18)
    path = tmp_path_factory.mktemp('tv') / 'resnet18.pth'
    torch.save(model.state_dict(), path)
    return model, str(path)


def test_name_map_covers_torchvision_resnet50():
    """Every ResNet-50 key maps onto the jaxres torchvision-layout model, shapes included."""
    state_dict = {k: v.numpy() for k, v in torch_resnet(50).state_dict().items()}
    sources, unknown = finetune.convert_torchvision(state_dict)
    assert unknown == []
    setup = _setup(imagenet_config(50), placeholder_dataset(1000))
    shapes = setup.abstract_state()
    target = {'params': shapes.params, 'batch_stats': shapes.batch_stats}
    fitted = finetune.fit_variables(target, sources, strict=True, path='r50.pth')
    assert len(fitted['params']) == 161 and len(fitted['batch_stats']) == 106


def test_resnet18_state_dict_gives_the_same_logits(resnet18_pth):
    model, path = resnet18_pth
    setup = _setup(imagenet_config(18), placeholder_dataset(1000))
    state = finetune.init_from(setup.init_state(), path, setup.mesh)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    expected = _torch_logits(model, x)
    got = _jax_logits(state, x)
    assert got.shape == (2, 1000)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert int(state.step) == 0
    assert all(float(np.abs(leaf).max()) == 0 for leaf in jax.tree_util.tree_leaves(
        jax.device_get(state.opt_state)) if np.ndim(leaf))  # a fresh optimizer


def test_resnet18_head_is_replaced_for_100_classes(resnet18_pth):
    model, path = resnet18_pth
    setup = _setup(imagenet_config(18), placeholder_dataset(100))
    fresh = setup.init_state()
    fresh_head = jax.device_get(fresh.params['head'])
    state = finetune.init_from(fresh, path, setup.mesh)
    head = jax.device_get(state.params['head'])
    assert head['kernel'].shape == (512, 100)
    np.testing.assert_array_equal(head['kernel'], fresh_head['kernel'])  # kept fresh
    np.testing.assert_array_equal(jax.device_get(state.params['stem']['conv']['kernel']),
                                  model.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
    # The backbone is the converted one: torch with the jaxres head gives the same logits.
    model_100 = torch_resnet(18)
    model_100.load_state_dict(model.state_dict())
    model_100.fc = nn.Linear(512, 100)
    with torch.no_grad():
        model_100.fc.weight.copy_(torch.from_numpy(head['kernel'].T.copy()))
        model_100.fc.bias.copy_(torch.from_numpy(head['bias']))
    x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(_jax_logits(state, x), _torch_logits(model_100.eval(), x),
                               atol=1e-4, rtol=0)


def test_mismatched_depth_is_reported(resnet18_pth):
    _, path = resnet18_pth
    setup = _setup(imagenet_config(34), placeholder_dataset(1000))
    shapes = setup.abstract_state()
    sources, _ = finetune.read_weights(path, setup.mesh)
    with pytest.raises(finetune.FinetuneError, match=r'does not fit config.model .*'
                       r'stage1_block3/conv1/kernel: missing from the weights'):
        finetune.fit_variables({'params': shapes.params, 'batch_stats': shapes.batch_stats},
                               sources, strict=True, path=path)


class _Evil:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_pth_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'conv1.weight': torch.zeros(1), 'x': _Evil()}, path)
    with pytest.raises(finetune.FinetuneError, match='weights_only=True'):
        finetune.load_torch_state_dict(str(path))
    with pytest.raises(finetune.FinetuneError, match='does not exist'):
        finetune.read_weights(str(tmp_path / 'missing.pth'), None)
    (tmp_path / 'w.txt').write_text('x')
    with pytest.raises(finetune.FinetuneError, match='give a torchvision state_dict'):
        finetune.read_weights(str(tmp_path / 'w.txt'), None)


def test_init_from_a_jaxres_checkpoint_with_another_class_count(tmp_path):
    # The source: a 4-class model from another seed, with non-trivial BN statistics.
    source = str(tmp_path / 'source')
    source_config = tiny_config(seed=7)
    saved = _setup(source_config, random_dataset(classes=4)).init_state()
    saved = saved.replace(batch_stats=jax.tree_util.tree_map(lambda x: x + 0.5,
                                                             saved.batch_stats))
    manager = checkpointing.create_manager(checkpointing.checkpoint_dir(source), source_config)
    checkpointing.save(manager, 8, saved, {'config': {}})
    manager.wait_until_finished()
    trained = jax.device_get({'params': saved.params, 'batch_stats': saved.batch_stats})

    ds6 = random_dataset(classes=6, seed=1)
    config = tiny_config(init_from=source)
    setup = _setup(config, ds6)
    fresh = setup.init_state()
    assert not np.array_equal(jax.device_get(fresh.params['stem']['conv']['kernel']),
                              trained['params']['stem']['conv']['kernel'])
    state = finetune.init_from(fresh, source, setup.mesh)
    params, stats = jax.device_get((state.params, state.batch_stats))
    assert params['head']['kernel'].shape == (16, 6)
    np.testing.assert_array_equal(params['head']['kernel'],
                                  jax.device_get(fresh.params['head']['kernel']))
    for key in ('stem', 'stage1_block1', 'stage2_block1'):
        for a, b in zip(jax.tree_util.tree_leaves(params[key]),
                        jax.tree_util.tree_leaves(trained['params'][key])):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(
            trained['batch_stats'])):
        np.testing.assert_array_equal(a, b)

    # The training loop uses it when the new workdir has no checkpoint.
    config.num_train_steps = 1
    results = train.train_and_evaluate(config, str(tmp_path / 'tuned'), ds6)
    assert results['step'] == 1 and results['num_examples'] == 40
