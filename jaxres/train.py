"""Train state, the pure train/eval steps, and the training loop.

``train_step(state, batch) -> (state, metrics)`` and ``eval_step`` are plain
functions; jit, shardings and buffer donation are applied in ``Trainer`` where
they are used.  The loop runs under ``jax.transfer_guard('disallow')``: the
only host<->device copies are the explicit ones on log, eval and checkpoint
steps.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from clu import periodic_actions
from flax.training import train_state

from jaxres import backend, checkpointing, config_validation, datasets, input_pipeline
from jaxres import metric_logging
from jaxres import models, optim, sharding

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
def cross_entropy(logits: Array, labels: Array, label_smoothing: float = 0.0) -> Array:
    """Per-example softmax cross-entropy in float32, with optional label smoothing."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) \
        if label_smoothing else jax.nn.one_hot(labels, num_classes)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


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
        loss = cross_entropy(logits, micro['label'], label_smoothing).mean()
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


def tta_probabilities(logits_fn: Callable[[Array], Array], images: Array,
                      translate: bool = False) -> Array:
    """Softmax averaged over each image and its mirror image (test-time augmentation).

    With ``translate`` the image shifted by one pixel up-left and down-right
    (edges reflected) is added, each with its mirror: weights 1/2, 1/4, 1/4.
    """
    def flip_avg(x):
        return (jax.nn.softmax(logits_fn(x).astype(jnp.float32)) +
                jax.nn.softmax(logits_fn(x[:, :, ::-1]).astype(jnp.float32))) / 2

    probs = flip_avg(images)
    if translate:
        h, w = images.shape[1:3]
        padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), 'reflect')
        probs = (probs / 2 + flip_avg(padded[:, :h, :w]) / 4 +
                 flip_avg(padded[:, 2:, 2:]) / 4)
    return probs


def eval_step(state: TrainState, batch: dict[str, Array], mask: Array, tta_flip: bool = False,
              tta_translate: bool = False) -> dict[str, Array]:
    """Sums over the real (unmasked) examples of one batch: loss, top-1/5, confusion."""
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    logits_fn = lambda x: state.apply_fn(variables, x, train=False)
    if tta_flip:
        logits = jnp.log(tta_probabilities(logits_fn, batch['image'], tta_translate))
    else:
        logits = logits_fn(batch['image'])
    labels = batch['label']
    num_classes = logits.shape[-1]
    m = mask.astype(jnp.float32)
    pred = jnp.argmax(logits, -1)
    _, top5 = jax.lax.top_k(logits, min(5, num_classes))
    return {
        'loss': jnp.sum(cross_entropy(logits, labels) * m),
        'correct': jnp.sum((pred == labels) * m),
        'correct_top5': jnp.sum(jnp.any(top5 == labels[:, None], -1) * m),
        'count': jnp.sum(m),
        'confusion': jnp.zeros((num_classes, num_classes), jnp.float32).at[labels, pred].add(m),
    }


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


def evaluate_all(state: TrainState, data: input_pipeline.DeviceData,
                 aug: input_pipeline.Augmentation, dtype: Any, tta_flip: bool = False,
                 tta_translate: bool = False) -> dict[str, Array]:
    """Sums of ``eval_step`` over every eval batch (one ``lax.scan``, one dispatch)."""

    def body(totals, xs):
        images, labels, mask = xs
        batch = {'image': input_pipeline.normalize(images, aug, dtype), 'label': labels}
        sums = eval_step(state, batch, mask, tta_flip, tta_translate)
        return jax.tree_util.tree_map(jnp.add, totals, sums), None

    first = jax.eval_shape(lambda: eval_step(
        state, {'image': input_pipeline.normalize(data.eval_images[0], aug, dtype),
                'label': data.eval_labels[0]}, data.eval_mask[0], tta_flip, tta_translate))
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), first)
    totals, _ = jax.lax.scan(body, zeros, (data.eval_images, data.eval_labels, data.eval_mask))
    return totals


def summarize_eval(sums: dict[str, Any], class_names: tuple[str, ...] | None = None
                   ) -> dict[str, Any]:
    """Host-side: divide the sums once; per-class accuracy from the confusion matrix."""
    sums = jax.device_get(sums)
    count = float(sums['count'])
    confusion = np.asarray(sums['confusion'])
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    out = {
        'accuracy': float(sums['correct']) / count,
        'top5_accuracy': float(sums['correct_top5']) / count,
        'loss': float(sums['loss']) / count,
        'num_examples': int(round(count)),
        'per_class_accuracy': {(class_names[i] if class_names else str(i)): float(a)
                               for i, a in enumerate(per_class)},
        'confusion_matrix': confusion.astype(int).tolist(),
    }
    return out


# --------------------------------------------------------------------------- #
# Building the pieces
# --------------------------------------------------------------------------- #
def compute_dtype(config: ml_collections.ConfigDict) -> Any:
    return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[config.dtype]


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


def model_input_shape(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]
                      ) -> tuple[int, int, int]:
    h, w, c = image_shape
    size = config.data.image_size
    return (size, size, c) if size else (h, w, c)


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
    def build(cls, config: ml_collections.ConfigDict, ds: datasets.ImageDataset,
              mesh: jax.sharding.Mesh, platform: str | None = None) -> 'Trainer':
        """``platform`` (default: the mesh's) picks the backend's lowerings
        (``backend.choose``); 'cuda' or 'tpu' on a CPU mesh is for exporting."""
        config_validation.validate_for_data(config, ds, mesh.size)
        choices = backend.choose(config, platform or mesh.devices.flat[0].platform)
        steps_per_epoch = len(ds.train_labels) // config.batch_size
        # round() first: 0.7 * 10 is 7.000000000000001 in floats, and must give 7 steps.
        schedule_steps = math.ceil(round(config.num_epochs * steps_per_epoch, 6))
        total = config.num_train_steps if config.num_train_steps > 0 else schedule_steps
        schedule = optim.create_schedule(config, steps_per_epoch, schedule_steps)
        aug = input_pipeline.Augmentation.from_config(config)
        stem_kernel = None
        if config.model.stem == 'whiten':
            sample = input_pipeline.normalize(ds.train_images[:config.model.whiten_samples], aug)
            stem_kernel = np.asarray(models.whitening_kernel(sample, config.model.whiten_kernel))
        return cls(config=config, mesh=mesh, stem_kernel=stem_kernel, choices=choices,
                   model=models.create_model(config.model, ds.num_classes, compute_dtype(config),
                                             choices.conv, choices.max_pool),
                   tx=optim.create_optimizer(config, schedule), schedule=schedule,
                   aug=aug,
                   num_train=len(ds.train_labels), steps_per_epoch=steps_per_epoch,
                   total_steps=total, schedule_steps=schedule_steps, class_names=ds.class_names,
                   image_shape=model_input_shape(config, ds.image_shape))

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
        """Gather + augment this step's global batch, then ``train_step``."""
        cfg = self.config
        batch = input_pipeline.train_batch(
            data, order, state.step, state.step // self.steps_per_epoch,
            jax.random.key(cfg.seed + 1), self.aug, compute_dtype(cfg),
            sharding.batch_sharded(self.mesh))
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
    def eval_fn(self) -> Callable:
        return jax.jit(functools.partial(evaluate_all, aug=self.aug,
                                         dtype=compute_dtype(self.config),
                                         tta_flip=bool(self.config.eval.get('tta', False)),
                                         tta_translate=bool(self.config.eval.get(
                                             'tta_translate', False))),
                       out_shardings=sharding.replicated(self.mesh))

    def evaluate(self, state: TrainState, data: input_pipeline.DeviceData) -> dict[str, Any]:
        return summarize_eval(self.eval_fn(state, data), self.class_names)


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


def _check_resumable(meta: dict, config: ml_collections.ConfigDict, ckpt_dir: str) -> None:
    """Refuses to resume a checkpoint written for a different model or data set.

    A key the current config no longer has is not compared: it was moved or
    dropped by a jaxres upgrade (e.g. ``model.conv_impl`` -> ``backend.conv``),
    not changed by the user.
    """
    saved = meta.get('config', {})
    current = json.loads(config.to_json())
    diffs = []
    for key in ('dataset', 'model', 'optimizer.name'):
        a, b = _lookup(saved, key), _lookup(current, key)
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


def _lookup(d: dict, dotted: str) -> Any:
    for part in dotted.split('.'):
        d = d.get(part) if isinstance(d, dict) else None
    return d


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
            write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))
        except OSError as e:
            raise config_validation.ConfigError(
                f'cannot write to --workdir {workdir}: {e.strerror or e}. Choose a writable '
                'directory.') from None
    ds = ds if ds is not None else datasets.load_dataset(config)
    mesh = sharding.make_data_mesh()
    trainer = Trainer.build(config, ds, mesh)
    backend.warn_if_slow_here(config, trainer.choices.platform)
    data = input_pipeline.to_device(ds, mesh, config.eval_batch_size, trainer.aug,
                                    packed=trainer.choices.packed_pixels)
    cfg = config

    manager = checkpointing.create_manager(checkpointing.checkpoint_dir(workdir), config)
    start_step, state = checkpointing.restore_latest_good(
        manager, trainer.abstract_state(),
        check_meta=lambda meta: _check_resumable(meta, config, manager.directory))
    if start_step is not None:
        logging.info('Resumed from step %d in %s', start_step, manager.directory)
    else:
        state = trainer.init_state()
        start_step = 0
        if cfg.init_from:
            from jaxres import finetune  # pylint: disable=g-import-not-at-top
            state = finetune.init_from(state, cfg.init_from, trainer)

    writer = metric_logging.create_writer(workdir)
    report = periodic_actions.ReportProgress(num_train_steps=trainer.total_steps, writer=writer,
                                             every_secs=30.0)
    spe = trainer.steps_per_epoch

    def meta(eval_metrics=None):
        # class_names and image_shape let --mode=predict work without the data set.
        return {'config': json.loads(config.to_json_best_effort()), 'steps_per_epoch': spe,
                'class_names': list(ds.class_names), 'image_shape': list(ds.image_shape),
                'metrics': eval_metrics or {}}

    def save(step, eval_results=None):
        metrics = None
        if eval_results is not None:
            metrics = {f'eval_{k}': eval_results[k] for k in ('accuracy', 'top5_accuracy', 'loss')}
        with jax.transfer_guard('allow'):
            checkpointing.save(manager, step, state, meta(metrics), metrics=metrics)

    eval_results = None
    order = None
    pending: list[dict[str, Array]] = []  # device metrics since the last fetch
    t_log, step_log = time.time(), start_step
    step = start_step
    k = max(1, cfg.steps_per_dispatch)

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
        scalars = {'epoch': step / spe, 'lr': lr, 'train_loss': averaged['loss'],
                   'train_accuracy': averaged['accuracy'],
                   'images_per_sec': (step - step_log) * cfg.batch_size /
                                     max(time.time() - t_log, 1e-9)}
        if cfg.nonfinite == 'skip':
            scalars['skipped_steps'] = float(np.sum(np.concatenate(
                [np.ravel(m['skipped']) for m in host])))
        writer.write_scalars(step, scalars)
        t_log, step_log = time.time(), step

    def next_event(step):
        """The next step after which the loop must look at the host side."""
        candidates = [trainer.total_steps, (step // spe + 1) * spe,
                      (step // cfg.log_every_steps + 1) * cfg.log_every_steps]
        return min(candidates)

    multi_process = jax.process_count() > 1
    with _StopSignal(enabled=not multi_process) as stop, jax.transfer_guard('disallow'):
        while step < trainer.total_steps:
            if order is None or step % spe == 0:
                order = trainer.epoch_order_fn(state.step)
            step_before = step
            if k > 1 and step + k <= next_event(step):
                state, metrics = trainer.multi_step_fn(state, data, order)
                step += k
            else:
                state, metrics = trainer.train_step_fn(state, data, order)
                step += 1
            pending.append(metrics)
            report(step)
            end_of_epoch = step % spe == 0
            last = step == trainer.total_steps
            epoch = step // spe
            do_eval = last or (end_of_epoch and epoch % cfg.eval.every_epochs == 0)
            do_save = last or (end_of_epoch and epoch % cfg.checkpoint.every_epochs == 0)
            preempted = stop.received is not None or (multi_process and reached_preemption_sync(
                step_before - start_step, step - start_step))
            # Metrics are fetched on log steps, and before any checkpoint so that a
            # non-finite state is never saved over the last good one.
            if step % cfg.log_every_steps == 0 or last or ((do_save or preempted) and pending):
                log_train(step)
            if do_eval:
                eval_results = trainer.evaluate(state, data)
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
        eval_results = trainer.evaluate(state, data)
    eval_results = dict(eval_results, step=step,
                        split='validation' if config.validation_size > 0 else config.eval_split,
                        wall_time_s=time.time() - t_start)
    if is_main:
        write_json(os.path.join(workdir, 'eval_results.json'), eval_results)
    return eval_results


def write_text(path: str, text: str) -> None:
    """Writes atomically (temp file + rename): never a half-written file."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2))
