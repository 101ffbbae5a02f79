"""The training step: a pure ``train_step(state, batch) -> (state, metrics)``, the
transforms after it (lookahead, EMA), and the one place it is jitted.

Nothing here reads a config: ``StepOptions`` holds the few settings the step
uses, ``RngStreams`` the run's named random streams.  ``jit_step`` applies jit,
shardings and donation where the step is used: the input's ``batch`` function
builds the global batch inside the step (the resident input gathers and augments
it from the device-resident set, the streaming one augments a read batch),
then ``update`` runs ``train_step`` and the transforms.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax.training import train_state

from jaxres import evaluate, optim, sharding

Array = jax.Array


class TrainState(train_state.TrainState):
    """Flax TrainState plus BatchNorm running statistics."""

    batch_stats: Any = None
    # EMA of {'params', 'batch_stats'} for optimizer.lookahead_every > 0, else None.
    lookahead: Any = None
    # EMA of {'params', 'batch_stats'} for optimizer.ema_decay > 0 (evaluated and
    # saved beside the live weights; training never reads it), else None.
    ema: Any = None


@dataclasses.dataclass(frozen=True)
class RngStreams:
    """The run's random streams, each its own key from ``config.seed``: ``init``
    (weights), ``data`` (epoch orders and augmentation), ``dropout``.  The offsets
    are fixed, so a seed draws what it drew in every earlier version."""

    seed: int

    @property
    def init(self) -> Array:
        return jax.random.key(self.seed)

    @property
    def data(self) -> Array:
        return jax.random.key(self.seed + 1)

    @property
    def dropout(self) -> Array:
        return jax.random.key(self.seed + 2)


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What the step does besides the gradient step, from the config once."""

    rngs: RngStreams
    label_smoothing: float = 0.0
    l2_weight: float = 0.0  # optimizer.weight_decay_mode == 'loss'
    skip_nonfinite: bool = False
    frozen: Callable[[Any], Any] | None = None  # params -> bool tree (optim.frozen_mask)
    accum_steps: int = 1
    lookahead_every: int = 0
    lookahead_decay: float = 0.0
    lookahead_steps: int = 0  # the schedule's length: the lookahead ends in the EMA
    ema_decay: float = 0.0

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, schedule_steps: int
                    ) -> 'StepOptions':
        o = config.optimizer
        return cls(rngs=RngStreams(config.seed), label_smoothing=config.label_smoothing,
                   l2_weight=o.weight_decay if o.weight_decay_mode == 'loss' else 0.0,
                   skip_nonfinite=config.nonfinite == 'skip', frozen=optim.frozen_mask(config),
                   accum_steps=config.grad_accum_steps, lookahead_every=o.lookahead_every,
                   lookahead_decay=o.lookahead_decay, lookahead_steps=schedule_steps,
                   ema_decay=o.ema_decay)


def batch_loss(logits: Array, batch: dict[str, Array], label_smoothing: float = 0.0
               ) -> Array:
    """Mean cross-entropy of a training batch; a mixed batch (mixup/CutMix) scores
    each example against both its labels, weighted by ``mix_weight``."""
    loss = evaluate.cross_entropy(logits, batch['label'], label_smoothing)
    if 'mixed_label' in batch:
        weight = batch['mix_weight']
        loss = weight * loss + (1 - weight) * evaluate.cross_entropy(
            logits, batch['mixed_label'], label_smoothing)
    return loss.mean()


def train_step(state: TrainState, batch: dict[str, Array], *, dropout_key: Array,
               label_smoothing: float = 0.0, l2_weight: float = 0.0,
               skip_nonfinite: bool = False, frozen: Callable[[Any], Any] | None = None,
               accum_steps: int = 1) -> tuple[TrainState, dict[str, Array]]:
    """One SGD step on a global batch; returns the new state and scalar metrics.

    ``frozen`` (params -> bool tree, e.g. ``optim.path_mask``) marks parameters
    whose gradient is not computed: they enter the loss through ``stop_gradient``,
    so XLA also drops the backward pass into layers below them that have no
    trainable parameters (with the whole 'whiten' stem frozen, the first conv's
    input gradient and the stem's backward).  Their updates are zero.

    With ``accum_steps`` = k > 1 the batch runs as k sequential micro-batches
    (``lax.scan``); their gradients are averaged into one update and the
    BatchNorm statistics (each micro-batch's own) are threaded through them.

    With ``skip_nonfinite`` a step whose gradients are not finite leaves params and
    optimizer state unchanged (``optax.apply_if_finite``, ``optim.create_optimizer``);
    one whose loss or gradients are not finite keeps the BN statistics and counts as
    skipped (only the step advances, so the data order stays that of the
    uninterrupted run).
    """
    key = jax.random.fold_in(dropout_key, state.step)

    def loss_fn(params, batch_stats, micro, key):
        if frozen is not None:
            params = jax.tree_util.tree_map(
                lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen(params))
        logits, updates = state.apply_fn(
            {'params': params, 'batch_stats': batch_stats}, micro['image'], train=True,
            mutable=['batch_stats'], rngs={'dropout': key})
        loss = batch_loss(logits, micro, label_smoothing)
        total = loss + l2_weight * optim.l2_loss(params) if l2_weight else loss
        accuracy = jnp.mean(jnp.argmax(logits, -1) == micro['label'])
        return total, (loss, accuracy, updates['batch_stats'])

    grad_fn = jax.grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        grads, (loss, accuracy, batch_stats) = grad_fn(state.params, state.batch_stats,
                                                       batch, key)
    else:
        # Micro-batch i holds examples i, i + k, i + 2k, ...: a reshape that keeps
        # every device's examples on that device (the batch axis stays sharded).
        micro = jax.tree_util.tree_map(
            lambda x: jnp.swapaxes(x.reshape(-1, accum_steps, *x.shape[1:]), 0, 1), batch)

        def accumulate(carry, xs):
            grads, batch_stats = carry
            i, micro_batch = xs
            g, (loss, accuracy, batch_stats) = grad_fn(state.params, batch_stats, micro_batch,
                                                       jax.random.fold_in(key, i))
            return (jax.tree_util.tree_map(jnp.add, grads, g), batch_stats), (loss, accuracy)

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        (grads, batch_stats), (losses, accuracies) = jax.lax.scan(
            accumulate, (zeros, state.batch_stats), (jnp.arange(accum_steps), micro))
        grads = jax.tree_util.tree_map(lambda g: g / accum_steps, grads)
        loss, accuracy = jnp.mean(losses), jnp.mean(accuracies)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {'loss': loss, 'accuracy': accuracy}
    if skip_nonfinite:
        ok = optim.last_step_finite(new_state.opt_state) & jnp.isfinite(loss)
        new_state = new_state.replace(batch_stats=jax.tree_util.tree_map(
            lambda new, old: jnp.where(ok, new, old), new_state.batch_stats, state.batch_stats))
        metrics = {'loss': jnp.where(ok, loss, 0.0), 'accuracy': metrics['accuracy'],
                   'skipped': (~ok).astype(jnp.int32)}
    return new_state, metrics


def lookahead_update(state: TrainState, *, every: int, decay: float, total_steps: int
                     ) -> TrainState:
    """airbench's lookahead, applied after an optimizer step (``state.step`` counted).

    Every ``every`` steps the EMA moves towards the live weights and BN statistics
    by ``1 - decay**every * t**3`` (t = step / total_steps: no averaging early,
    more towards the end) and the live ones are reset to it; at ``total_steps``
    the EMA itself becomes the model.
    """
    step = jnp.asarray(state.step)
    last = step >= total_steps
    t = jnp.minimum(step.astype(jnp.float32) / total_steps, 1.0)
    d = jnp.where(last, 1.0, decay ** every * t ** 3)
    sync = (step % every == 0) | last
    live = {'params': state.params, 'batch_stats': state.batch_stats}
    ema = jax.tree_util.tree_map(lambda e, x: jnp.where(sync, e + (1 - d) * (x - e), e),
                                 state.lookahead, live)
    live = jax.tree_util.tree_map(lambda e, x: jnp.where(sync, e, x), ema, live)
    return state.replace(params=live['params'], batch_stats=live['batch_stats'],
                         lookahead=ema)


def ema_update(state: TrainState, decay: float) -> TrainState:
    """Moves ``state.ema`` towards the live weights and BN statistics:
    ``ema = decay * ema + (1 - decay) * live``, after each optimizer step.

    Unlike the lookahead, the live weights are left alone: the EMA is a second
    model that evaluation and checkpoints can use (``eval.ema``).
    """
    live = {'params': state.params, 'batch_stats': state.batch_stats}
    ema = jax.tree_util.tree_map(lambda e, x: e + (1 - decay) * (x - e), state.ema, live)
    return state.replace(ema=ema)


def evaluated_variables(state: TrainState, use_ema: bool) -> dict[str, Any]:
    """The ``{'params', 'batch_stats'}`` evaluation uses: the EMA's when the run
    keeps one and ``use_ema``, else the live ones."""
    if use_ema and state.ema is not None:
        return state.ema
    return {'params': state.params, 'batch_stats': state.batch_stats}


def update(state: TrainState, batch: dict[str, Array], options: StepOptions,
           mesh: jax.sharding.Mesh) -> tuple[TrainState, dict[str, Array]]:
    """``train_step`` on a global batch, then the lookahead and the EMA."""
    batch = jax.lax.with_sharding_constraint(batch, sharding.batch_sharded(mesh))
    state, metrics = train_step(state, batch, dropout_key=options.rngs.dropout,
                                label_smoothing=options.label_smoothing,
                                l2_weight=options.l2_weight,
                                skip_nonfinite=options.skip_nonfinite, frozen=options.frozen,
                                accum_steps=options.accum_steps)
    if options.lookahead_every > 0:
        state = lookahead_update(state, every=options.lookahead_every,
                                 decay=options.lookahead_decay,
                                 total_steps=options.lookahead_steps)
    if options.ema_decay > 0:
        state = ema_update(state, options.ema_decay)
    return state, metrics


def jit_step(batch_fn: Callable[..., dict[str, Array]], options: StepOptions,
             mesh: jax.sharding.Mesh, steps: int = 1) -> Callable:
    """The jitted training step ``fn(state, *args) -> (state, metrics)``.

    ``batch_fn(state.step, *args)`` gives the step's global batch inside the step
    (an input's ``batch``; ``args`` are its ``step_args``).  ``steps`` > 1 runs that
    many steps in one dispatch (``lax.scan`` over the same step, so the result is
    that of single steps; metrics stacked).  The state is donated: its buffers are
    reused for the new one.
    """

    def train_one(state, *args):
        return update(state, batch_fn(state.step, *args), options, mesh)

    def train_many(state, *args):
        return jax.lax.scan(lambda s, _: train_one(s, *args), state, length=steps)

    replicated = sharding.replicated(mesh)
    return jax.jit(train_one if steps == 1 else train_many, donate_argnums=0,
                   out_shardings=(replicated, replicated))
