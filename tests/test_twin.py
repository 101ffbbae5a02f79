"""jaxres/tools/twin.py (``python benchmarks/twin.py``): jaxres and the PyTorch port of a seed's recipe train alike.

Each recipe runs a few steps on synthetic data with a tiny model, no
augmentation, from the same initial weights and on the same batches (PyTorch
takes jaxres's order): jaxres through ``train.train_and_evaluate``, PyTorch
through the twin's port of the seed's training loop.  The per-step training
losses must agree to float tolerance, and so must the per-epoch test loss and
accuracy (they read the BN running statistics): the whole step (forward, loss,
backward, weight decay, momentum, clipping, schedule, BN statistics) is the
same, not one call.  A PyTorch side with a 5% larger learning rate, no weight
decay or another BN momentum must fail the same comparison.  Also: every seed
config's PyTorch model takes jaxres's weights, and the torchvision pipelines
follow the seeds'.
"""

import importlib.util
import json

import jax
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch')
if importlib.util.find_spec('torchvision') is None:
    pytest.skip('torchvision is not installed (pip install -e ".[bench]")', allow_module_level=True)

from jaxres.tools import torch_ports, twin  # noqa: E402
from configs import (cifar10_preact, cifar10_resnet18, cifar10_resnet2111,  # noqa: E402
                     cifar10_resnet9, cifar10_resnet_b, cifar100_finetune_resnet18,
                     cifar100_preact, cifar100_resnet)
from jaxres import models, optim  # noqa: E402
from jaxres.data import datasets, preprocess  # noqa: E402

RTOL = 1e-4
STEPS = 8  # 2 epochs of 4 steps

# Settings that make a recipe tiny (8x8 images, two stages) and turn augmentation off.
TINY = {
    'dataset': 'synthetic', 'synthetic.num_train': 64, 'synthetic.num_eval': 32,
    'synthetic.image_size': 8, 'synthetic.num_classes': 4, 'validation_size': 0,
    'batch_size': 16, 'eval_batch_size': 32, 'num_epochs': 2,
    'checkpoint.async_save': False,
    'data.train_pp': 'normalize',
    'model.stem_width': 8, 'model.stage_sizes': (1, 1), 'model.stage_widths': (8, 16),
}

# Each seed's recipe, its weight decay raised (x10 for seed 000, x10^4 for 001/003) so
# that leaving it out would move these 8 losses by far more than RTOL.
RECIPES = {
    # SGD momentum 0.9, coupled L2, StepLR counted from epoch 1 (here x0.5 every epoch),
    # bottleneck blocks (ResNet-B).
    'seed000_sgd_step': (cifar10_resnet_b, {'schedule.decay_epochs': 1,
                                            'schedule.decay_rate': 0.5,
                                            'optimizer.weight_decay': 5e-3,
                                            'model.stage_widths': (4, 8)}, RTOL),
    # Adam + OneCycle per batch with beta1 cycled, clip by value 0.1 before coupled L2.
    # Peak lr 0.003, not 0.01: Adam's steps of ~lr per weight make 8 steps of this tiny
    # net chaotic at 0.01 (float noise grows to 2e-4); here the twins agree to 1e-6.
    'seed001_adam_onecycle': (cifar10_resnet2111, {'optimizer.weight_decay': 1e-2,
                                                   'schedule.learning_rate': 3e-3}, RTOL),
    # Keras: Adam, L2 loss term, lr x0.99 per epoch (x0.5 here), BN momentum 0.99 /
    # eps 1e-3, 'same' padding, pre-activation units (dropout off: random masks).
    # Its eval tolerance is looser: every conv bias of this net feeds BatchNorms only
    # through linear paths, so the loss does not depend on it and its gradient is
    # rounding noise, which Adam (eps 1e-7) turns into steps of ~lr/10 that differ
    # between the frameworks; the train loss cannot see them, the running means can
    # (0.1% here; a wrong BN momentum moves the test loss by 14%).
    # Seed 004 part 1: SGD constant lr, coupled L2, no ReLU after the add, conv3x3
    # shortcuts, global max pool (stem dropout off: random masks).
    'seed004_sgd_constant': (cifar100_resnet, {'model.stem_dropout': 0.0,
                                               'optimizer.weight_decay': 1e-2,
                                               'schedule.learning_rate': 0.05}, RTOL),
    # cifar10_resnet18 (kuangliu's main.py + warm-up): SGD, coupled L2, linear warm-up
    # (2 steps here) then cosine per step; its biased BN variance set to PyTorch's.
    'resnet18_sgd_warmup_cosine': (cifar10_resnet18, {'model.bn_running_var': 'unbiased',
                                                      'schedule.warmup_epochs': 0.5,
                                                      'optimizer.weight_decay': 5e-3}, RTOL),
    'seed003_adam_l2_exponential': (cifar10_preact, {'schedule.decay_rate': 0.5,
                                                     'model.block_dropout': 0.0,
                                                     'optimizer.weight_decay': 1e-2}, 5e-3),
}


def _config(module, overrides):
    config = module.get_config()
    for key, value in {**TINY, **overrides}.items():
        target = config
        *parents, leaf = key.split('.')
        for p in parents:
            target = target[p]
        target[leaf] = value
    return twin.twin_config(config, seed=0)


@pytest.mark.parametrize('recipe', list(RECIPES))
def test_training_steps_match_pytorch(recipe, tmp_path):
    module, overrides, eval_rtol = RECIPES[recipe]
    config = _config(module, overrides)
    ds = datasets.load_dataset(config)
    twin.check_portable(config, ds.num_classes)
    variables, setup = twin.initial_state(config, ds)
    assert setup.steps_per_epoch * config.num_epochs == STEPS
    config.log_every_steps = 1
    jaxres_run = twin.run_jaxres(config, str(tmp_path / 'jaxres'), setup.steps_per_epoch)
    order = twin.epoch_orders(setup)
    torch_run = twin.run_torch(setup.config, ds, variables, seed=0, order=order)

    want, got = np.array(jaxres_run['step_loss']), np.array(torch_run['step_loss'])
    assert len(want) == len(got) == STEPS
    assert np.ptp(want) > 0.05, want  # the weights moved: equal losses mean equal steps
    np.testing.assert_allclose(got, want, rtol=RTOL, err_msg='per-step train loss')
    np.testing.assert_allclose(torch_run['train_loss'], jaxres_run['train_loss'], rtol=RTOL)
    for key in ('test_loss', 'test_accuracy'):
        assert len(jaxres_run[key]) == len(torch_run[key]) == 2
        np.testing.assert_allclose(torch_run[key], jaxres_run[key], rtol=eval_rtol, err_msg=key)
    assert all(t > 0 for t in jaxres_run['train_s'] + torch_run['train_s'])

    # The comparison has power: a PyTorch side with one setting a little off fails it.
    for key, factor in (('schedule.learning_rate', 1.05), ('optimizer.weight_decay', 0.0)):
        wrong = setup.config.copy_and_resolve_references()
        section, name = key.split('.')
        wrong[section][name] *= factor
        bad = twin.run_torch(wrong, ds, variables, seed=0, order=order)
        assert not np.allclose(bad['step_loss'], want, rtol=RTOL), key
    wrong_bn = setup.config.copy_and_resolve_references()
    wrong_bn.model.bn_momentum = 1 - (1 - wrong_bn.model.bn_momentum) * 2  # PyTorch 0.1 -> 0.2
    bad = twin.run_torch(wrong_bn, ds, variables, seed=0, order=order)
    np.testing.assert_allclose(bad['step_loss'], want, rtol=RTOL)  # training uses batch stats
    assert not np.allclose(bad['test_loss'], jaxres_run['test_loss'], rtol=eval_rtol)


def test_same_batches_give_pytorch_jaxres_augmented_inputs_and_equal_losses(tmp_path):
    """--same_batches: with crops and flips on, PyTorch trains on jaxres's own model
    inputs, so the per-step losses agree as closely as without augmentation; with its
    own (equally distributed) augmentation they do not."""
    module, overrides, _ = RECIPES['resnet18_sgd_warmup_cosine']
    config = _config(module, {**overrides, 'data.train_pp': 'crop(2)|flip_lr|normalize'})
    ds = datasets.load_dataset(config)
    variables, setup = twin.initial_state(config, ds)
    config.log_every_steps = 1
    jaxres_run = twin.run_jaxres(config, str(tmp_path / 'jaxres'), setup.steps_per_epoch)
    batches = twin.jaxres_batches(setup, ds)
    first = next(batches(0))
    assert first[0].shape == (16, 8, 8, 3) and first[0].dtype == np.float32
    same = twin.run_torch(setup.config, ds, variables, seed=0, batches=batches)
    want = np.array(jaxres_run['step_loss'])
    assert len(want) == STEPS and np.ptp(want) > 0.05
    np.testing.assert_allclose(same['step_loss'], want, rtol=RTOL)
    own = twin.run_torch(setup.config, ds, variables, seed=0, order=twin.epoch_orders(setup))
    assert not np.allclose(own['step_loss'], want, rtol=RTOL)


def test_jaxres_side_starts_from_exactly_the_weights_given_to_pytorch(monkeypatch, tmp_path):
    """``run_seed``: the state ``train_and_evaluate`` starts from is, bit for bit, the
    ``variables`` PyTorch is loaded with (another seed's differ)."""
    module, overrides, _ = RECIPES['resnet18_sgd_warmup_cosine']
    config = _config(module, {**overrides, 'num_epochs': 1})
    started, given = [], {}
    init_state = twin.train.TrainSetup.init_state

    def recording_init_state(self):
        state = init_state(self)  # a host copy: the train step donates the state
        started.append(jax.device_get({'params': state.params,
                                       'batch_stats': state.batch_stats}))
        return state
    monkeypatch.setattr(twin.train.TrainSetup, 'init_state', recording_init_state)
    monkeypatch.setattr(twin, 'run_torch', lambda cfg, ds, variables, seed, *a, **k: (
        given.update(variables), {'train_loss': [0.0]})[1])
    twin.run_seed(config, 0, str(tmp_path))
    assert len(started) == 2  # the twin's initial_state, then train_and_evaluate's
    trained_from = started[-1]
    leaves = jax.tree_util.tree_leaves_with_path(trained_from)
    assert jax.tree_util.tree_structure(trained_from) == jax.tree_util.tree_structure(given)
    for (path, a), b in zip(leaves, jax.tree_util.tree_leaves(given)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    other = twin.initial_state(twin.twin_config(config, seed=1), datasets.load_dataset(config))[0]
    assert not np.array_equal(np.asarray(jax.tree_util.tree_leaves(other['params'])[0]),
                              np.asarray(jax.tree_util.tree_leaves(given['params'])[0]))


def test_torch_from_reuses_pytorch_runs_of_the_same_settings_only(tmp_path):
    """--torch_from: the earlier run's PyTorch curves per seed when the seeds, data,
    batches and recipe match (a conv lowering or init may differ); else one message."""
    settings = {'epochs': 2, 'train_subset': 640, 'test_subset': 200, 'same_order': False,
                'same_batches': True}
    counts = {'num_train': 640, 'num_eval': 200, 'steps_per_epoch': 5}
    recipe = ['--config.data_dir=/d', '--config.schedule.warmup_epochs=1']
    earlier = dict(settings, config='configs/cifar10_resnet18.py', overrides=recipe,
                   runs=[dict(counts, seed=s, torch={'test_accuracy': [0.2, 0.3 + s]})
                         for s in (0, 1, 2)])
    path = tmp_path / 'twin.json'
    path.write_text(json.dumps(earlier))
    # (a twin.json written before --eval_every evaluated every epoch)
    reused = twin.reuse_torch(str(path), [2, 0], dict(settings, eval_every=1),
                              'configs/cifar10_resnet18.py', recipe + ['--config.backend.conv=xla'])
    assert reused[2]['test_accuracy'] == [0.2, 2.3] and reused[0]['test_accuracy'] == [0.2, 0.3]
    twin.check_reused(dict(counts, torch=reused[0]))
    with pytest.raises(twin.TwinError, match='not the same data'):
        twin.check_reused(dict(counts, num_train=512, torch=reused[0]))
    for seeds, changed, args, why in (
            ([3], {}, recipe, 'no seed 3 there'),
            ([0], {'same_batches': False}, recipe, 'same_batches=True there, False here'),
            ([0], {}, recipe + ['--config.schedule.learning_rate=0.05'], 'recipe='),
            ([0], {'test_subset': 0}, recipe, 'test_subset=200 there, 0 here'),
            ([0], {'eval_every': 3}, recipe, 'eval_every=1 there, 3 here')):
        with pytest.raises(twin.TwinError, match=f'--torch_from .* ran other settings .*{why}'):
            twin.reuse_torch(str(path), seeds, dict(settings, **changed),
                             'configs/cifar10_resnet18.py', args)
    with pytest.raises(twin.TwinError, match='cannot read it'):
        twin.reuse_torch(str(tmp_path / 'none.json'), [0], settings, 'c.py', [])


def test_draws_are_read_back_from_coordinate_images():
    image = twin.coordinate_image(32)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    for dy, dx, flip in ((0, 0, 0), (8, 3, 1), (4, 4, 0), (2, 8, 1)):
        out = padded[dy:dy + 32, dx:dx + 32]
        out = out[:, ::-1] if flip else out
        assert twin.decode_draws(out[None], 4).tolist() == [[dy, dx, flip]]


def test_both_sides_draw_crops_and_flips_alike_and_a_different_padding_is_caught():
    module, overrides, _ = RECIPES['resnet18_sgd_warmup_cosine']
    config = _config(module, {**overrides, 'data.train_pp': 'crop(4)|flip_lr|normalize',
                              'data.mean': (0.5, 0.5, 0.5), 'data.std': (0.25, 0.25, 0.25)})
    draws = twin.augmentation_draws(config, 20_000)
    for side in ('jaxres', 'torch'):
        assert draws[side].min(0).tolist() == [0, 0, 0]
        assert draws[side].max(0).tolist() == [8, 8, 1]
    same = twin.same_draw_distribution(draws)
    assert same['draws'] == 20_000 and same['cells'] == 162 and same['p_value'] > 1e-3
    config.data.train_pp = 'crop(3)|flip_lr|normalize'
    other = twin.augmentation_draws(config, 20_000)
    mixed = {'jaxres': draws['jaxres'], 'torch': other['torch'] + 1}  # dy, dx in [1, 7]
    assert twin.same_draw_distribution(mixed)['p_value'] < 1e-6


def test_cli_writes_both_curves_side_by_side(tmp_path, capsys):
    """Seed 002's recipe (SGD, CosineAnnealingLR per epoch) through the command line."""
    overrides = [f'--config.{k}={v}' for k, v in TINY.items() if k != 'num_epochs']
    assert twin.main(['configs/cifar10_resnet9.py', '--epochs', '2', '--train_subset', '40',
                      '--test_subset', '16', '--same_batches', '--out', str(tmp_path),
                      '--config.schedule.learning_rate=0.05', *overrides]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines() if s.startswith('{')]
    assert [(r['seed'], r['epoch']) for r in lines] == [(0, 1), (0, 2)]
    result = json.loads((tmp_path / 'twin.json').read_text())
    assert result['epochs_side_by_side'] == lines
    run = result['runs'][0]
    assert run['num_train'] == 40 and run['steps_per_epoch'] == 2  # 10 of each class
    assert run['num_eval'] == 16 and result['test_subset'] == 16  # 4 of each class
    for row in lines:
        for key in ('train_loss', 'test_loss', 'test_accuracy'):
            assert row[f'torch_{key}'] == pytest.approx(row[f'jaxres_{key}'], rel=RTOL), key
        assert row['jaxres_train_s'] > 0 and row['torch_eval_s'] > 0
    assert [(a['epoch'], a['within']) for a in result['agreement']] == [(1, True), (2, True)]
    assert result['same_batches'] and [p['seeds'] for p in result['paired']] == [1, 1]
    assert (tmp_path / 'twin.png').stat().st_size > 10_000


def test_cli_evaluates_every_n_epochs_and_reuses_the_pytorch_side(tmp_path, capsys):
    """--eval_every 2 over 3 epochs: both sides evaluate after epochs 2 and 3 only, and
    the verdicts are per evaluated epoch; --torch_from then trains jaxres alone (another
    conv lowering) against the same PyTorch curves."""
    overrides = [f'--config.{k}={v}' for k, v in TINY.items() if k != 'num_epochs']
    args = ['configs/cifar10_resnet9.py', '--epochs', '3', '--train_subset', '40',
            '--test_subset', '16', '--same_batches', '--eval_every', '2',
            '--config.schedule.learning_rate=0.05', *overrides]
    assert twin.main([*args, '--out', str(tmp_path / 'a')]) == 0
    first = json.loads((tmp_path / 'a' / 'twin.json').read_text())
    run = first['runs'][0]
    for side in ('jaxres', 'torch'):
        assert run[side]['eval_epochs'] == [2, 3] and len(run[side]['test_accuracy']) == 2
        assert len(run[side]['train_loss']) == 3 and len(run[side]['train_s']) == 2
    np.testing.assert_allclose(run['torch']['test_loss'], run['jaxres']['test_loss'], rtol=RTOL)
    assert [p['epoch'] for p in first['paired']] == [2, 3] == [
        a['epoch'] for a in first['agreement']]
    rows = first['epochs_side_by_side']
    assert rows[0]['jaxres_test_accuracy'] is None and rows[1]['jaxres_test_accuracy'] == (
        pytest.approx(run['jaxres']['test_accuracy'][0]))
    capsys.readouterr()
    assert twin.main([*args, '--out', str(tmp_path / 'b'), '--config.backend.conv=xla',
                      '--torch_from', str(tmp_path / 'a' / 'twin.json')]) == 0
    second = json.loads((tmp_path / 'b' / 'twin.json').read_text())
    assert second['runs'][0]['torch']['test_loss'] == run['torch']['test_loss']
    np.testing.assert_allclose(second['runs'][0]['jaxres']['test_loss'],
                               run['jaxres']['test_loss'], rtol=RTOL)
    assert twin.main([*args, '--out', str(tmp_path / 'c'), '--eval_every', '1',
                      '--torch_from', str(tmp_path / 'a' / 'twin.json')]) == 2
    assert 'eval_every=2 there, 1 here' in capsys.readouterr().err


def test_cli_without_torch_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(twin, 'torch', None)
    assert twin.main(['configs/cifar10_resnet9.py', '--out', str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        'error: benchmarks/twin.py needs PyTorch and torchvision: pip install -e ".[bench]"')


def test_settings_without_a_port_are_refused_before_training():
    config = _config(cifar10_resnet2111, {'model.bn_running_var': 'biased'})
    with pytest.raises(twin.TwinError, match="model.bn_running_var='biased'.*run the twin with "
                                             '--config.model.bn_running_var=unbiased'):
        twin.check_portable(config, 4)
    config = _config(cifar10_resnet2111, {'optimizer.lookahead_every': 4})
    with pytest.raises(twin.TwinError, match='optimizer.lookahead_every=4'):
        twin.check_portable(config, 4)


@pytest.mark.parametrize('module,num_classes,size', [
    (cifar10_resnet_b, 10, 32), (cifar10_resnet2111, 10, 32), (cifar10_resnet9, 10, 32),
    (cifar10_preact, 10, 32), (cifar100_preact, 10, 32), (cifar100_resnet, 10, 32),
    (cifar100_finetune_resnet18, 10, 64), (cifar10_resnet18, 10, 32)])
def test_every_seed_config_has_a_port_that_takes_jaxres_weights(module, num_classes, size):
    """The twin's PyTorch model of each seed config (the CIFAR-100 ones with the
    10-class head of a CIFAR-10 twin run), loaded with jaxres's initial weights,
    gives jaxres's eval logits.  cifar10_resnet18 (kuangliu's ResNet18) with the BN
    running variance PyTorch keeps, as its twin runs."""
    config = module.get_config()
    if module is cifar10_resnet18:
        config.model.bn_running_var = 'unbiased'
    twin.check_portable(config, num_classes)
    model = models.create_model(config.model, num_classes)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    variables = jax.jit(lambda: model.init(jax.random.key(0), x[:1], train=False))()
    want = model.apply(variables, x, train=False)
    port = torch_ports.load_flax(torch_ports.from_config(config.model, num_classes), variables)
    with torch.no_grad():
        got = port.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    # rtol too: with BN's initial statistics (0, 1) these logits reach thousands.
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def test_torchvision_pipelines_follow_each_seed():
    """The train pipeline is the seed's torchvision one, op by op in the config's order;
    the eval pipeline normalises (and resizes) as jaxres does."""
    T = twin.torchvision_transforms()
    names = lambda compose: [type(t).__name__ for t in compose.transforms]  # noqa: E731
    seed002 = twin.twin_config(cifar10_resnet9.get_config(), 0)
    assert names(twin.torch_transforms(seed002, 32, train_split=True)) == [
        'ColorJitter', 'RandomHorizontalFlip', 'RandomCrop', 'RandomHorizontalFlip',
        'RandomRotation', 'RandomCrop', 'ToTensor', 'Normalize']
    seed001 = twin.twin_config(cifar10_resnet2111.get_config(), 0)
    crop = twin.torch_transforms(seed001, 32, train_split=True).transforms[0]
    assert (crop.padding, crop.padding_mode) == (4, 'reflect')
    seed003 = twin.twin_config(cifar10_preact.get_config(), 0)  # Keras: nearest fill
    assert names(twin.torch_transforms(seed003, 32, train_split=True)) == [
        'Pad', 'RandomAffine', 'CenterCrop', 'RandomHorizontalFlip', 'RandomVerticalFlip',
        'ToTensor', 'Normalize']
    seed004 = twin.twin_config(cifar100_finetune_resnet18.get_config(), 0)
    train_224 = twin.torch_transforms(seed004, 32, train_split=True)
    assert isinstance(train_224.transforms[0], T.RandomResizedCrop)

    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    for config, atol in ((seed002, 1e-6), (seed004, 0.02)):  # PIL's resize rounds to uint8
        ours = twin.torch_transforms(config, 32, train_split=False)
        got = np.stack([ours(Image.fromarray(x)).numpy().transpose(1, 2, 0) for x in images])
        want = preprocess.eval_images(images, preprocess.Preprocess.from_config(config, 'eval'))
        assert got.shape == want.shape == (2,) + (config.data.image_size or 32,) * 2 + (3,)
        np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    assert train_224(Image.fromarray(images[0])).shape == (3, 224, 224)


@pytest.mark.parametrize('name,settings', [
    ('constant', {}), ('step', {'decay_epochs': 2, 'decay_rate': 0.5}),
    ('step', {'decay_epochs': 2, 'decay_rate': 0.5, 'epoch_offset': 1}),
    ('multistep', {'milestones': (1, 3), 'decay_rate': 0.2}),
    ('exponential', {'decay_rate': 0.9}), ('cosine_epochs', {'end_learning_rate': 0.01}),
    ('onecycle', {}), ('warmup_cosine', {'warmup_epochs': 1.5, 'end_learning_rate': 0.01})])
def test_torch_schedulers_give_jaxres_learning_rates(name, settings):
    """Every schedule's torch.optim.lr_scheduler, stepped per batch or per epoch as the
    twin steps it, gives jaxres's learning rate at every step."""
    config = _config(cifar10_resnet2111, {'schedule.name': name, 'schedule.learning_rate': 0.1,
                                          **{f'schedule.{k}': v for k, v in settings.items()}})
    steps_per_epoch, epochs = 3, 5
    weight = torch.zeros(1, requires_grad=True)
    optimizer = twin.torch_optimizer(config, torch.nn.ParameterList([weight]))
    scheduler, per_step = twin.torch_scheduler(config, optimizer, steps_per_epoch,
                                               epochs * steps_per_epoch)
    got = []
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            got.append(optimizer.param_groups[0]['lr'])
            optimizer.step()
            if scheduler is not None and per_step:
                scheduler.step()
        if scheduler is not None and not per_step:
            scheduler.step()
    schedule = optim.create_schedule(config, steps_per_epoch, epochs * steps_per_epoch)
    want = [float(schedule(s)) for s in range(epochs * steps_per_epoch)]
    assert len(set(np.round(want, 8))) > 1 or name == 'constant'
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-9)
