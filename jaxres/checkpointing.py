"""Orbax checkpoints in ``WORKDIR/checkpoints``: save, keep, find, check and restore.

Each checkpoint holds the train state (step, params, batch_stats, opt_state)
and a JSON ``meta`` item (the resolved config and the eval metrics at that
step).  The last ``checkpoint.max_to_keep`` are kept plus the best one by
``checkpoint.best_metric``.  Orbax writes into a temporary directory and
renames it when complete, so a crash mid-save never leaves a checkpoint that
looks whole.  Restoring goes through an abstract target whose leaves carry the
*current* shardings, so a checkpoint written on 8 devices restores onto 1.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any, Callable

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from jaxres import config_validation

if TYPE_CHECKING:
    from jaxres.data import datasets


class CheckpointError(ValueError):
    """A checkpoint that cannot be found or restored; the message says what to do."""


# The metrics each checkpoint records, and whether higher is better.
BEST_METRICS = {'eval_accuracy': True, 'eval_top5_accuracy': True, 'eval_loss': False}


def higher_is_better(metric: str) -> bool:
    """Direction of ``checkpoint.best_metric``; one clear error for an unknown name."""
    if metric not in BEST_METRICS:
        raise CheckpointError(f'config.checkpoint.best_metric={metric!r} is not recorded; '
                              f'choose one of {list(BEST_METRICS)}.')
    return BEST_METRICS[metric]


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), 'checkpoints')


class _CheckpointManager(ocp.CheckpointManager):
    """Orbax's manager, kept off JAX's preemption sync point (the loop polls it).

    Orbax's ``save`` and its async finalize thread call ``reached_preemption``
    with the saved step, later than the loop's own calls; each call moves JAX's
    per-process call counter, so a stale one could place the agreed sync point
    behind every process and the preemption would never be acted on.
    """

    def reached_preemption(self, step: int) -> bool:
        del step
        return False


def create_manager(directory: str, config: ml_collections.ConfigDict | None = None, *,
                   read_only: bool = False) -> ocp.CheckpointManager:
    """A manager keeping the last k checkpoints and the best by the chosen metric."""
    ckpt = config.checkpoint if config is not None else None
    metric = ckpt.best_metric if ckpt is not None else 'eval_accuracy'
    policy = None
    if ckpt is not None and not read_only:
        # BestN keeps the top of an ascending sort; reversed, that is the lowest loss.
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=ckpt.max_to_keep),
            pp.BestN(get_metric_fn=lambda m: m[metric], n=1,
                     reverse=not higher_is_better(metric),
                     keep_checkpoints_without_metrics=False),
        ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        enable_async_checkpointing=bool(ckpt.async_save) if ckpt is not None else False,
        read_only=read_only,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
    )
    return _CheckpointManager(directory, options=options, item_names=('state', 'meta', 'data'))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict,
         metrics: dict[str, float] | None = None, force: bool = True,
         data_iterator: Any = None) -> None:
    """Starts an (async) save; ``wait(manager)`` completes it.

    ``data_iterator`` (streaming input): grain's iterator, whose position is saved
    in the same checkpoint (one small JSON per process), so a resumed run reads
    exactly the batches the interrupted one would have.
    """
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if data_iterator is not None:
        items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
        manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)
    except OSError as e:
        raise _write_error(manager, step, e) from None


def wait(manager: ocp.CheckpointManager) -> None:
    """Blocks until async saves are complete; write failures become CheckpointError."""
    try:
        manager.wait_until_finished()
    except OSError as e:
        raise _write_error(manager, None, e) from None


def _write_error(manager: ocp.CheckpointManager, step: int | None, e: OSError
                 ) -> 'CheckpointError':
    # Orbax writes into a temporary directory and renames it only when complete,
    # so a failed write leaves the earlier checkpoints as they were.
    kept = [s for s in manager.all_steps() if s != step]
    return CheckpointError(
        f'could not write checkpoint{"" if step is None else " step " + str(step)} in '
        f'{manager.directory}: {e.strerror or e}. The earlier checkpoints '
        f'({sorted(kept) or "none"}) are intact. Free disk space or fix permissions, then '
        're-run the same command to resume.')


def restore_latest_good(manager: ocp.CheckpointManager, abstract_state: Any,
                        check_meta: Callable[[dict], None] | None = None
                        ) -> tuple[int | None, Any]:
    """Restores the newest checkpoint that reads back whole; warns and falls back
    past corrupted or truncated ones.  Returns (None, None) when there are none.

    ``check_meta`` may raise CheckpointError (e.g. a different model): that is a
    user mistake, not corruption, and is not skipped.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    bad = []
    for step in steps:
        state = None
        try:
            meta = read_meta(manager, step)
            if check_meta is not None:
                check_meta(meta)
            state = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state)))['state']
        except CheckpointError:  # one meta file, read alike by every process: all raise
            raise
        except Exception as e:  # pylint: disable=broad-except
            logging.warning('checkpoint step %d in %s is corrupted (%s: %s); trying an '
                            'earlier one.', step, manager.directory, type(e).__name__,
                            str(e)[:300])
        if not _on_every_process(state is not None):
            if state is not None:
                logging.warning('checkpoint step %d in %s failed to read on another '
                                'process; trying an earlier one.', step, manager.directory)
            bad.append(step)
            continue
        _quarantine(manager, bad)
        return step, state
    if steps:
        raise CheckpointError(
            f'every checkpoint in {manager.directory} ({steps}) is unreadable. Move the '
            'directory away to start afresh.')
    return None, None


def check_resumable(meta: dict, config: ml_collections.ConfigDict, ckpt_dir: str,
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
        raise CheckpointError(
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
        raise CheckpointError(
            f'dataset {info.name!r} changed since the checkpoints in {ckpt_dir} were written ('
            + '; '.join(changed) + '). Restore the data set the run started with, or train '
            'on the new one in a new --workdir (--config.init_from=' + ckpt_dir
            + ' to start from these weights).')


def _short(names: Any) -> str:
    names = list(names)
    return repr(names) if len(names) <= 4 else f'[{names[0]!r}, ... {len(names)} names]'


def restore_data_iterator(manager: ocp.CheckpointManager, step: int, iterator: Any) -> bool:
    """Sets grain's ``iterator`` to its position saved at ``step``.

    False (the iterator untouched) when the checkpoint has no position for this
    process layout (a resident run's, or another host count) or it does not read.
    """
    path = os.path.join(str(manager.directory), str(step), 'data',
                        f'process_{jax.process_index()}-of-{jax.process_count()}.json')
    if not os.path.exists(path):
        return False
    try:
        manager.restore(step, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(iterator)))
    except Exception as e:  # pylint: disable=broad-except
        logging.warning('the data position saved at step %d does not read (%s: %s).', step,
                        type(e).__name__, str(e)[:200])
        return False
    return True


def _on_every_process(ok: bool) -> bool:
    """Whether ``ok`` holds on all processes (one tiny collective when there are several).

    Every process must resume from the same step and quarantine the same ones,
    even when a read fails on one host only (a flaky disk, a file only it reads).
    """
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def best_step(manager: ocp.CheckpointManager, metric: str) -> int | None:
    """The kept step with the best ``metric`` (highest; lowest for a loss), or None."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    best = None
    for step in sorted(manager.all_steps()):
        meta = read_meta(manager, step)
        value = (meta.get('metrics') or {}).get(metric)
        if value is not None and (best is None or sign * value > best[0]):
            best = (sign * value, step)
    return None if best is None else best[1]


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def _quarantine(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Moves corrupted checkpoints aside (never deleted) so training can redo those steps."""
    if not steps:
        return
    if jax.process_index() == 0:
        aside = os.path.join(os.path.dirname(str(manager.directory)), 'corrupted_checkpoints')
        os.makedirs(aside, exist_ok=True)
        for step in steps:
            target = os.path.join(aside, str(step))
            suffix = 0
            while os.path.exists(target):
                suffix += 1
                target = os.path.join(aside, f'{step}.{suffix}')
            os.replace(os.path.join(str(manager.directory), str(step)), target)
            logging.warning('moved corrupted checkpoint step %d to %s', step, target)
    if jax.process_count() > 1:  # the others must not list the directory before the move
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        multihost_utils.sync_global_devices('jaxres_quarantine_checkpoints')
    manager.reload()


def resolve_step(manager: ocp.CheckpointManager, which: str | int, metric: str) -> int:
    """'latest' | 'best' | a step number -> an existing step, or CheckpointError."""
    steps = manager.all_steps()
    if not steps:
        raise CheckpointError(f'no checkpoint in {manager.directory}. Train first '
                              '(--mode=train) or point --workdir at a trained run.')
    which = str(which)
    if which == 'latest':
        return manager.latest_step()
    if which == 'best':
        step = best_step(manager, metric)
        if step is None:
            raise CheckpointError(f'no checkpoint in {manager.directory} recorded '
                                  f'{metric!r}; use --config.eval.checkpoint=latest.')
        return step
    if which.isdigit() and int(which) in steps:
        return int(which)
    raise CheckpointError(f'checkpoint {which!r} not found in {manager.directory}; '
                          f'available steps: {sorted(steps)} (or latest / best).')


def locate(path_or_which: str, workdir: str) -> tuple[str, str]:
    """(checkpoints directory, 'latest' | 'best' | step) for ``eval.checkpoint``-style values.

    A path may be a workdir (holding ``checkpoints/``), a checkpoints directory
    (e.g. copied from another machine), or one step directory inside it; anything
    else is 'latest' / 'best' / a step of ``WORKDIR/checkpoints``.
    """
    which = str(path_or_which)
    if not os.path.isdir(which):
        return checkpoint_dir(workdir), which
    path = os.path.abspath(which)
    if os.path.isdir(os.path.join(path, 'checkpoints')):
        return os.path.join(path, 'checkpoints'), 'latest'
    base = os.path.basename(path)
    if base.isdigit() and os.path.isdir(os.path.join(path, 'state')):
        return os.path.dirname(path), base
    return path, 'latest'


def open_checkpoint(path_or_which: str, workdir: str, metric: str
                    ) -> tuple[ocp.CheckpointManager, int]:
    """A read-only manager and the resolved step, or one CheckpointError saying what to do."""
    directory, which = locate(path_or_which, workdir)
    if not os.path.isdir(directory):
        raise CheckpointError(
            f'no checkpoint directory {directory}. Train first (--mode=train with this '
            '--workdir) or pass --config.eval.checkpoint=PATH.')
    manager = create_manager(directory, read_only=True)
    return manager, resolve_step(manager, which, metric)


def restore_variables(manager: ocp.CheckpointManager, step: int,
                      sharding: jax.sharding.Sharding, use_ema: bool = False
                      ) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` of a checkpoint, in the shapes it was saved with
    (with ``use_ema``, those of the weights' EMA the run kept, ``optimizer.ema_decay``).

    The target comes from the checkpoint's own metadata, so this works whatever
    the current model (e.g. a different class count); the optimizer state is
    not read.
    """
    path = os.path.join(str(manager.directory), str(step), 'state')
    try:
        tree = ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree
    except (FileNotFoundError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f'cannot read the checkpoint at {path} ({type(e).__name__}: '
                              f'{str(e)[:200]}).') from None
    if 'params' not in tree:
        raise CheckpointError(f'{path} is not a jaxres train state (no params).')
    if use_ema and not tree.get('ema'):
        raise CheckpointError(f'{path} holds no EMA of the weights (trained without '
                              'optimizer.ema_decay): evaluate its weights with '
                              '--config.eval.ema=False.')
    source = tree['ema'] if use_ema else tree
    target = {k: abstract_like(source.get(k) or {}, sharding) for k in ('params', 'batch_stats')}
    if use_ema:
        target = {'ema': target}
    # Explicit restore args: each array lands on the target's (current) sharding,
    # not on the device layout recorded at save time.
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        target, restore_args=restore_args, partial_restore=True)))['state']
    if use_ema:
        restored = restored['ema']
    return {k: restored.get(k) or {} for k in ('params', 'batch_stats')}


def restore_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
    """Restores the train state into ``abstract_state``'s structure and shardings."""
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f'checkpoint step {step} in {manager.directory} does not match this model/'
            f'optimizer ({type(e).__name__}: {str(e)[:300]}). Use a fresh --workdir, or '
            '--config.init_from to start from its weights on purpose.') from None
    return restored['state']


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """ShapeDtypeStructs of ``tree`` carrying ``sharding`` (a restore target)."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
