"""optax optimisers and learning-rate schedules built from the config.

Schedules are functions of the optimizer step; epoch-based settings are turned
into steps with ``steps_per_epoch``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def create_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                    total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the step (``config.schedule``)."""
    s = config.schedule
    lr = s.learning_rate
    if s.name == 'constant':
        return optax.constant_schedule(lr)
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


def create_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule
                     ) -> optax.GradientTransformation:
    """Gradient clipping, weight decay and the update rule, in PyTorch's order."""
    o = config.optimizer
    parts = []
    if o.grad_clip_value > 0:
        parts.append(optax.clip(o.grad_clip_value))
    if o.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
    if o.weight_decay > 0 and o.weight_decay_mode == 'coupled':
        # PyTorch `weight_decay`: g += wd * p on every parameter, before momentum.
        parts.append(optax.add_decayed_weights(o.weight_decay))
    if o.name == 'sgd':
        if o.momentum:
            parts.append(optax.trace(decay=o.momentum, nesterov=o.nesterov))
    elif o.name == 'adam':
        parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
    else:
        raise ValueError(f'unknown optimizer {o.name!r}')
    if o.weight_decay > 0 and o.weight_decay_mode == 'decoupled':
        parts.append(optax.add_decayed_weights(o.weight_decay, mask=_kernel_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)


def l2_loss(params: Any) -> jax.Array:
    """sum(kernel**2) over conv/dense kernels (Keras ``l2`` regulariser term)."""
    leaves = [p for p in jax.tree_util.tree_leaves(params) if p.ndim > 1]
    return sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in leaves)
