"""The run's recipe (``TrainSetup``: model, optimizer, inputs, evaluator, built once
from the config and data) and the training loop.

The step itself is ``step.py``'s: a pure ``train_step(state, batch) -> (state,
metrics)``, jitted once by ``step.jit_step`` around the input's ``batch``.
The loop, ``train_and_evaluate``, asks its input (``resident.ResidentInput``
or ``streaming.StreamingInput``) for each step's arguments and evaluation
batches; evaluation is ``evaluate.Evaluator``'s, and ``Cadence`` decides when it
logs, evaluates and checkpoints.  It runs under ``jax.transfer_guard('disallow')``:
the only host<->device copies are the explicit ones (streamed batches, and log,
eval and checkpoint steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
import flax.linen as nn
from flax import traverse_util

from jaxres import checkpointing, config_validation, evaluate, metric_logging, models, optim
from jaxres import preemption, safe_io, sharding
from jaxres.cpu import backend
from jaxres.data import datasets, preprocess, resident, streaming
from jaxres.data.inputs import Input
from jaxres.step import RngStreams, StepOptions, TrainState, evaluated_variables, jit_step

Array = jax.Array


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss; the message names the step and checkpoint."""


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
def create_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                       tx: optax.GradientTransformation, image_shape: tuple[int, ...],
                       data_params: Any = None) -> TrainState:
    """Initialises params and BN stats from ``config.seed`` (jit me with out_shardings).

    ``data_params`` (a params subtree, e.g. airbench's whitening kernel computed
    from training images) replaces those leaves of the random init.
    """
    variables = model.init({'params': RngStreams(config.seed).init},
                           jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
    params = variables['params']
    if data_params:
        params = traverse_util.unflatten_dict({**traverse_util.flatten_dict(params),
                                               **traverse_util.flatten_dict(data_params)})
    batch_stats = variables.get('batch_stats', {})
    variables = {'params': params, 'batch_stats': batch_stats}
    return TrainState.create(
        apply_fn=model.apply, params=params, batch_stats=batch_stats, tx=tx,
        lookahead=variables if config.optimizer.lookahead_every > 0 else None,
        ema=variables if config.optimizer.ema_decay > 0 else None)


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """The run's recipe, built once from the config and the data set: the model,
    optimizer, mesh, preprocessing specs, step counts and the step's options, and
    the initial state, inputs, jitted step and evaluator made from them.  The loop
    that trains with them is ``train_and_evaluate``."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    model: nn.Module  # a registered model family (models.FAMILIES)
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    train_pp: preprocess.Preprocess  # data.train_pp with the data's normalisation
    eval_pp: preprocess.Preprocess  # data.eval_pp
    num_train: int
    steps_per_epoch: int
    total_steps: int
    schedule_steps: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    choices: backend.Choices
    step_options: StepOptions
    data_params: dict[str, Any] | None = None  # initial weights computed from data

    @classmethod
    def build(cls, config: ml_collections.ConfigDict,
              data: datasets.DataInfo | datasets.ImageDataset, mesh: jax.sharding.Mesh,
              platform: str | None = None, sample_images: np.ndarray | None = None
              ) -> 'TrainSetup':
        """Everything but the data's placement, from the config and the data set's
        ``DataInfo`` (an ``ImageDataset`` in memory also serves, and gives the
        'whiten' stem its sample).  The setup's config has ``data.mean``/``std``
        resolved (from the data when empty).  ``platform`` (default: the mesh's)
        picks the backend's lowerings (``backend.choose``); 'cuda' or 'tpu' on a
        CPU mesh is for exporting.  ``sample_images`` (training images spread over the
        split, ``streaming.stem_sample``) stand in for an ``ImageDataset``'s when the data is
        streamed."""
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
        train_pp = preprocess.Preprocess.from_config(config, 'train')
        model = models.create_model(config.model, info.num_classes,
                                    models.compute_dtype(config.dtype), choices.conv,
                                    choices.max_pool)
        data_params = None
        if models.data_init_size(model):
            if images is None:
                raise config_validation.ConfigError(
                    f'model.family={config.model.family!r} computes initial weights from the '
                    'training images: pass them (sample_images) or use '
                    '--config.input.kind=resident.')
            # Evenly spaced, not the first N: a class-sorted split's first N are one class.
            picked = datasets.spread_sample(len(images), models.data_init_size(model))
            sample = preprocess.normalize(images[picked], train_pp.normalization)
            data_params = jax.tree.map(np.asarray, model.kernels_from_data(sample))
        return cls(config=config, mesh=mesh, data_params=data_params, choices=choices,
                   model=model,
                   tx=optim.create_optimizer(config, schedule), schedule=schedule,
                   train_pp=train_pp, eval_pp=preprocess.Preprocess.from_config(config, 'eval'),
                   num_train=info.num_train,
                   steps_per_epoch=steps_per_epoch, total_steps=total,
                   schedule_steps=schedule_steps, class_names=info.class_names,
                   step_options=StepOptions.from_config(config, schedule_steps),
                   image_shape=info.model_image_shape(config.data.image_size))

    # -- state -------------------------------------------------------------- #
    def init_state(self) -> TrainState:
        init = functools.partial(create_train_state, self.config, self.model, self.tx,
                                 self.image_shape, self.data_params)
        return jax.jit(init, out_shardings=sharding.replicated(self.mesh))()

    def abstract_state(self) -> TrainState:
        """Shapes and (current) shardings of the state, with no computation."""
        shapes = jax.eval_shape(functools.partial(
            create_train_state, self.config, self.model, self.tx, self.image_shape,
            self.data_params))
        return checkpointing.abstract_like(shapes, sharding.replicated(self.mesh))

    # -- its inputs ---------------------------------------------------------- #
    def resident_input(self, data: resident.DeviceData) -> resident.ResidentInput:
        """The resident data set (``resident.to_device``) as this run's input."""
        return resident.ResidentInput(
            data, pipeline=self.train_pp, rngs=self.step_options.rngs,
            steps_per_epoch=self.steps_per_epoch, batch_size=self.config.batch_size,
            mesh=self.mesh, dtype=models.compute_dtype(self.config.dtype))

    def streaming_input(self, info: datasets.DataInfo, num_steps: int,
                        ds: datasets.ImageDataset | None = None) -> streaming.StreamingInput:
        """grain's stream of the data set (``ds``: arrays in memory) as this run's input."""
        return streaming.StreamingInput(self.config, info, self.mesh, self.steps_per_epoch,
                                        num_steps, ds, batch=self.read_batch_ops())

    def read_batch_ops(self) -> streaming.ReadBatchOps:
        """What the streaming input's ``batch`` does to a read batch inside the step."""
        return streaming.ReadBatchOps(self.train_pp, self.step_options.rngs,
                                      self.steps_per_epoch,
                                      models.compute_dtype(self.config.dtype))

    def step_fn(self, batch_fn: Callable[..., dict[str, Array]], steps: int = 1) -> Callable:
        """The jitted step around an input's ``batch`` (``step.jit_step``):
        ``fn(state, *train_input.step_args(...))``; build it once and reuse it."""
        return jit_step(batch_fn, self.step_options, self.mesh, steps)

    # -- evaluation ----------------------------------------------------------- #
    @functools.cached_property
    def evaluator(self) -> evaluate.Evaluator:
        return evaluate.Evaluator(
            self.model.apply, self.mesh, self.eval_pp,
            models.compute_dtype(self.config.dtype), tta_flip=bool(self.config.eval.tta),
            tta_translate=bool(self.config.eval.tta_translate), class_names=self.class_names)

    def evaluate(self, state: TrainState,
                 batches: resident.DeviceData | Iterable[dict[str, Array]]
                 ) -> dict[str, Any]:
        """``evaluate.Evaluator`` over the resident eval set or any batch iterator."""
        if isinstance(batches, resident.DeviceData):
            batches = resident.eval_batches(batches)
        return self.evaluator.evaluate(evaluated_variables(state, self.config.eval.ema),
                                       batches)


# --------------------------------------------------------------------------- #
# The loop
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class Due:
    """What the loop does after a step: log the training metrics, evaluate, checkpoint."""

    log: bool
    evaluate: bool
    save: bool


@dataclasses.dataclass(frozen=True)
class Cadence:
    """When the loop logs, evaluates and checkpoints: by epoch, by step, by time.

    Not Orbax's save-decision policies: the loop must know the next save step
    before it gets there (``next_event``: a multi-step dispatch must stop on it, and
    the metrics are checked for NaN before a save, so a bad state never replaces
    the last good checkpoint), which ``should_save(step)`` does not tell; and
    Orbax's time policy broadcasts from the primary host at every call, where
    this one decides at log steps only.  Preemption is ``preemption.StopSignal``'s.
    """

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

    def dispatch_size(self, step: int, most: int) -> int:
        """How many steps the next dispatch runs: ``most`` when no event falls
        before its last step, else 1 (an event is never skipped over)."""
        return most if most > 1 and step + most <= self.next_event(step) else 1

    def due(self, step: int, minutes_since_save: float) -> Due:
        """Everything the loop does after reaching ``step``."""
        return Due(log=self.log(step), evaluate=self.evaluate(step),
                   save=self.save(step, minutes_since_save))

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


class TrainMetricsLog:
    """The steps' metrics, left on the device until a log step fetches, checks and
    writes them (one transfer per log step, not one per step)."""

    def __init__(self, setup: TrainSetup, writer: Any, cadence: Cadence,
                 manager: Any, step: int):
        self.setup, self.writer, self.cadence, self.manager = setup, writer, cadence, manager
        self.unfetched: list[dict[str, Array]] = []  # device metrics since the last fetch
        self._since_time, self._since_step = time.time(), step

    def add(self, metrics: dict[str, Array]) -> None:
        self.unfetched.append(metrics)

    def write(self, step: int) -> None:
        """Fetches the metrics since the last log step, stops on a non-finite loss,
        and writes their averages and the progress line."""
        config = self.setup.config
        fetched = jax.device_get(self.unfetched)
        self.unfetched = []
        self._check_finite(fetched, step)
        with jax.transfer_guard('allow'):  # optax schedules and clu metrics run jnp ops
            lr = float(self.setup.schedule(step - 1))
            averaged = summarize_train(fetched)
        seconds_per_step = (max(time.time() - self._since_time, 1e-9)
                            / max(step - self._since_step, 1))
        scalars = {'epoch': step / self.setup.steps_per_epoch, 'lr': lr,
                   'train_loss': averaged['loss'], 'train_accuracy': averaged['accuracy'],
                   'images_per_sec': config.batch_size / seconds_per_step}
        if config.nonfinite == 'skip':
            scalars['skipped_steps'] = float(np.sum(np.concatenate(
                [np.ravel(m['skipped']) for m in fetched])))
        self.writer.write_scalars(step, scalars)
        logging.info(metric_logging.progress_line(
            step, self.setup.total_steps, self.setup.steps_per_epoch, seconds_per_step,
            scalars['images_per_sec'], averaged['loss'], averaged['accuracy'],
            self.cadence.next_eval(step)))
        self._since_time, self._since_step = time.time(), step

    def _check_finite(self, fetched: list[dict[str, Any]], step: int) -> None:
        loss = float(np.mean(np.concatenate([np.ravel(m['loss']) for m in fetched])))
        if np.isfinite(loss):
            return
        checkpointing.wait(self.manager)
        good = self.manager.latest_step()
        raise NonFiniteLossError(
            f'training loss became {loss} by step {step}. Last good checkpoint: '
            f'{"step " + str(good) if good is not None else "none"} in '
            f'{self.manager.directory} (kept). Lower the learning rate or check the data; '
            '--config.nonfinite=skip skips such steps instead.')


class CheckpointSaver:
    """The run's checkpoint saves: state, meta (with the eval metrics) and, when
    streaming, the data position; and the time since the last one."""

    def __init__(self, manager: Any, train_input: Input, meta: dict[str, Any]):
        self.manager, self.train_input, self.meta = manager, train_input, meta
        self._saved_at = time.time()

    def minutes_since_save(self) -> float:
        return (time.time() - self._saved_at) / 60

    def save(self, step: int, state: TrainState,
             eval_results: dict[str, Any] | None = None) -> None:
        metrics = None
        if eval_results is not None:
            metrics = {f'eval_{k}': eval_results[k] for k in ('accuracy', 'top5_accuracy', 'loss')}
        with jax.transfer_guard('allow'):
            checkpointing.save(self.manager, step, state, {**self.meta, 'metrics': metrics or {}},
                               metrics=metrics, data_iterator=self.train_input.checkpoint_item())
        self._saved_at = time.time()


def checkpoint_meta(setup: TrainSetup, info: datasets.DataInfo, input_kind: str
                    ) -> dict[str, Any]:
    """What every checkpoint records besides the state.  class_names and image_shape
    let --mode=predict work without the data set; the data set's size and classes
    are checked on resume."""
    return {'config': json.loads(setup.config.to_json_best_effort()),
            'steps_per_epoch': setup.steps_per_epoch, 'class_names': list(info.class_names),
            'image_shape': list(info.image_shape), 'num_train': info.num_train,
            'input_kind': input_kind}


def _make_workdir(workdir: str) -> str:
    """The absolute workdir, created by process 0; an unwritable one is a ConfigError."""
    workdir = os.path.abspath(workdir)
    if jax.process_index() == 0:
        try:
            os.makedirs(workdir, exist_ok=True)
        except OSError as e:
            raise config_validation.ConfigError(
                f'cannot write to --workdir {workdir}: {e.strerror or e}. Choose a writable '
                'directory.') from None
    return workdir


def stem_sample(config: ml_collections.ConfigDict, info: datasets.DataInfo
                ) -> np.ndarray | None:
    """The streamed training images the model computes initial weights from, if any."""
    count = models.data_init_size(models.create_model(config.model, info.num_classes))
    return streaming.stem_sample(config, info, count)


def _setup_for_data(config: ml_collections.ConfigDict, ds: datasets.ImageDataset | None
                    ) -> tuple[TrainSetup, datasets.DataInfo, datasets.ImageDataset | None, str]:
    """The data set's facts, the input kind (read into memory only when resident)
    and the setup built from them."""
    mesh = sharding.make_data_mesh()
    info = ds.info(config.dataset) if ds is not None else datasets.describe(config)
    input_kind = datasets.choose_input_kind(config, info, jax.local_devices()[0])
    if input_kind == 'resident' and ds is None:
        ds = datasets.load_dataset(config)
    setup = TrainSetup.build(config, ds if ds is not None else info, mesh,
                             sample_images=None if ds is not None else stem_sample(config, info))
    return setup, info, ds, input_kind


def open_input(setup: TrainSetup, ds: datasets.ImageDataset | None, info: datasets.DataInfo,
               kind: str) -> Input:
    """The run's input: the resident data set on the devices, or grain's stream."""
    if kind == 'resident':
        return setup.resident_input(resident.to_device(
            ds, setup.mesh, setup.config.eval_batch_size, setup.train_pp,
            packed=setup.choices.packed_pixels))
    return setup.streaming_input(info, setup.total_steps, ds)


def _restore_or_init(setup: TrainSetup, manager: Any, info: datasets.DataInfo
                     ) -> tuple[int, TrainState]:
    """(step, state) of the newest good checkpoint, else step 0 and a fresh state
    (with ``config.init_from``'s weights when set)."""
    config = setup.config
    step, state = checkpointing.restore_latest_good(
        manager, setup.abstract_state(), check_meta=lambda meta: checkpointing.check_resumable(
            meta, config, str(manager.directory), info))
    if step is not None:
        logging.info('Resumed from step %d in %s', step, manager.directory)
        return step, state
    state = setup.init_state()
    if config.init_from:
        from jaxres import finetune  # pylint: disable=g-import-not-at-top
        state = finetune.init_from(state, config.init_from, setup.mesh,
                                   config.checkpoint.best_metric)
    return 0, state


def _evaluate(setup: TrainSetup, state: TrainState, train_input: Input) -> dict[str, Any]:
    with jax.transfer_guard('allow'):  # streamed eval batches are placed from the host
        return setup.evaluate(state, train_input.eval_batches(setup.config.eval_batch_size))


def _eval_scalars(results: dict[str, Any], epoch: float) -> dict[str, float]:
    return {'epoch': epoch, 'eval_loss': results['loss'], 'eval_accuracy': results['accuracy'],
            'eval_top5_accuracy': results['top5_accuracy']}


def _stop_preempted(stop: preemption.StopSignal, step: int, manager: Any, writer: Any) -> None:
    """Waits for the checkpoint just started, then raises ``preemption.Preempted``."""
    checkpointing.wait(manager)
    writer.flush()
    raise preemption.Preempted(
        f'Preempted (signal {stop.received or "from the cluster"}): saved a checkpoint at '
        f'step {step} in {manager.directory}. Re-run the same command to resume.')


def _write_results(results: dict[str, Any], step: int, config: ml_collections.ConfigDict,
                   info: datasets.DataInfo, workdir: str, started: float) -> dict[str, Any]:
    """The final eval results with the step, split and wall time; eval_results.json."""
    results = dict(results, step=step,
                   split='validation' if config.validation_size > 0 else info.eval_split,
                   wall_time_s=time.time() - started)
    if jax.process_index() == 0:
        safe_io.write_json(os.path.join(workdir, 'eval_results.json'), results)
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       ds: datasets.ImageDataset | None = None) -> dict[str, Any]:
    """Trains (resuming from the workdir's latest checkpoint) and evaluates.

    Returns the final eval results, also written to ``WORKDIR/eval_results.json``.
    ``ds`` lets library users pass in-memory arrays instead of ``config.dataset``.
    """
    started = time.time()
    config_validation.validate(config)
    workdir = _make_workdir(workdir)
    setup, info, ds, input_kind = _setup_for_data(config, ds)
    config = setup.config  # data.mean/std resolved
    if jax.process_index() == 0:
        safe_io.write_atomic(os.path.join(workdir, 'config.json'),
                             config.to_json_best_effort(indent=2))
    backend.warn_if_slow_here(config, setup.choices.platform)
    train_input = open_input(setup, ds, info, input_kind)
    manager = checkpointing.create_manager(checkpointing.checkpoint_dir(workdir), config)
    step, state = _restore_or_init(setup, manager, info)
    train_input.start_at(step, functools.partial(checkpointing.restore_data_iterator, manager,
                                                 step))

    writer = metric_logging.create_writer(workdir)
    cadence = Cadence.from_config(config, setup.steps_per_epoch, setup.total_steps)
    metrics_log = TrainMetricsLog(setup, writer, cadence, manager, step)
    checkpoints = CheckpointSaver(manager, train_input, checkpoint_meta(setup, info, input_kind))
    most_per_dispatch = max(1, config.steps_per_dispatch) if train_input.multi_step else 1
    step_fns = {}  # steps per dispatch -> the jitted step, built once each
    first_step, eval_results = step, None
    with (preemption.StopSignal(multi_process=jax.process_count() > 1) as stop,
          jax.transfer_guard('disallow'), contextlib.closing(train_input)):
        while step < setup.total_steps:
            steps_run = cadence.dispatch_size(step, most_per_dispatch)
            if steps_run not in step_fns:
                step_fns[steps_run] = setup.step_fn(train_input.batch, steps_run)
            state, metrics = step_fns[steps_run](state, *train_input.step_args(step, state))
            step += steps_run
            metrics_log.add(metrics)
            due = cadence.due(step, checkpoints.minutes_since_save())
            preempted = stop.requested(step - steps_run - first_step, step - first_step)
            # Metrics are fetched on log steps, and before any checkpoint so that a
            # non-finite state is never saved over the last good one.
            if due.log or due.save or preempted:
                metrics_log.write(step)
            if due.evaluate:
                eval_results = _evaluate(setup, state, train_input)
                writer.write_scalars(step, _eval_scalars(eval_results,
                                                         step / setup.steps_per_epoch))
            if due.save or preempted:  # a preemption's own checkpoint records no eval
                checkpoints.save(step, state, eval_results if due.save and due.evaluate else None)
            if preempted and step < setup.total_steps:
                _stop_preempted(stop, step, manager, writer)
    checkpointing.wait(manager)
    writer.flush()
    if eval_results is None:  # resumed at the end: nothing left to train
        eval_results = _evaluate(setup, state, train_input)
    return _write_results(eval_results, step, config, info, workdir, started)
