"""optax optimisers and learning-rate schedules built from the config.

Schedules are functions of the optimizer step; epoch-based settings are turned
into steps with ``steps_per_epoch``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax


def epoch_decay_schedule(lr: float, rate: float, every_epochs: int, steps_per_epoch: int,
                         epoch_offset: int = 0) -> optax.Schedule:
    """``lr * rate ** ((epoch + epoch_offset) // every_epochs)``, constant within an epoch.

    PyTorch StepLR (every_epochs=N) and ExponentialLR (every_epochs=1) stepped once
    per epoch; Keras ``LearningRateScheduler(lambda e: lr * rate**e)`` likewise.
    Integer epochs, not ``optax.exponential_decay(staircase=True)``: that floors a
    float quotient, which XLA computes as a product with the reciprocal, so on some
    epoch boundaries the decay comes a step late (every=2, 97 steps an epoch,
    offset 1: steps 97, 291, 679, ... keep the previous rate).
    """

    def schedule(step):
        epoch = jnp.asarray(step) // steps_per_epoch + epoch_offset
        return lr * jnp.power(jnp.float32(rate), (epoch // every_epochs).astype(jnp.float32))

    return schedule


def epoch_cosine_schedule(lr: float, end_lr: float, num_epochs: int, steps_per_epoch: int
                          ) -> optax.Schedule:
    """PyTorch CosineAnnealingLR(T_max=num_epochs, eta_min=end_lr) stepped per epoch."""

    def schedule(step):
        epoch = jnp.minimum(jnp.asarray(step) // steps_per_epoch, num_epochs)
        cos = jnp.cos(jnp.pi * epoch.astype(jnp.float32) / num_epochs)
        return end_lr + (lr - end_lr) * (1 + cos) / 2

    return schedule


@dataclasses.dataclass(frozen=True)
class OneCycle:
    """PyTorch OneCycleLR (two phases, cosine annealing) as functions of the step.

    Calling it gives the learning rate: ``max_lr / div_factor`` up to ``max_lr``
    over the first ``pct_start`` of the steps, then down to ``initial /
    final_div_factor``.  ``momentum(step)`` is the inverse cycle (max -> base ->
    max) that PyTorch writes into SGD's momentum or Adam's beta1.
    """

    max_lr: float
    total_steps: int
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    anneal: str = 'cos'

    def __call__(self, step) -> jax.Array:
        initial = self.max_lr / self.div_factor
        return self._cycle(step, initial, self.max_lr, initial / self.final_div_factor)

    def momentum(self, step) -> jax.Array:
        return self._cycle(step, self.max_momentum, self.base_momentum, self.max_momentum)

    def _cycle(self, step, start: float, peak: float, end: float) -> jax.Array:
        # PyTorch's phase boundaries: warm-up ends at step pct_start*total - 1 (a
        # float), annealing at total - 1.  Steps past the end stay at ``end``.
        warm_end = float(self.pct_start * self.total_steps) - 1
        last = self.total_steps - 1
        step = jnp.minimum(jnp.asarray(step, jnp.float32), last)
        anneal = _cos_anneal if self.anneal == 'cos' else _linear_anneal
        up = anneal(start, peak, step / max(warm_end, 1e-12))
        down = anneal(peak, end, (step - warm_end) / max(last - warm_end, 1e-12))
        return jnp.where(step <= warm_end, up, down)


def _cos_anneal(start: float, end: float, pct: jax.Array) -> jax.Array:
    return end + (start - end) / 2 * (jnp.cos(jnp.pi * pct) + 1)


def _linear_anneal(start: float, end: float, pct: jax.Array) -> jax.Array:
    return start + (end - start) * pct


def create_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                    total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the step (``config.schedule``).

    ``total_steps`` is the schedule's length (``num_epochs * steps_per_epoch``).
    """
    s = config.schedule
    lr = s.learning_rate
    num_epochs = max(1, math.ceil(total_steps / max(steps_per_epoch, 1)))
    if s.name == 'constant':
        return optax.constant_schedule(lr)
    if s.name in ('step', 'exponential'):
        every = s.decay_epochs if s.name == 'step' else 1
        return epoch_decay_schedule(lr, s.decay_rate, every, steps_per_epoch, s.epoch_offset)
    if s.name == 'multistep':  # PyTorch MultiStepLR, stepped per epoch
        return optax.piecewise_constant_schedule(
            lr, {int(m) * steps_per_epoch: s.decay_rate for m in s.milestones})
    if s.name == 'cosine_epochs':
        return epoch_cosine_schedule(lr, s.end_learning_rate, num_epochs, steps_per_epoch)
    if s.name == 'onecycle':
        return OneCycle(max_lr=lr, total_steps=max(total_steps, 2), pct_start=s.pct_start,
                        div_factor=s.div_factor, final_div_factor=s.final_div_factor,
                        base_momentum=s.base_momentum, max_momentum=s.max_momentum,
                        anneal=s.anneal)
    if s.name == 'warmup_cosine':
        warmup = int(round(s.warmup_epochs * steps_per_epoch))
        warmup = min(warmup, max(total_steps - 1, 0))
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1), end_value=s.end_learning_rate)
    raise ValueError(f'unknown schedule {s.name!r}')


def _kernel_mask(params: Any) -> Any:
    """True for conv/dense kernels (ndim > 1), False for biases and BN scales."""
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def bn_bias_mask(params: Any) -> Any:
    """True for BatchNorm biases: 'bias' leaves of modules without a 'kernel'."""
    def mark(tree):
        return {k: mark(v) if isinstance(v, Mapping) else (k == 'bias' and 'kernel' not in tree)
                for k, v in tree.items()}
    return mark(params)


def path_mask(prefixes: tuple[str, ...]) -> Callable[[Any], Any]:
    """A mask function: True where a leaf's '/'-joined path starts with a prefix."""
    def mask(params):
        def hit(path, _):
            name = '/'.join(str(getattr(k, 'key', k)) for k in path)
            return any(name == p or name.startswith(p.rstrip('/') + '/') for p in prefixes)
        return jax.tree_util.tree_map_with_path(hit, params)
    return mask


def frozen_mask(config: ml_collections.ConfigDict) -> Callable[[Any], Any] | None:
    """``optimizer.freeze`` as a mask function (None when nothing is frozen)."""
    freeze = tuple(config.optimizer.freeze)
    return path_mask(freeze) if freeze else None


def _not(mask_fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda params: jax.tree_util.tree_map(lambda m: not m, mask_fn(params))


def muon_mask(params: Any, frozen: Callable[[Any], Any] | None = None) -> Any:
    """True for the leaves Muon updates: conv kernels (4-D), unless frozen."""
    is_frozen = frozen(params) if frozen is not None else jax.tree_util.tree_map(
        lambda _: False, params)
    return jax.tree_util.tree_map(lambda p, f: p.ndim == 4 and not f, params, is_frozen)


def normalize_weights() -> optax.GradientTransformation:
    """Add ``p * (sqrt(fan_out) / |p| - 1)`` to each update (4-D HWIO kernels).

    The weight is rescaled to Frobenius norm sqrt(out channels) before the step
    (airbench94_muon): with BatchNorm after every conv the scale is free, and a
    fixed norm makes Muon's learning rate the relative size of each step.
    """
    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError('normalize_weights needs the params')

        def renorm(u, p):
            scale = jnp.sqrt(jnp.float32(p.shape[-1])) / jnp.linalg.norm(p.astype(jnp.float32))
            return u + (p * (scale - 1)).astype(u.dtype)

        return jax.tree_util.tree_map(renorm, updates, params), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def muon(config: ml_collections.ConfigDict, schedule: optax.Schedule
         ) -> optax.GradientTransformation:
    """Muon for conv kernels: Nesterov momentum, then Newton-Schulz orthogonalised.

    Each (kh * kw * in, out) update matrix is replaced by a near-orthogonal one
    (singular values ~1), scaled by ``optimizer.muon_learning_rate`` times the
    schedule's fraction of its peak; with ``optimizer.muon_normalize`` the
    kernel is first rescaled to a fixed norm (``normalize_weights``).
    """
    o, peak = config.optimizer, config.schedule.learning_rate
    scale = o.muon_learning_rate / peak if peak else 0.0  # Muon's lr per unit of schedule
    conv_dims = optax.contrib.MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
    parts = [optax.contrib.scale_by_muon(
                 ns_steps=o.muon_ns_steps, beta=o.muon_momentum, nesterov=True,
                 weight_dimension_numbers=lambda tree: jax.tree_util.tree_map(
                     lambda _: conv_dims, tree)),
             optax.scale_by_learning_rate(lambda step: scale * schedule(step))]
    if o.muon_normalize:
        parts.append(normalize_weights())
    return optax.chain(*parts)


def create_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule
                     ) -> optax.GradientTransformation:
    """Gradient clipping, weight decay and the update rule, in PyTorch's order.

    ``optimizer.name='muon'``: Muon (``muon``) for the conv kernels, SGD with
    these same settings for every other parameter (biases, BN, the head).
    """
    o = config.optimizer
    # OneCycle's inverse momentum cycle, fed to the update rule step by step.
    momentum = (schedule.momentum if isinstance(schedule, OneCycle)
                and config.schedule.cycle_momentum else None)
    rule = 'sgd' if o.name == 'muon' else o.name
    parts = []
    if o.grad_clip_value > 0:
        parts.append(optax.clip(o.grad_clip_value))
    if o.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
    bias_scale = o.bn_bias_lr_scale
    if o.weight_decay > 0 and o.weight_decay_mode == 'coupled':
        # PyTorch `weight_decay`: g += wd * p on every parameter, before momentum.
        if bias_scale == 1.0:
            parts.append(optax.add_decayed_weights(o.weight_decay))
        else:  # BN biases: wd / scale, so that lr * wd (the decay per step) is unchanged
            parts.append(optax.add_decayed_weights(o.weight_decay, mask=_not(bn_bias_mask)))
            parts.append(optax.add_decayed_weights(o.weight_decay / bias_scale,
                                                   mask=bn_bias_mask))
    if rule == 'sgd':
        if momentum is not None:  # PyTorch cycles it even when SGD's momentum is 0
            parts.append(optax.inject_hyperparams(optax.trace, static_args=('nesterov',))(
                decay=momentum, nesterov=o.nesterov))
        elif o.momentum:
            parts.append(optax.trace(decay=o.momentum, nesterov=o.nesterov))
    elif rule == 'adam':
        if momentum is not None:
            parts.append(optax.inject_hyperparams(optax.scale_by_adam)(
                b1=momentum, b2=o.b2, eps=o.eps))
        else:
            parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
    else:
        raise ValueError(f'unknown optimizer {o.name!r}')
    if o.weight_decay > 0 and o.weight_decay_mode == 'decoupled':
        parts.append(optax.add_decayed_weights(o.weight_decay, mask=_kernel_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    if bias_scale != 1.0:
        parts.append(optax.masked(optax.scale(bias_scale), bn_bias_mask))
    tx = optax.chain(*parts)
    frozen = frozen_mask(config)
    if o.name == 'muon':
        labels = lambda params: jax.tree_util.tree_map(  # noqa: E731
            lambda m: 'muon' if m else 'rest', muon_mask(params, frozen))
        tx = optax.multi_transform({'muon': muon(config, schedule), 'rest': tx}, labels)
    if frozen is not None:
        tx = optax.chain(tx, optax.masked(optax.set_to_zero(), frozen))
    if config.nonfinite == 'skip':
        # A step with NaN/Inf gradients leaves params and optimizer state as they were
        # (``step.train_step`` keeps the BN statistics).  Never give up and apply one:
        # a run that only produces such steps shows them in ``skipped_steps``.
        tx = optax.apply_if_finite(tx, max_consecutive_errors=2**31 - 1)
    return tx


def last_step_finite(opt_state: Any) -> jax.Array:
    """Whether ``optax.apply_if_finite`` applied the last update (its gradients were
    finite); True when the optimizer does not skip."""
    flags = optax.tree_utils.tree_get_all_with_path(opt_state, 'last_finite')
    return flags[0][1] if flags else jnp.bool_(True)


def l2_loss(params: Any) -> jax.Array:
    """sum(kernel**2) over conv/dense kernels (Keras ``l2`` regulariser term)."""
    leaves = [p for p in jax.tree_util.tree_leaves(params) if p.ndim > 1]
    return sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in leaves)
