"""Entry points behind ``launch.py``: one function per ``--mode``, and the command
line's config loading (``--config FILE --config.key=value``, shared with
``jaxres.bench``)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from jaxres import checkpointing, config_validation, console, inference, preemption, safe_io
from jaxres import sharding, train
from jaxres.data import datasets, inputs
from jaxres.tools import summary

# Config keys that moved, for a clear message to a user of an older command line.
MOVED_KEYS = {'model.conv_impl': 'backend.conv'}
# The augmentation keys the preprocessing specs replaced -> the op that does it now.
SPEC_OPS = {
    **dict.fromkeys(('crop_padding', 'padding_mode'), "crop(padding, mode='constant'|'reflect')"),
    **dict.fromkeys(('hflip', 'flip_mode'), "flip_lr(mode='random'|'alternate')"),
    'vflip': 'flip_ud',
    **dict.fromkeys(('rotation', 'width_shift', 'height_shift', 'interpolation', 'fill'),
                    'affine(rotation, width_shift, height_shift, interpolation, fill)'),
    **dict.fromkeys(('brightness', 'contrast', 'saturation', 'hue'),
                    'color_jitter(brightness, contrast, saturation, hue)'),
    **dict.fromkeys(('random_resized_crop', 'crop_scale', 'crop_ratio'),
                    'random_resized_crop(size, scale, ratio)'),
    'cutout': 'cutout(size)', 'mixup': 'mixup(alpha)', 'cutmix': 'cutmix(alpha)',
    'augment_order': 'the order of the ops in the spec',
}
LAUNCH_USAGE = ('python launch.py --config configs/NAME.py --workdir DIR '
                '[--mode train|eval|predict|export|summary] [--config.key=value ...]')

USER_ERRORS = (config_validation.ConfigError, datasets.DataError,
               checkpointing.CheckpointError, train.NonFiniteLossError)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Restores ``config.eval.checkpoint`` and evaluates it; writes eval_results.json.

    ``eval.checkpoint`` is 'latest', 'best', a step, or a path to a workdir, a
    checkpoints directory (or one step directory inside it) copied from another
    machine; it restores onto whatever devices this machine has.  Only the
    model's variables are read (no optimizer state) and only the eval split.
    """
    config_validation.validate(config)
    split = config.eval.split or ('validation' if config.validation_size > 0
                                  else config.eval_split)
    if config.eval.split:
        if split == 'validation' and config.validation_size <= 0:
            raise config_validation.ConfigError(
                'config.eval.split=validation needs config.validation_size > 0 (the '
                'validation split is held out of the training split).')
        config = config.copy_and_resolve_references()
        with config.unlocked():
            if split != 'validation':  # a stored split: the whole test set, say
                config.eval_split = split
                config.validation_size = 0
    inference.checkpoint_meta(config, workdir)  # none there: say so before reading data
    mesh = sharding.make_data_mesh()
    batches, class_names, image_shape, split = inputs.eval_batches(config, mesh)
    restored = inference.load_for_inference(config, workdir, image_shape, mesh=mesh)
    evaluator = restored.evaluator(mesh, class_names)
    results = dict(evaluator.evaluate(restored.variables, batches), step=restored.step,
                   split=split, checkpoint=restored.checkpoint)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        safe_io.write_json(os.path.join(workdir, 'eval_results.json'), results)
    return results


def summarize(config: ml_collections.ConfigDict) -> str:
    config_validation.validate(config)
    if config.dataset in datasets.KNOWN_SHAPES:
        num_classes, shape = datasets.KNOWN_SHAPES[config.dataset]
    else:
        ds = datasets.load_dataset(config)
        num_classes, shape = ds.num_classes, ds.image_shape
    return summary.model_summary(config, num_classes, shape)


def explain_flag_error(argv: list[str], error: Exception, usage: str = LAUNCH_USAGE
                       ) -> str:
    """One line for a bad flag: names the override and where valid keys are listed."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]  # ml_collections wraps a KeyError in an AttributeError
    text = ' '.join(str(error.args[0] if error.args else error).split())
    if len(text) > 1 and text[0] == text[-1] and text[0] in '"\'':  # a KeyError's repr
        text = text[1:-1]
    for arg in argv[1:]:
        if arg.startswith('--config.'):
            key = arg[len('--config.'):].split('=', 1)[0]
            if key in MOVED_KEYS:
                return (f'config.{key} is now config.{MOVED_KEYS[key]} (the same values; '
                        'it no longer counts as part of the model): use '
                        f'--config.{MOVED_KEYS[key]}={arg.split("=", 1)[-1]}.')
            if key.startswith('data.') and key[len('data.'):] in SPEC_OPS:
                return (f'config.{key} is now {SPEC_OPS[key[len("data."):]]} in the spec '
                        "config.data.train_pp, e.g. --config.data.train_pp='crop(4)|flip_lr|"
                        "normalize' (configs/default.py lists the ops).")
            if text.startswith(f'flag {arg}: '):  # the key exists; its value does not parse
                return (f'invalid value in {arg!r} ({text.removeprefix(f"flag {arg}: ")}): give a '
                        f'value of the type of config.{key}\'s default in configs/default.py.')
            if key.split('.')[-1] in text or key in text:
                return (f'unknown or invalid config key in {arg!r} ({text}). Check its spelling '
                        'against configs/default.py, which lists every key.')
    return f'{text}. Usage: {usage}'


def define_config_flag(flag_values: flags.FlagValues, argv: Sequence[str] | None = None
                       ) -> None:
    """``--config FILE``, with ml_collections' ``--config.key=value`` overrides.

    ``argv`` is the command line the overrides are read from (default ``sys.argv``).
    """
    config_flags.DEFINE_config_file('config', None, 'Path to a config file in configs/.',
                                    flag_values=flag_values, lock_config=True,
                                    sys_argv=None if argv is None else list(argv))


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str],
                usage: str = LAUNCH_USAGE) -> list[str]:
    """absl parsing, with bad flags and config overrides as one 'error:' line."""
    try:
        return flag_values(list(argv))
    except Exception as e:  # flags.Error, or ml_collections' KeyError/AttributeError/TypeError
        sys.exit('error: ' + explain_flag_error(list(argv), e, usage))


def parsed_config(flag_values: flags.FlagValues) -> ml_collections.ConfigDict:
    """The ``--config`` after parsing; a file that does not load is one 'error:' line."""
    try:
        config = flag_values.config
        config.keys()  # a config file that failed to load raises on first use
    except OSError as e:  # config_flags loads the file lazily
        sys.exit('error: cannot load --config: ' + str(e).strip().splitlines()[-1].strip())
    return config


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config file at ``path`` with ``--config.key=value`` ``overrides``, parsed
    as the command line's ``--config`` is (for scripts and tests)."""
    argv = ['load_config', f'--config={path}', *overrides]
    flag_values = flags.FlagValues()
    define_config_flag(flag_values, argv)
    parse_flags(flag_values, argv)
    return parsed_config(flag_values)


def run(config: ml_collections.ConfigDict, workdir: str, mode: str) -> int:
    """Runs one mode; user mistakes become one 'error:' line and exit status 2."""
    console.quiet_library_logs()
    try:
        sharding.maybe_initialize_distributed(config)
        if mode == 'train':
            results = train.train_and_evaluate(config, workdir)
            _print_results(results, workdir)
            _print_closing_summary(results, workdir, next_step(config, workdir))
        elif mode == 'eval':
            results = evaluate_checkpoint(config, workdir)
            _print_results(results, workdir)
        elif mode == 'summary':
            print(summarize(config))
        elif mode == 'predict':
            from jaxres import predict  # pylint: disable=g-import-not-at-top
            print(predict.predict_to_file(config, workdir))
        elif mode == 'export':
            from jaxres import export  # pylint: disable=g-import-not-at-top
            print(export.export_model(config, workdir))
        else:
            raise config_validation.ConfigError(
                f'--mode={mode!r} is not valid; choose train, eval, predict, export or '
                'summary.')
    except USER_ERRORS as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except preemption.Preempted as e:
        print(str(e), file=sys.stderr)
        return preemption.PREEMPTED_EXIT_CODE
    return 0


def next_step(config: ml_collections.ConfigDict, workdir: str) -> str:
    """What to run after training: CIFAR-10 after the digits, else use the model."""
    if 'cifar' not in str(config.dataset):
        return ('Next: train a ResNet-18 on CIFAR-10 (TFDS downloads it; offline, first run\n'
                '  python -m jaxres.prepare_data --source CIFAR_ARCHIVE_OR_IMAGE_FOLDER '
                '--data_dir ~/tensorflow_datasets):\n'
                '  python launch.py --config configs/cifar10_resnet18.py --workdir runs/r18')
    return ('Next: label new images with this checkpoint (the same --config and overrides):\n'
            f'  python launch.py --config CONFIG --workdir {workdir} --mode=predict '
            '--config.predict.input=PATH --config.predict.output=OUT.npy')


def _print_closing_summary(results: dict, workdir: str, next_hint: str) -> None:
    """Where everything of the run is, its plots, and what to run next."""
    if jax.process_index() != 0:
        return
    from jaxres.tools import plot  # pylint: disable=g-import-not-at-top
    d = os.path.abspath(workdir)
    try:
        plots = plot.plot_workdir(d)
    except Exception as e:  # pylint: disable=broad-except  # plots never fail a run
        plots = [f'(not written: {e})']
    print(f"\nDone in {results.get('wall_time_s', 0):.0f} s. Workdir {d}:\n"
          f"  checkpoints   {os.path.join(d, 'checkpoints')}\n"
          f"  metrics       {os.path.join(d, 'metrics.jsonl')} "
          f"(TensorBoard: tensorboard --logdir {d})\n"
          f"  results       {os.path.join(d, 'eval_results.json')}\n"
          f"  plots         {', '.join(plots)}\n" + next_hint)


def _print_results(results: dict, workdir: str) -> None:
    if jax.process_index() != 0:
        return
    print(f"step {results['step']}: {results['split']} accuracy {results['accuracy']:.4f}, "
          f"top-5 {results['top5_accuracy']:.4f}, loss {results['loss']:.4f} on "
          f"{results['num_examples']} examples. Results: "
          f"{os.path.join(os.path.abspath(workdir), 'eval_results.json')}")
    logging.info('eval results: %s', {k: v for k, v in results.items()
                                       if k not in ('confusion_matrix', 'per_class_accuracy')})
