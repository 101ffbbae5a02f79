"""Schedules and optimisers against PyTorch (torch.optim) step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from jaxres import config_validation, optim

try:  # torch is an optional test extra: the tests that compare with it skip without it
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason='needs torch (pip install -e ".[torch]")')


def _config(**overrides):
    c = default.get_config()
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split('.')
        for p in parents:
            target = target[p]
        target[leaf] = value
    config_validation.validate(c)
    return c


def _torch_lrs(make_scheduler, lr, num_steps, step_every=1):
    """The lr PyTorch uses for each optimizer step (scheduler stepped every ``step_every``)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9)
    sched = make_scheduler(opt)
    lrs, moms = [], []
    for step in range(num_steps):
        lrs.append(opt.param_groups[0]['lr'])
        moms.append(opt.param_groups[0]['momentum'])
        opt.step()
        if (step + 1) % step_every == 0:
            sched.step()
    return np.array(lrs), np.array(moms)


SPE = 3  # steps per epoch


@needs_torch
@pytest.mark.parametrize('name,overrides,make', [
    ('step', {'schedule.decay_epochs': 4, 'schedule.decay_rate': 0.1},
     lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.1)),
    ('exponential', {'schedule.decay_rate': 0.95},
     lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.95)),
    ('cosine_epochs', {'schedule.end_learning_rate': 0.001},
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12, eta_min=0.001)),
    ('constant', {}, lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0)),
    ('multistep', {'schedule.milestones': (3, 6, 10), 'schedule.decay_rate': 0.2},
     lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[3, 6, 10], gamma=0.2)),
])
def test_per_epoch_schedules_match_pytorch(name, overrides, make):
    epochs = 12
    config = _config(**{'schedule.name': name, 'schedule.learning_rate': 0.1,
                        'num_epochs': epochs}, **overrides)
    schedule = optim.create_schedule(config, SPE, epochs * SPE)
    want, _ = _torch_lrs(make, 0.1, epochs * SPE, step_every=SPE)
    got = np.array([float(schedule(s)) for s in range(epochs * SPE)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_step_schedule_counted_from_epoch_one_as_seed_000():
    """Seed 000 printed lr 0.1 for epochs 1-19, 0.01 from 20, ..., 1e-6 at epoch 100."""
    config = _config(**{'schedule.name': 'step', 'schedule.learning_rate': 0.1,
                        'schedule.decay_epochs': 20, 'schedule.epoch_offset': 1,
                        'num_epochs': 100})
    schedule = optim.create_schedule(config, SPE, 100 * SPE)
    lr_of_epoch = lambda e: float(schedule((e - 1) * SPE))  # 1-based epoch, first step
    for epoch, want in [(1, 0.1), (19, 0.1), (20, 0.01), (39, 0.01), (40, 1e-3),
                        (60, 1e-4), (99, 1e-5), (100, 1e-6)]:
        assert lr_of_epoch(epoch) == pytest.approx(want, rel=1e-5)
    assert float(schedule(19 * SPE - 1)) == pytest.approx(0.1)  # last step of epoch 19


def test_exponential_matches_keras_formula():
    """Seed 003: LearningRateScheduler(lambda epoch: 1e-3 * 0.99**epoch), 0-based epochs."""
    config = _config(**{'schedule.name': 'exponential', 'schedule.learning_rate': 1e-3,
                        'schedule.decay_rate': 0.99, 'num_epochs': 100})
    schedule = optim.create_schedule(config, SPE, 100 * SPE)
    for epoch in (0, 1, 2, 50, 99):
        for s in range(SPE):
            assert float(schedule(epoch * SPE + s)) == pytest.approx(1e-3 * 0.99 ** epoch,
                                                                     rel=1e-5)


@needs_torch
@pytest.mark.parametrize('total_steps', [20, 175, 1000])
def test_onecycle_lr_and_momentum_match_pytorch(total_steps):
    config = _config(**{'schedule.name': 'onecycle', 'schedule.learning_rate': 0.01})
    schedule = optim.create_schedule(config, 7, total_steps)
    want_lr, want_mom = _torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.01, total_steps=total_steps), 0.01, total_steps)
    steps = jnp.arange(total_steps)
    np.testing.assert_allclose(jax.vmap(schedule)(steps), want_lr, rtol=2e-5, atol=1e-10)
    np.testing.assert_allclose(jax.vmap(schedule.momentum)(steps), want_mom, rtol=1e-5)
    # The shape of the cycle: max/25 -> max at 30% -> max/25/1e4; momentum inversely.
    assert want_lr[0] == pytest.approx(0.01 / 25)
    assert float(schedule(total_steps - 1)) == pytest.approx(0.01 / 25 / 1e4, rel=1e-4)
    peak = int(np.argmax(want_lr))
    assert float(schedule.momentum(peak)) == pytest.approx(0.85, abs=1e-3)
    assert float(schedule.momentum(0)) == pytest.approx(0.95)
    assert float(schedule.momentum(total_steps - 1)) == pytest.approx(0.95)


# --------------------------------------------------------------------------- #
# Whole update rules against torch.optim on a small parameter vector
# --------------------------------------------------------------------------- #
def _run_pair(config, make_torch, num_steps=12, torch_sched=None, steps_per_epoch=12):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=16).astype(np.float32)
    c = (3 * rng.normal(size=16)).astype(np.float32)
    d = rng.uniform(0.5, 2, size=16).astype(np.float32)
    # A loss with large, varied gradients (so clipping at 0.1 bites).
    loss = lambda p, lib, c, d: (c * lib.sin(p) + 0.5 * d * p * p).sum()

    schedule = optim.create_schedule(config, steps_per_epoch, num_steps)
    tx = optim.create_optimizer(config, schedule)
    params = {'w': jnp.asarray(p0)}
    state = tx.init(params)
    grad_fn = jax.jit(jax.grad(lambda p: loss(p['w'], jnp, c, d)))
    update = jax.jit(tx.update)

    tp = torch.tensor(p0, requires_grad=True)
    opt = make_torch([tp])
    sched = torch_sched(opt) if torch_sched else None
    clip = config.optimizer.grad_clip_value
    for step in range(num_steps):
        updates, state = update(grad_fn(params), state, params)
        params = optax.apply_updates(params, updates)
        opt.zero_grad()
        loss(tp, torch, torch.from_numpy(c), torch.from_numpy(d)).backward()
        if clip:
            torch.nn.utils.clip_grad_value_([tp], clip)
        opt.step()
        if sched:
            sched.step()
        np.testing.assert_allclose(params['w'], tp.detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=f'step {step}')


@needs_torch
def test_seed001_adam_onecycle_clip_then_coupled_decay_matches_pytorch():
    """Seed 001: clip_grad_value_(0.1), then Adam(weight_decay) adds wd*p, OneCycle + beta1."""
    config = _config(**{'optimizer.name': 'adam', 'optimizer.weight_decay': 0.05,
                        'optimizer.grad_clip_value': 0.1, 'schedule.name': 'onecycle',
                        'schedule.learning_rate': 0.05})
    _run_pair(config, lambda p: torch.optim.Adam(p, lr=0.05, eps=1e-8, weight_decay=0.05),
              torch_sched=lambda o: torch.optim.lr_scheduler.OneCycleLR(
                  o, max_lr=0.05, total_steps=12))


@needs_torch
@pytest.mark.parametrize('nesterov', [False, True])
def test_sgd_momentum_coupled_decay_and_clip_match_pytorch(nesterov):
    config = _config(**{'optimizer.name': 'sgd', 'optimizer.weight_decay': 0.05,
                        'optimizer.nesterov': nesterov, 'optimizer.grad_clip_value': 0.1,
                        'schedule.name': 'step', 'schedule.decay_epochs': 1,
                        'schedule.decay_rate': 0.8, 'schedule.learning_rate': 0.1,
                        'num_epochs': 12})
    # One step per "epoch" here: StepLR(step_size=1) stepped every step.
    _run_pair(config, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=nesterov,
                                                weight_decay=0.05),
              torch_sched=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.8),
              steps_per_epoch=1)


@needs_torch
def test_sgd_onecycle_momentum_cycle_matches_pytorch():
    config = _config(**{'optimizer.name': 'sgd', 'optimizer.weight_decay': 5e-4,
                        'schedule.name': 'onecycle', 'schedule.learning_rate': 0.1})
    _run_pair(config, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
              torch_sched=lambda o: torch.optim.lr_scheduler.OneCycleLR(
                  o, max_lr=0.1, total_steps=12))


def test_new_schedule_choices_are_validated():
    with pytest.raises(config_validation.ConfigError, match='schedule.name'):
        _config(**{'schedule.name': 'cosine_annealing'})
    with pytest.raises(config_validation.ConfigError, match='pct_start'):
        _config(**{'schedule.name': 'onecycle', 'schedule.pct_start': 1.0})
    with pytest.raises(config_validation.ConfigError, match='decay_epochs'):
        _config(**{'schedule.name': 'step', 'schedule.decay_epochs': 0})


@needs_torch
def test_linear_onecycle_matches_pytorch_linear_anneal():
    config = _config(**{'schedule.name': 'onecycle', 'schedule.learning_rate': 1.5,
                        'schedule.anneal': 'linear', 'schedule.pct_start': 0.23,
                        'schedule.div_factor': 5.0, 'schedule.final_div_factor': 0.2 / 0.07})
    schedule = optim.create_schedule(config, 48, 192)
    want, _ = _torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=1.5, total_steps=192, pct_start=0.23, div_factor=5.0,
        final_div_factor=0.2 / 0.07, anneal_strategy='linear'), 1.5, 192)
    np.testing.assert_allclose(jax.vmap(schedule)(jnp.arange(192)), want, rtol=2e-5)
    assert want[0] == pytest.approx(0.3) and want[-1] == pytest.approx(1.5 * 0.07, rel=1e-4)


def test_bn_bias_lr_scale_and_frozen_parameters():
    config = _config(**{'schedule.name': 'constant', 'schedule.learning_rate': 0.1,
                        'optimizer.momentum': 0.0, 'optimizer.weight_decay': 0.01,
                        'optimizer.bn_bias_lr_scale': 64.0,
                        'optimizer.freeze': ('stem/conv/kernel',)})
    tx = optim.create_optimizer(config, optim.create_schedule(config, 10, 10))
    params = {'stem': {'conv': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}},
              'block': {'bn': {'bias': jnp.ones(3)}, 'conv': {'kernel': jnp.ones((3, 3))}}}
    grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.5), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates['stem']['conv']['kernel'], 0.0)  # frozen
    # Conv biases and kernels: -lr * (g + wd * p).
    np.testing.assert_allclose(updates['stem']['conv']['bias'], -0.1 * (0.5 + 0.01))
    np.testing.assert_allclose(updates['block']['conv']['kernel'], -0.1 * (0.5 + 0.01))
    # BN biases: 64x the gradient step, the same decay per step.
    np.testing.assert_allclose(updates['block']['bn']['bias'], -0.1 * (64 * 0.5 + 0.01),
                               rtol=1e-6)


def test_muon_orthogonalises_conv_kernels_and_uses_sgd_elsewhere():
    config = _config(**{'optimizer.name': 'muon', 'schedule.name': 'constant',
                        'schedule.learning_rate': 0.1, 'optimizer.momentum': 0.0,
                        'optimizer.weight_decay': 0.0, 'optimizer.muon_learning_rate': 0.01,
                        'optimizer.muon_ns_steps': 5, 'optimizer.freeze': ('stem',)})
    tx = optim.create_optimizer(config, optim.create_schedule(config, 10, 10))
    rng = np.random.default_rng(0)
    kernel = jnp.asarray(3.0 * rng.standard_normal((3, 3, 8, 16)), jnp.float32)
    params = {'stem': {'conv': {'kernel': jnp.ones((2, 2, 3, 12))}},
              'block': {'conv': {'kernel': kernel}, 'bn': {'bias': jnp.ones(16)}},
              'head': {'kernel': jnp.ones((16, 4))}}
    grads = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates['stem']['conv']['kernel'], 0.0)  # frozen
    # Everything that is not a conv kernel: plain SGD, -lr * g.
    np.testing.assert_allclose(updates['head']['kernel'], -0.1 * grads['head']['kernel'],
                               rtol=1e-6)
    np.testing.assert_allclose(updates['block']['bn']['bias'],
                               -0.1 * grads['block']['bn']['bias'], rtol=1e-6)
    # The conv kernel is rescaled to norm sqrt(16) = 4, then moved by an update
    # whose (72, 16) matrix has singular values near 1, times the Muon lr.
    new = params['block']['conv']['kernel'] + updates['block']['conv']['kernel']
    rescaled = kernel * 4.0 / jnp.linalg.norm(kernel)
    step = (new - rescaled).reshape(72, 16) / -0.01
    singular = np.linalg.svd(np.asarray(step), compute_uv=False)
    assert 0.5 < singular.min() and singular.max() < 1.5, singular
    # Its direction follows the gradient's: positive inner product.
    assert float(jnp.sum(step * grads['block']['conv']['kernel'].reshape(72, 16))) > 0
