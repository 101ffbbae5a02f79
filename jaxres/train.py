"""Train state, the pure train step, and the training loop.

``train_step(state, batch) -> (state, metrics)`` is a plain function; jit,
shardings and buffer donation are applied in ``Trainer`` where it is used.  The
loop asks its input (``input_pipeline.ResidentInput`` or
``streaming.StreamingInput``) for each step's arguments and evaluation batches;
evaluation is ``evaluate.Evaluator``'s.  It runs under
``jax.transfer_guard('disallow')``: the only host<->device copies are the
explicit ones (streamed batches, and log, eval and checkpoint steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from clu import periodic_actions
from flax.training import train_state

from jaxres import backend, checkpointing, config_validation, datasets, evaluate
from jaxres import input_pipeline
from jaxres import metric_logging
from jaxres import models, optim, safe_io, sharding, streaming

Array = jax.Array
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: schedulers read it as "requeue"


class TrainState(train_state.TrainState):
    """Flax TrainState plus BatchNorm running statistics."""

    batch_stats: Any = None
    # EMA of {'params', 'batch_stats'} for optimizer.lookahead_every > 0, else None.
    lookahead: Any = None


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss; the message names the step and checkpoint."""


# --------------------------------------------------------------------------- #
# Pure functions
# --------------------------------------------------------------------------- #
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

    With ``skip_nonfinite`` a step whose loss or gradients are not finite leaves
    params, BN statistics and optimizer state unchanged (only the step advances,
    so the data order stays that of the uninterrupted run) and counts as skipped.
    """
    key = jax.random.fold_in(dropout_key, state.step)

    def loss_fn(params, batch_stats, micro, key):
        if frozen is not None:
            params = jax.tree_util.tree_map(
                lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen(params))
        logits, updates = state.apply_fn(
            {'params': params, 'batch_stats': batch_stats}, micro['image'], train=True,
            mutable=['batch_stats'], rngs={'dropout': key})
        loss = evaluate.cross_entropy(logits, micro['label'], label_smoothing).mean()
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
            i, mb = xs
            g, (loss, accuracy, batch_stats) = grad_fn(state.params, batch_stats, mb,
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
        ok = jnp.isfinite(loss) & jnp.all(jnp.asarray(
            [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
        kept = jax.tree_util.tree_map(lambda new, old: jnp.where(ok, new, old), new_state, state)
        new_state = kept.replace(step=new_state.step)
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


# Training metrics averaged over the steps between two log events (built with
# Collection.create: this module's postponed annotations hide class-body fields).
TrainMetrics = clu_metrics.Collection.create(
    loss=clu_metrics.Average.from_output('loss'),
    accuracy=clu_metrics.Average.from_output('accuracy'))


def summarize_train(host_metrics: list[dict[str, Any]]) -> dict[str, float]:
    """Merges fetched per-step metrics (each a step, or a (K,) stack of K steps
    from ``steps_per_dispatch``) with ``clu.metrics`` and computes the averages."""
    merged = None
    for m in host_metrics:
        one = TrainMetrics.single_from_model_output(loss=np.ravel(m['loss']),
                                                    accuracy=np.ravel(m['accuracy']))
        merged = one if merged is None else merged.merge(one)
    return {k: float(v) for k, v in merged.compute().items()}


# --------------------------------------------------------------------------- #
# Building the pieces
# --------------------------------------------------------------------------- #
def create_train_state(config: ml_collections.ConfigDict, model: models.ResNet,
                       tx: optax.GradientTransformation, image_shape: tuple[int, ...],
                       stem_kernel: Any = None) -> TrainState:
    """Initialises params and BN stats from ``config.seed`` (jit me with out_shardings).

    ``stem_kernel`` replaces the stem conv's initial kernel (the 'whiten' stem's,
    computed from data).
    """
    variables = model.init({'params': jax.random.key(config.seed)},
                           jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
    params = variables['params']
    if stem_kernel is not None:
        stem = params['stem']
        params = {**params, 'stem': {**stem, 'conv': {**stem['conv'], 'kernel': stem_kernel}}}
    batch_stats = variables.get('batch_stats', {})
    lookahead = ({'params': params, 'batch_stats': batch_stats}
                 if config.optimizer.lookahead_every > 0 else None)
    return TrainState.create(apply_fn=model.apply, params=params, batch_stats=batch_stats,
                             tx=tx, lookahead=lookahead)


@dataclasses.dataclass
class Trainer:
    """Everything one run needs, built once from the config and the data set."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    model: models.ResNet
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    aug: input_pipeline.Augmentation
    num_train: int
    steps_per_epoch: int
    total_steps: int
    schedule_steps: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    choices: backend.Choices
    stem_kernel: np.ndarray | None = None

    @classmethod
    def build(cls, config: ml_collections.ConfigDict,
              data: datasets.DataInfo | datasets.ImageDataset, mesh: jax.sharding.Mesh,
              platform: str | None = None, sample_images: np.ndarray | None = None
              ) -> 'Trainer':
        """Everything but the data's placement, from the config and the data set's
        ``DataInfo`` (an ``ImageDataset`` in memory also serves, and gives the
        'whiten' stem its sample).  The trainer's config has ``data.mean``/``std``
        resolved (from the data when empty).  ``platform`` (default: the mesh's)
        picks the backend's lowerings (``backend.choose``); 'cuda' or 'tpu' on a
        CPU mesh is for exporting.  ``sample_images`` (the first training images)
        stand in for an ``ImageDataset``'s when the data is streamed."""
        images = data.train_images if isinstance(data, datasets.ImageDataset) else sample_images
        info = data.info(config.dataset) if isinstance(data, datasets.ImageDataset) else data
        config = datasets.resolve_normalization(config, info, images)
        config_validation.validate_for_data(config, info, mesh.size)
        choices = backend.choose(config, platform or mesh.devices.flat[0].platform)
        steps_per_epoch = info.num_train // config.batch_size
        # round() first: 0.7 * 10 is 7.000000000000001 in floats, and must give 7 steps.
        schedule_steps = math.ceil(round(config.num_epochs * steps_per_epoch, 6))
        total = config.num_train_steps if config.num_train_steps > 0 else schedule_steps
        schedule = optim.create_schedule(config, steps_per_epoch, schedule_steps)
        aug = input_pipeline.Augmentation.from_config(config)
        stem_kernel = None
        if config.model.stem == 'whiten':
            if images is None:
                raise config_validation.ConfigError(
                    "model.stem='whiten' computes its kernel from the first training images: "
                    'pass them (sample_images) or use --config.input.kind=resident.')
            sample = input_pipeline.normalize(images[:config.model.whiten_samples], aug)
            stem_kernel = np.asarray(models.whitening_kernel(sample, config.model.whiten_kernel))
        return cls(config=config, mesh=mesh, stem_kernel=stem_kernel, choices=choices,
                   model=models.create_model(config.model, info.num_classes,
                                             models.compute_dtype(config.dtype), choices.conv,
                                             choices.max_pool),
                   tx=optim.create_optimizer(config, schedule), schedule=schedule,
                   aug=aug, num_train=info.num_train, steps_per_epoch=steps_per_epoch,
                   total_steps=total, schedule_steps=schedule_steps,
                   class_names=info.class_names,
                   image_shape=info.model_image_shape(config.data.image_size))

    # -- state -------------------------------------------------------------- #
    def init_state(self) -> TrainState:
        init = functools.partial(create_train_state, self.config, self.model, self.tx,
                                 self.image_shape, self.stem_kernel)
        return jax.jit(init, out_shardings=sharding.replicated(self.mesh))()

    def abstract_state(self) -> TrainState:
        """Shapes and (current) shardings of the state, with no computation."""
        shapes = jax.eval_shape(functools.partial(
            create_train_state, self.config, self.model, self.tx, self.image_shape,
            self.stem_kernel))
        return checkpointing.abstract_like(shapes, sharding.replicated(self.mesh))

    # -- compiled functions ------------------------------------------------- #
    @functools.cached_property
    def epoch_order_fn(self) -> Callable[[Array], Array]:
        """state.step -> this epoch's (steps_per_epoch, batch) order, on device."""
        cfg = self.config

        def order(step):
            data_key = jax.random.key(cfg.seed + 1)
            return input_pipeline.epoch_order(data_key, step // self.steps_per_epoch,
                                              self.num_train, self.steps_per_epoch,
                                              cfg.batch_size)

        return jax.jit(order, out_shardings=sharding.replicated(self.mesh))

    def step_with_data(self, state: TrainState, data: input_pipeline.DeviceData,
                       order: Array) -> tuple[TrainState, dict[str, Array]]:
        """Resident input: gather + augment this step's global batch, then ``update``."""
        cfg = self.config
        batch = input_pipeline.train_batch(
            data, order, state.step, state.step // self.steps_per_epoch,
            jax.random.key(cfg.seed + 1), self.aug, models.compute_dtype(cfg.dtype),
            sharding.batch_sharded(self.mesh))
        return self.update(state, batch)

    def step_with_batch(self, state: TrainState, batch: dict[str, Array]
                        ) -> tuple[TrainState, dict[str, Array]]:
        """Streaming input: augment a read uint8 batch (the ops left for jit), ``update``."""
        cfg = self.config
        pos = state.step % self.steps_per_epoch
        batch = input_pipeline.augment_batch(
            batch['image'], batch['label'], batch['index'], pos,
            state.step // self.steps_per_epoch, jax.random.key(cfg.seed + 1),
            streaming.jit_augmentation(self.aug), models.compute_dtype(cfg.dtype))
        return self.update(state, batch)

    def update(self, state: TrainState, batch: dict[str, Array]
               ) -> tuple[TrainState, dict[str, Array]]:
        """``train_step`` with the config's options, then the lookahead."""
        cfg = self.config
        batch = jax.lax.with_sharding_constraint(batch, sharding.batch_sharded(self.mesh))
        l2 = cfg.optimizer.weight_decay if cfg.optimizer.weight_decay_mode == 'loss' else 0.0
        state, metrics = train_step(state, batch, dropout_key=jax.random.key(cfg.seed + 2),
                                    label_smoothing=cfg.label_smoothing, l2_weight=l2,
                                    skip_nonfinite=cfg.nonfinite == 'skip',
                                    frozen=optim.frozen_mask(cfg),
                                    accum_steps=cfg.grad_accum_steps)
        if cfg.optimizer.lookahead_every > 0:
            state = lookahead_update(state, every=cfg.optimizer.lookahead_every,
                                     decay=cfg.optimizer.lookahead_decay,
                                     total_steps=self.schedule_steps)
        return state, metrics

    @functools.cached_property
    def batch_step_fn(self) -> Callable:
        """The jitted streaming step (state donated)."""
        repl = sharding.replicated(self.mesh)
        return jax.jit(self.step_with_batch, donate_argnums=0, out_shardings=(repl, repl))

    def step_fn(self, kind: str, steps: int = 1) -> Callable:
        """The jitted step for the input ``kind``: ``fn(state, *input.step_args(...))``."""
        if kind == 'streaming':
            return self.batch_step_fn
        return self.multi_step_fn if steps > 1 else self.train_step_fn

    @functools.cached_property
    def train_step_fn(self) -> Callable:
        """The jitted step; the state is donated, so its buffers are reused."""
        repl = sharding.replicated(self.mesh)
        return jax.jit(self.step_with_data, donate_argnums=0, out_shardings=(repl, repl))

    @functools.cached_property
    def multi_step_fn(self) -> Callable:
        """``config.steps_per_dispatch`` steps in one dispatch (``lax.scan``).

        The same ``step_with_data`` as the single step, so the result is
        identical to K single steps; only the per-step dispatch cost goes away.
        """
        k = self.config.steps_per_dispatch

        def many(state, data, order):
            return jax.lax.scan(lambda s, _: self.step_with_data(s, data, order), state,
                                length=k)

        repl = sharding.replicated(self.mesh)
        return jax.jit(many, donate_argnums=0, out_shardings=(repl, repl))

    @functools.cached_property
    def evaluator(self) -> evaluate.Evaluator:
        return evaluate.Evaluator(
            self.model.apply, self.mesh, self.aug, models.compute_dtype(self.config.dtype),
            tta_flip=bool(self.config.eval.tta), tta_translate=bool(self.config.eval.tta_translate),
            class_names=self.class_names)

    def evaluate(self, state: TrainState,
                 batches: input_pipeline.DeviceData | Iterable[dict[str, Array]]
                 ) -> dict[str, Any]:
        """``evaluate.Evaluator`` over the resident eval set or any batch iterator."""
        if isinstance(batches, input_pipeline.DeviceData):
            batches = input_pipeline.eval_batches(batches)
        return self.evaluator.evaluate({'params': state.params,
                                        'batch_stats': state.batch_stats}, batches)


# --------------------------------------------------------------------------- #
# The loop
# --------------------------------------------------------------------------- #
class _StopSignal:
    """Records SIGTERM/SIGINT so the loop can checkpoint and exit between steps."""

    def __init__(self, enabled: bool = True):
        self.received: int | None = None
        self._previous = {}
        # Multi-process runs leave SIGTERM to JAX's preemption notifier (a Python
        # handler would replace its C++ one), which the loop polls through
        # ``reached_preemption_sync`` so every host stops at the same step.
        self._enabled = enabled

    def __enter__(self):
        for sig in ((signal.SIGTERM, signal.SIGINT) if self._enabled else ()):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners)
                pass
        return self

    def _handle(self, signum, frame):
        del frame
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def reached_preemption_sync(done_before: int, done_now: int) -> bool:
    """Whether JAX's multi-host preemption sync point falls in the steps just run.

    On SIGTERM to any process JAX's preemption sync manager (a C++ SIGTERM
    handler plus the coordination service) sets, on every process alike, the
    sync point to one past the highest counter any process has passed.  The
    counter here is the number of steps run since this process started, passed
    for every step even when one dispatch runs several: a skipped value would be
    a missed preemption (the global step is not used: after a resume, a notice
    that arrives before the first call sets the sync point to 1).
    """
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    try:
        return any([multihost_utils.reached_preemption_sync_point(i)
                    for i in range(done_before + 1, done_now + 1)])
    except RuntimeError:  # jax_enable_preemption_service is off: no notifier
        return False


class Preempted(SystemExit):
    """Raised after the checkpoint of a SIGTERM/SIGINT-interrupted run is written."""


def _check_resumable(meta: dict, config: ml_collections.ConfigDict, ckpt_dir: str,
                     info: datasets.DataInfo | None = None) -> None:
    """Refuses to resume a checkpoint written for a different model or data set.

    A key the current config no longer has is not compared: it was moved or
    dropped by a jaxres upgrade (e.g. ``model.conv_impl`` -> ``backend.conv``),
    not changed by the user.  The data set's record count and classes must be
    those the run started with (a data set rewritten under a run changes the
    order of every later epoch).
    """
    saved = meta.get('config', {})
    current = json.loads(config.to_json())
    diffs = []
    for key in ('dataset', 'model', 'optimizer.name'):
        a = config_validation.lookup(saved, key, None)
        b = config_validation.lookup(current, key, None)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f'model.{k}: {a.get(k)!r} -> {b.get(k)!r}' for k in sorted(b)
                      if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f'{key}: {a!r} -> {b!r}')
    if diffs:
        raise checkpointing.CheckpointError(
            f'the checkpoints in {ckpt_dir} belong to a different config: ' + '; '.join(diffs)
            + '. Use a new --workdir, or start from those weights on purpose with '
            f'--config.init_from={ckpt_dir} in a new workdir.')
    if info is None:
        return
    changed = []
    if meta.get('num_train') not in (None, info.num_train):
        changed.append(f'{meta["num_train"]} training records then, {info.num_train} now')
    if meta.get('class_names') and list(meta['class_names']) != list(info.class_names):
        changed.append(f'classes {_short(meta["class_names"])} then, '
                       f'{_short(info.class_names)} now')
    if changed:
        raise checkpointing.CheckpointError(
            f'dataset {info.name!r} changed since the checkpoints in {ckpt_dir} were written ('
            + '; '.join(changed) + '). Restore the data set the run started with, or train '
            'on the new one in a new --workdir (--config.init_from=' + ckpt_dir
            + ' to start from these weights).')


def _short(names) -> str:
    names = list(names)
    return repr(names) if len(names) <= 4 else f'[{names[0]!r}, ... {len(names)} names]'


@dataclasses.dataclass(frozen=True)
class Cadence:
    """When the loop logs, evaluates and checkpoints: by epoch, by step, by time."""

    steps_per_epoch: int
    total_steps: int
    log_every_steps: int
    eval_every_epochs: int
    eval_every_steps: int
    save_every_epochs: int
    save_every_steps: int
    save_every_minutes: float

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int,
                    total_steps: int) -> 'Cadence':
        return cls(steps_per_epoch, total_steps, config.log_every_steps,
                   config.eval.every_epochs, config.eval.every_steps,
                   config.checkpoint.every_epochs, config.checkpoint.every_steps,
                   config.checkpoint.every_minutes)

    def _on(self, step: int, every_epochs: int, every_steps: int) -> bool:
        epoch, within = divmod(step, self.steps_per_epoch)
        return (step == self.total_steps or (within == 0 and epoch % every_epochs == 0)
                or (every_steps > 0 and step % every_steps == 0))

    def next_event(self, step: int) -> int:
        """The next step after which the loop must look at the host side."""
        every = [self.steps_per_epoch, self.log_every_steps] + [
            n for n in (self.eval_every_steps, self.save_every_steps) if n > 0]
        return min([self.total_steps] + [(step // n + 1) * n for n in every])

    def log(self, step: int) -> bool:
        return step % self.log_every_steps == 0 or step == self.total_steps

    def next_eval(self, step: int) -> int:
        """The first step after ``step`` that evaluates."""
        epochs = self.eval_every_epochs * self.steps_per_epoch
        every = [n for n in (epochs, self.eval_every_steps) if n > 0]
        return min([self.total_steps] + [(step // n + 1) * n for n in every])

    def evaluate(self, step: int) -> bool:
        return self._on(step, self.eval_every_epochs, self.eval_every_steps)

    def save(self, step: int, minutes_since_save: float) -> bool:
        """Due by step or epoch, or (at a log step) by time: every process decides alike."""
        if self._on(step, self.save_every_epochs, self.save_every_steps):
            return True
        if self.save_every_minutes <= 0 or not self.log(step):
            return False
        due = minutes_since_save >= self.save_every_minutes
        if jax.process_count() > 1:  # the clocks differ: process 0 decides for all
            from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
            due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
        return due


def open_input(config: ml_collections.ConfigDict, trainer: 'Trainer',
               ds: datasets.ImageDataset | None, info: datasets.DataInfo, kind: str
               ) -> input_pipeline.ResidentInput | streaming.StreamingInput:
    """The run's input: the resident data set on the devices, or grain's stream."""
    if kind == 'resident':
        data = input_pipeline.to_device(ds, trainer.mesh, config.eval_batch_size, trainer.aug,
                                        packed=trainer.choices.packed_pixels)
        return input_pipeline.ResidentInput(data, trainer.epoch_order_fn,
                                            trainer.steps_per_epoch)
    return streaming.StreamingInput(trainer.config, info, trainer.mesh,
                                    trainer.steps_per_epoch, trainer.total_steps, ds)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       ds: datasets.ImageDataset | None = None) -> dict[str, Any]:
    """Trains (resuming from the workdir's latest checkpoint) and evaluates.

    Returns the final eval results, also written to ``WORKDIR/eval_results.json``.
    ``ds`` lets library users pass in-memory arrays instead of ``config.dataset``.
    """
    t_start = time.time()
    config_validation.validate(config)
    workdir = os.path.abspath(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        try:
            os.makedirs(workdir, exist_ok=True)
        except OSError as e:
            raise config_validation.ConfigError(
                f'cannot write to --workdir {workdir}: {e.strerror or e}. Choose a writable '
                'directory.') from None
    mesh = sharding.make_data_mesh()
    info = ds.info(config.dataset) if ds is not None else datasets.describe(config)
    kind = datasets.choose_input_kind(config, info, jax.local_devices()[0])
    if kind == 'resident' and ds is None:
        ds = datasets.load_dataset(config)
    trainer = Trainer.build(config, ds if ds is not None else info, mesh,
                            sample_images=None if ds is not None else
                            streaming.stem_sample(config, info))
    config = cfg = trainer.config  # data.mean/std resolved
    if is_main:
        safe_io.write_atomic(os.path.join(workdir, 'config.json'),
                             config.to_json_best_effort(indent=2))
    backend.warn_if_slow_here(config, trainer.choices.platform)
    feed = open_input(config, trainer, ds, info, kind)

    manager = checkpointing.create_manager(checkpointing.checkpoint_dir(workdir), config)
    start_step, state = checkpointing.restore_latest_good(
        manager, trainer.abstract_state(),
        check_meta=lambda meta: _check_resumable(meta, config, str(manager.directory), info))
    if start_step is not None:
        logging.info('Resumed from step %d in %s', start_step, manager.directory)
    else:
        state = trainer.init_state()
        start_step = 0
        if cfg.init_from:
            from jaxres import finetune  # pylint: disable=g-import-not-at-top
            state = finetune.init_from(state, cfg.init_from, mesh, cfg.checkpoint.best_metric)
    feed.start_at(start_step, manager)

    writer = metric_logging.create_writer(workdir)
    report = periodic_actions.ReportProgress(num_train_steps=trainer.total_steps, writer=writer,
                                             every_secs=30.0)
    spe = trainer.steps_per_epoch
    cadence = Cadence.from_config(cfg, spe, trainer.total_steps)

    def meta(eval_metrics=None):
        # class_names and image_shape let --mode=predict work without the data set;
        # the data set's size and classes are checked on resume.
        return {'config': json.loads(config.to_json_best_effort()), 'steps_per_epoch': spe,
                'class_names': list(info.class_names), 'image_shape': list(info.image_shape),
                'num_train': info.num_train, 'input_kind': kind,
                'metrics': eval_metrics or {}}

    t_saved = time.time()

    def save(step, eval_results=None):
        nonlocal t_saved
        metrics = None
        if eval_results is not None:
            metrics = {f'eval_{k}': eval_results[k] for k in ('accuracy', 'top5_accuracy', 'loss')}
        with jax.transfer_guard('allow'):
            checkpointing.save(manager, step, state, meta(metrics), metrics=metrics,
                               data_iterator=feed.checkpoint_item())
        t_saved = time.time()

    eval_results = None
    pending: list[dict[str, Array]] = []  # device metrics since the last fetch
    t_log, step_log = time.time(), start_step
    step = start_step
    k = max(1, cfg.steps_per_dispatch) if feed.multi_step else 1

    def check_finite(host_metrics, step):
        loss = float(np.mean(np.concatenate([np.ravel(m['loss']) for m in host_metrics])))
        if not np.isfinite(loss):
            checkpointing.wait(manager)
            good = manager.latest_step()
            raise NonFiniteLossError(
                f'training loss became {loss} by step {step}. Last good checkpoint: '
                f'{"step " + str(good) if good is not None else "none"} in '
                f'{manager.directory} (kept). Lower the learning rate or check the data; '
                '--config.nonfinite=skip skips such steps instead.')
        return loss

    def log_train(step):
        nonlocal pending, t_log, step_log
        host = jax.device_get(pending)
        pending = []
        check_finite(host, step)
        with jax.transfer_guard('allow'):  # optax schedules and clu metrics run jnp ops
            lr = float(trainer.schedule(step - 1))
            averaged = summarize_train(host)
        seconds_per_step = max(time.time() - t_log, 1e-9) / max(step - step_log, 1)
        scalars = {'epoch': step / spe, 'lr': lr, 'train_loss': averaged['loss'],
                   'train_accuracy': averaged['accuracy'],
                   'images_per_sec': cfg.batch_size / seconds_per_step}
        if cfg.nonfinite == 'skip':
            scalars['skipped_steps'] = float(np.sum(np.concatenate(
                [np.ravel(m['skipped']) for m in host])))
        writer.write_scalars(step, scalars)
        logging.info(metric_logging.progress_line(
            step, trainer.total_steps, spe, seconds_per_step, scalars['images_per_sec'],
            averaged['loss'], averaged['accuracy'], cadence.next_eval(step)))
        t_log, step_log = time.time(), step

    def evaluate_now():
        with jax.transfer_guard('allow'):  # streamed eval batches are placed from the host
            return trainer.evaluate(state, feed.eval_batches(cfg.eval_batch_size))

    multi_process = jax.process_count() > 1
    with (_StopSignal(enabled=not multi_process) as stop, jax.transfer_guard('disallow'),
          contextlib.closing(feed)):
        while step < trainer.total_steps:
            step_before = step
            n = k if k > 1 and step + k <= cadence.next_event(step) else 1
            state, metrics = trainer.step_fn(feed.kind, n)(state, *feed.step_args(step, state))
            step += n
            pending.append(metrics)
            report(step)
            last = step == trainer.total_steps
            do_eval = cadence.evaluate(step)
            do_save = cadence.save(step, (time.time() - t_saved) / 60)
            preempted = stop.received is not None or (multi_process and reached_preemption_sync(
                step_before - start_step, step - start_step))
            # Metrics are fetched on log steps, and before any checkpoint so that a
            # non-finite state is never saved over the last good one.
            if cadence.log(step) or ((do_save or preempted) and pending):
                log_train(step)
            if do_eval:
                eval_results = evaluate_now()
                writer.write_scalars(step, {
                    'epoch': step / spe, 'eval_loss': eval_results['loss'],
                    'eval_accuracy': eval_results['accuracy'],
                    'eval_top5_accuracy': eval_results['top5_accuracy']})
            if do_save:
                save(step, eval_results if do_eval else None)
            if preempted and not last:
                if not do_save:
                    save(step)
                checkpointing.wait(manager)
                writer.flush()
                raise Preempted(
                    f'Preempted (signal {stop.received or "from the cluster"}): saved a '
                    f'checkpoint at step {step} in {manager.directory}. Re-run the same '
                    'command to resume.')
    checkpointing.wait(manager)
    writer.flush()
    if eval_results is None:  # resumed at the end: nothing left to train
        eval_results = evaluate_now()
    eval_results = dict(eval_results, step=step,
                        split='validation' if config.validation_size > 0 else info.eval_split,
                        wall_time_s=time.time() - t_start)
    if is_main:
        safe_io.write_json(os.path.join(workdir, 'eval_results.json'), eval_results)
    return eval_results
