"""Benchmark a config's training on this machine.

    python -m jaxres.bench --config configs/cifar10_resnet18.py [--batch_size 128] [--steps 10] \
        [--config.key=value ...]

Measures, after compilation and warm-up:
  * compile time of the train step;
  * the compiled train step: median step time, images/s and achieved GFLOP/s
    (FLOPs from XLA's cost analysis of the step with XLA's own convolutions);
  * the input pipeline alone: augmented images/s delivered on the device, over
    an epoch of distinct batches dispatched back to back (as training runs it,
    and as the PyTorch reference times its DataLoader);
  * loop overhead: the wall time of a whole epoch (``steps`` steps through the
    same loop code as training: epoch order, donated state, metrics fetched at
    the end) over ``steps x median step time``.
Data is generated (``dataset='synthetic'``, CIFAR-shaped unless the config says
otherwise), so it runs anywhere.  Prints a table and one JSON line.

With ``--input streaming`` it reads the config's own data set (a prepared
ArrayRecord data set, e.g. ``--config.dataset=cifar10_jpeg
--config.data_dir=DIR``) through the streaming input and measures, for the
same steps: the host pipeline alone (grain: read, decode, host ops, batch),
the train step on a placed batch, the loop overhead (wall time of ``steps``
steps through the training loop's code over ``steps x step time``) and the
process's peak resident memory (RSS) after each quarter of the steps, which
stays flat when the data set does not pass through memory.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags

from jaxres import main as jaxres_main, models, sharding, train
from jaxres.data import resident
from jaxres.step import TrainState

USAGE = ('python -m jaxres.bench --config configs/NAME.py [--batch_size 128] [--steps 10] '
         '[--dtype DTYPE] [--input resident|streaming] [--config.key=value ...]')


def bench_config(config: ml_collections.ConfigDict, batch_size: int, steps: int
                 ) -> ml_collections.ConfigDict:
    """The config on generated data, with an 'epoch' of exactly ``steps`` steps."""
    config = config.copy_and_resolve_references()
    size = config.data.image_size or 32
    num_classes = 100 if '100' in str(config.dataset) else 10
    with config.unlocked():
        config.dataset = 'synthetic'
        config.synthetic.num_train = batch_size * steps
        config.synthetic.num_eval = batch_size
        config.synthetic.image_size = size
        config.synthetic.num_classes = num_classes
        config.batch_size = batch_size
        config.eval_batch_size = batch_size
        config.data.image_size = 0
    return config


def _run_times(fn: Any, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn``, each waited for."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return times


def model_flops_per_step(setup: train.TrainSetup, feed: resident.ResidentInput,
                         state: TrainState, order: jax.Array) -> float:
    """FLOPs of one train step as XLA counts them with its own convolutions.

    Counted on the step lowered with ``conv_impl='xla'`` (nothing is compiled), so
    the figure is the model's work whatever lowering runs: im2col's patch copies
    are not arithmetic and must not inflate the achieved GFLOP/s, and Winograd's
    saved multiplications show as a higher achieved rate (direct-convolution
    equivalent GFLOP/s).
    """
    xla_state = state.replace(apply_fn=models.with_lowerings(setup.model).apply)
    cost = setup.step_fn(feed.batch).lower(xla_state, feed.data, order).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get('flops', 0.0)) if cost else 0.0


def _pipeline_seconds_per_batch(setup: train.TrainSetup, feed: resident.ResidentInput,
                                order: jax.Array) -> float:
    """The input pipeline alone: gather + augment + normalise one global batch.

    Timed as a stream, like the PyTorch DataLoader it is compared with and as
    the training loop runs it: an epoch of distinct batches dispatched back to
    back, one sync at the end (a sync per batch would time the sync).
    """
    data = feed.data
    batch_fn = jax.jit(lambda d, o, s: feed.batch(s, d, o))
    step_ids = [jnp.int32(s) for s in range(setup.steps_per_epoch)]
    jax.block_until_ready(batch_fn(data, order, step_ids[0]))
    times = _run_times(lambda: [batch_fn(data, order, s) for s in step_ids],
                       max(5, 100 // len(step_ids)))
    return statistics.median(times) / len(step_ids)


def _epoch_seconds(setup: train.TrainSetup, feed: resident.ResidentInput, step_fn: Any,
                   state: TrainState) -> tuple[TrainState, float]:
    """A whole epoch through the training loop's own code path, timed on the
    second epoch: the first one warms the jit cache and the allocator."""

    def run_epoch(state: TrainState) -> TrainState:
        with jax.transfer_guard('disallow'):
            unfetched_metrics = []
            order = feed.order_fn(state.step)
            for _ in range(setup.steps_per_epoch):
                state, metrics = step_fn(state, feed.data, order)
                unfetched_metrics.append(metrics)
            jax.device_get(unfetched_metrics)
        return state

    state = run_epoch(state)
    t = time.perf_counter()
    state = run_epoch(state)
    return state, time.perf_counter() - t


def run_benchmark(config: ml_collections.ConfigDict, batch_size: int, steps: int
                  ) -> dict[str, Any]:
    """All measurements for one config; returns them as a dict."""
    from jaxres.data import datasets  # pylint: disable=g-import-not-at-top
    config = bench_config(config, batch_size, steps)
    syn = config.synthetic
    ds = datasets.load_synthetic(syn.num_train, syn.num_eval, syn.image_size, syn.num_classes)
    mesh = sharding.make_data_mesh()
    setup = train.TrainSetup.build(config, ds, mesh)
    feed = setup.resident_input(resident.to_device(ds, mesh, config.eval_batch_size,
                                                   setup.train_pp,
                                                   packed=setup.choices.packed_pixels))
    data, step_fn = feed.data, setup.step_fn(feed.batch)
    state = setup.init_state()
    order = feed.order_fn(state.step)

    t = time.perf_counter()
    compiled = step_fn.lower(state, data, order).compile()
    compile_s = time.perf_counter() - t
    flops = model_flops_per_step(setup, feed, state, order)

    # Warm-up (first execution allocates), then time single steps.
    state, _ = compiled(state, data, order)
    jax.block_until_ready(state)
    step_times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = compiled(state, data, order)
        jax.block_until_ready(metrics)
        step_times.append(time.perf_counter() - t)
    step_s = statistics.median(step_times)

    pipe_s = _pipeline_seconds_per_batch(setup, feed, order)
    state, epoch_s = _epoch_seconds(setup, feed, step_fn, state)

    return {
        'backend': jax.default_backend(),
        'conv': setup.choices.conv,
        'devices': jax.device_count(),
        'batch_size': batch_size,
        'dtype': config.dtype,
        'compile_s': compile_s,
        'step_s_median': step_s,
        'train_images_per_s': batch_size / step_s,
        'gflops_per_step': flops / 1e9,
        'achieved_gflop_per_s': flops / 1e9 / step_s,
        'pipeline_images_per_s': batch_size / pipe_s,
        'epoch_steps': setup.steps_per_epoch,
        'epoch_s': epoch_s,
        'loop_overhead': epoch_s / (setup.steps_per_epoch * step_s),
    }


def _peak_rss_mb() -> float:
    """Peak resident memory of this process and of its largest child (grain workers)."""
    import resource  # pylint: disable=g-import-not-at-top
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024  # Linux reports KiB


def run_streaming_benchmark(config: ml_collections.ConfigDict, steps: int) -> dict[str, Any]:
    """The streaming input on the config's own data set: host pipeline, step, loop, RSS."""
    from jaxres.data import datasets  # pylint: disable=g-import-not-at-top
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.input.kind = 'streaming'
    info = datasets.describe(config)
    mesh = sharding.make_data_mesh()
    setup = train.TrainSetup.build(config, info, mesh,
                                  sample_images=train.stem_sample(config, info))
    total = 3 * steps + 2  # pipeline alone, then one warm-up step and the timed loop
    train_input = setup.streaming_input(info, total)
    state = setup.init_state()
    step_fn = setup.step_fn(train_input.batch)

    next(train_input.iterator)  # starts the workers
    t = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(train_input.step_args(0, state))
    pipe_s = (time.perf_counter() - t) / steps

    (batch,) = train_input.step_args(0, state)
    t = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    state, _ = compiled(state, batch)
    step_times = []
    for _ in range(steps):
        (batch,) = train_input.step_args(0, state)
        jax.block_until_ready(batch)
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        step_times.append(time.perf_counter() - t)
    step_s = statistics.median(step_times)

    rss = [_peak_rss_mb()]
    t = time.perf_counter()
    with jax.transfer_guard('disallow'):  # as the training loop runs it
        unfetched_metrics = []
        for i in range(steps):
            state, m = compiled(state, *train_input.step_args(i, state))
            unfetched_metrics.append(m)
            if (i + 1) % max(1, steps // 4) == 0:
                rss.append(_peak_rss_mb())
        jax.device_get(unfetched_metrics)
    loop_s = time.perf_counter() - t
    train_input.close()
    batch_size = config.batch_size
    return {
        'input': 'streaming', 'dataset': config.dataset, 'workers': config.input.workers,
        'backend': jax.default_backend(), 'devices': jax.device_count(),
        'batch_size': batch_size, 'dtype': config.dtype, 'compile_s': compile_s,
        'pipeline_images_per_s': batch_size / pipe_s,
        'step_s_median': step_s, 'train_images_per_s': batch_size / step_s,
        'loop_steps': steps, 'loop_s': loop_s, 'loop_overhead': loop_s / (steps * step_s),
        'peak_rss_mb': [round(r) for r in rss],
        'train_bytes_gb': (info.train_bytes or 0) / 2**30,
    }


def format_streaming_table(r: dict[str, Any]) -> str:
    rows = [
        ('data set / workers', f"{r['dataset']} ({r['train_bytes_gb']:.2f} GB as pixels) / "
                               f"{r['workers']}"),
        ('backend / devices', f"{r['backend']} x {r['devices']}"),
        ('batch / dtype', f"{r['batch_size']} / {r['dtype']}"),
        ('host pipeline images/s', f"{r['pipeline_images_per_s']:,.0f}"),
        ('train step (median)', f"{r['step_s_median'] * 1e3:.1f} ms "
                                f"({r['train_images_per_s']:.1f} images/s)"),
        ('loop / (steps x step)', f"{r['loop_overhead']:.3f} ({r['loop_steps']} steps, "
                                  f"{r['loop_s']:.2f} s)"),
        ('peak RSS MB (each quarter)', ' '.join(str(x) for x in r['peak_rss_mb'])),
    ]
    width = max(len(k) for k, _ in rows)
    return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def format_table(r: dict[str, Any]) -> str:
    rows = [
        ('backend / devices', f"{r['backend']} x {r['devices']}"),
        ('batch / dtype', f"{r['batch_size']} / {r['dtype']}"),
        ('compile time', f"{r['compile_s']:.1f} s"),
        ('train step (median)', f"{r['step_s_median'] * 1e3:.1f} ms"),
        ('train images/s', f"{r['train_images_per_s']:.1f}"),
        ('achieved GFLOP/s', f"{r['achieved_gflop_per_s']:.1f} "
                             f"({r['gflops_per_step']:.1f} GFLOP/step)"),
        ('input pipeline images/s', f"{r['pipeline_images_per_s']:,.0f}"),
        ('epoch / (steps x step)', f"{r['loop_overhead']:.3f} ({r['epoch_steps']} steps, "
                                   f"{r['epoch_s']:.2f} s)"),
    ]
    width = max(len(k) for k, _ in rows)
    return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def define_flags(flag_values: flags.FlagValues, argv: list[str]) -> None:
    """The benchmark's flags; ``--config`` is launch.py's (overrides read from ``argv``)."""
    jaxres_main.define_config_flag(flag_values, argv)
    flags.DEFINE_integer('batch_size', 128, 'Global batch size (resident input).',
                         flag_values=flag_values)
    flags.DEFINE_integer('steps', 10, 'Steps timed; resident input: the steps of an epoch.',
                         flag_values=flag_values)
    flags.DEFINE_string('dtype', None, 'Overrides config.dtype.', flag_values=flag_values)
    flags.DEFINE_enum('input', 'resident', ['resident', 'streaming'],
                      "streaming: the config's own data set through grain.",
                      flag_values=flag_values)
    flags.mark_flags_as_required(['config'], flag_values=flag_values)


def parse_command_line(argv: list[str]) -> tuple[flags.FlagValues, ml_collections.ConfigDict]:
    """The flags and the config (with its overrides and ``--dtype``) of a command
    line (``argv`` without the program name); a bad flag exits with one 'error:' line."""
    argv = ['jaxres.bench', *argv]
    flag_values = flags.FlagValues()
    define_flags(flag_values, argv)
    jaxres_main.parse_flags(flag_values, argv, USAGE)
    config = jaxres_main.parsed_config(flag_values)
    if flag_values.dtype:
        config.dtype = flag_values.dtype
    return flag_values, config


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if {'-h', '--help'} & set(argv):
        flag_values = flags.FlagValues()
        define_flags(flag_values, ['jaxres.bench'])
        print(f'{__doc__.strip()}\n\nFlags:\n{flag_values.get_help()}')
        return 0
    flag_values, config = parse_command_line(argv)
    if flag_values.input == 'streaming':
        result = run_streaming_benchmark(config, flag_values.steps)
        table = format_streaming_table(result)
    else:
        result = run_benchmark(config, flag_values.batch_size, flag_values.steps)
        table = format_table(result)
    overrides = [arg for arg in argv if arg.startswith('--config.')]
    result['config'] = ' '.join([flag_values['config'].config_filename] + overrides)
    print(table)
    print(json.dumps(result))
    return 0

