"""Orbax checkpoints in ``WORKDIR/checkpoints``: save, keep, find and restore.

Each checkpoint holds the train state (step, params, batch_stats, opt_state)
and a JSON ``meta`` item (the resolved config and the eval metrics at that
step).  The last ``checkpoint.max_to_keep`` are kept plus the best one by
``checkpoint.best_metric``.  Orbax writes into a temporary directory and
renames it when complete, so a crash mid-save never leaves a checkpoint that
looks whole.  Restoring goes through an abstract target whose leaves carry the
*current* shardings, so a checkpoint written on 8 devices restores onto 1.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp


class CheckpointError(ValueError):
    """A checkpoint that cannot be found or restored; the message says what to do."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), 'checkpoints')


def create_manager(directory: str, config: ml_collections.ConfigDict | None = None, *,
                   read_only: bool = False) -> ocp.CheckpointManager:
    """A manager keeping the last k checkpoints and the best by the chosen metric."""
    ckpt = config.checkpoint if config is not None else None
    metric = ckpt.best_metric if ckpt is not None else 'eval_accuracy'
    policy = None
    if ckpt is not None and not read_only:
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=ckpt.max_to_keep),
            pp.BestN(get_metric_fn=lambda m: m[metric], n=1,
                     keep_checkpoints_without_metrics=False),
        ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        enable_async_checkpointing=bool(ckpt.async_save) if ckpt is not None else False,
        read_only=read_only,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
    )
    return ocp.CheckpointManager(directory, options=options,
                                 item_names=('state', 'meta'))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict,
         metrics: dict[str, float] | None = None, force: bool = True) -> None:
    """Starts an (async) save; ``manager.wait_until_finished()`` completes it."""
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)),
                 metrics=metrics, force=force)


def best_step(manager: ocp.CheckpointManager, metric: str) -> int | None:
    """The kept step with the highest ``metric``, or None if none recorded it."""
    best = None
    for step in manager.all_steps():
        meta = read_meta(manager, step)
        value = (meta.get('metrics') or {}).get(metric)
        if value is not None and (best is None or value > best[0]):
            best = (value, step)
    return None if best is None else best[1]


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


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
