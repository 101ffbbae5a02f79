"""``config.init_from``: start training from other weights (fine-tuning).

Two sources:

- a torchvision ResNet-18/34/50 ``state_dict`` file (``.pth`` / ``.pt``), for a
  jaxres model in the torchvision layout (``model.stem='imagenet'``,
  ``model.depth`` 18/34/50).  Read with ``torch.load(weights_only=True)``, which
  executes no code from the file (torch is an optional extra:
  ``pip install 'jaxres[torch]'``).  Converted with an explicit name map:
  conv kernels OIHW -> HWIO, the Linear weight transposed, BatchNorm
  weight/bias -> scale/bias and running_mean/var -> ``batch_stats`` mean/var.
- a jaxres workdir, checkpoints directory or step directory: its latest (or
  that step's) params and BatchNorm statistics.

Every tensor whose name and shape match is loaded; the classifier ``head`` is
kept freshly initialised when the class count differs.  A torchvision file that
does not fit the model is refused with the list of mismatches.  The optimizer
state starts fresh and the step at 0: this is a new run, not a resume.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from jaxres import checkpointing, sharding

TORCH_SUFFIXES = ('.pth', '.pt')
HEAD = 'head'  # the jaxres classifier; torchvision's ``fc``

# torchvision module -> jaxres module, outside the residual stages.
_TOP_MODULES = {'conv1': 'stem/conv', 'bn1': 'stem/bn', 'fc': HEAD}
# Inside a block (torchvision layer{i}.{j}.X -> jaxres stage{i}_block{j+1}/Y).
_BLOCK_MODULES = {'conv1': 'conv1', 'bn1': 'bn1', 'conv2': 'conv2', 'bn2': 'bn2',
                  'conv3': 'conv3', 'bn3': 'bn3', 'downsample.0': 'shortcut/conv',
                  'downsample.1': 'shortcut/bn'}
# torchvision parameter name -> (jaxres collection, variable name).
_CONV = {'weight': ('params', 'kernel')}
_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
       'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}
_LINEAR = {'weight': ('params', 'kernel'), 'bias': ('params', 'bias')}


class FinetuneError(checkpointing.CheckpointError):
    """``init_from`` weights that cannot be read or do not fit the model."""


# --------------------------------------------------------------------------- #
# torchvision state_dict -> jaxres variables (pure)
# --------------------------------------------------------------------------- #
def torch_module_path(module: str) -> str | None:
    """'layer2.0.downsample.1' -> 'stage2_block1/shortcut/bn'; None if unknown."""
    if module in _TOP_MODULES:
        return _TOP_MODULES[module]
    m = re.fullmatch(r'layer(\d+)\.(\d+)\.(.+)', module)
    if m is None or m[3] not in _BLOCK_MODULES:
        return None
    # torchvision counts blocks from 0, jaxres from 1.
    return f'stage{m[1]}_block{int(m[2]) + 1}/{_BLOCK_MODULES[m[3]]}'


def torch_key_to_jaxres(key: str) -> tuple[str, tuple[str, ...]] | None:
    """'layer1.0.bn1.running_var' -> ('batch_stats', ('stage1_block1', 'bn1', 'var'))."""
    module, _, name = key.rpartition('.')
    path = torch_module_path(module)
    if path is None:
        return None
    last = path.rsplit('/', 1)[-1]
    kinds = _LINEAR if path == HEAD else _BN if last.startswith('bn') else _CONV
    if name not in kinds:
        return None
    collection, var = kinds[name]
    return collection, tuple(path.split('/')) + (var,)


def torch_to_flax_array(value: np.ndarray) -> np.ndarray:
    """Conv OIHW -> HWIO; Linear (out, in) -> (in, out); vectors unchanged."""
    if value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2:
        return np.transpose(value)
    return value


def convert_torchvision(state_dict: Mapping[str, np.ndarray]
                        ) -> tuple[dict[str, dict[tuple[str, ...], np.ndarray]], list[str]]:
    """{collection: {path: array}} in jaxres layout, and the keys it could not place."""
    out: dict[str, dict[tuple[str, ...], np.ndarray]] = {'params': {}, 'batch_stats': {}}
    unknown = []
    for key, value in state_dict.items():
        if key.endswith('num_batches_tracked'):
            continue  # a counter PyTorch keeps; no jaxres counterpart
        target = torch_key_to_jaxres(key)
        if target is None:
            unknown.append(key)
            continue
        collection, path = target
        out[collection][path] = torch_to_flax_array(np.asarray(value, np.float32))
    return out, unknown


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """A ``state_dict`` as NumPy arrays, read without executing code from the file."""
    try:
        import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
        raise FinetuneError(f'config.init_from={path} is a PyTorch file, but torch is not '
                            "installed: pip install 'jaxres[torch]' (or torch).") from None
    try:
        obj = torch.load(path, weights_only=True, map_location='cpu')
    except Exception as e:  # pylint: disable=broad-except  # torch raises many kinds
        raise FinetuneError(f'{path} cannot be read as a PyTorch state_dict with '
                            f'weights_only=True ({type(e).__name__}: {str(e)[:300]}).') from None
    if isinstance(obj, Mapping) and isinstance(obj.get('state_dict'), Mapping):
        obj = obj['state_dict']  # training scripts often wrap it
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise FinetuneError(f'{path} holds a {type(obj).__name__}, not a state_dict '
                            '(a mapping of parameter names to tensors).')
    arrays = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            # 'module.' is what DataParallel puts in front of every name.
            arrays[key.removeprefix('module.')] = value.detach().float().cpu().numpy()
    return arrays


# --------------------------------------------------------------------------- #
# Merging into the freshly initialised model (pure)
# --------------------------------------------------------------------------- #
def merge(target: Mapping[tuple[str, ...], Any], source: Mapping[tuple[str, ...], Any]
          ) -> tuple[dict[tuple[str, ...], Any], list[str], list[str]]:
    """Source leaves where name and shape match, target leaves elsewhere.

    Returns (merged, loaded names, problems); a head of another shape (another
    class count) is kept from the target and is not a problem.
    """
    merged, loaded, problems = {}, [], []
    for path, leaf in target.items():
        name = '/'.join(path)
        src = source.get(path)
        if src is not None and tuple(np.shape(src)) == tuple(leaf.shape):
            merged[path] = src
            loaded.append(name)
            continue
        merged[path] = leaf
        if src is None:
            problems.append(f'{name}: missing from the weights')
        elif path[0] != HEAD:
            problems.append(f'{name}: {tuple(np.shape(src))} in the weights, '
                            f'{tuple(leaf.shape)} in the model')
    problems += [f'{"/".join(p)}: in the weights, not in the model'
                 for p in source if p not in target]
    return merged, loaded, problems


# --------------------------------------------------------------------------- #
# Entry point used by train.train_and_evaluate
# --------------------------------------------------------------------------- #
def init_from(state: Any, path: str, mesh: jax.sharding.Mesh,
              best_metric: str = 'eval_accuracy') -> Any:
    """``state`` (freshly initialised) with the weights at ``path`` loaded into it
    (replicated over ``mesh``); its optimizer state starts afresh."""
    path = os.path.expanduser(str(path))
    sources, strict = read_weights(path, mesh, best_metric)
    target = {'params': state.params, 'batch_stats': state.batch_stats or {}}
    fitted = fit_variables(target, sources, strict, path)
    variables = {c: traverse_util.unflatten_dict(
                     _replicated(fitted[c], traverse_util.flatten_dict(target[c]), mesh))
                 for c in fitted}
    params = variables['params']
    opt_state = jax.jit(state.tx.init, out_shardings=sharding.replicated(mesh))(params)
    return state.replace(params=params, batch_stats=variables['batch_stats'] or state.batch_stats,
                         opt_state=opt_state)


def read_weights(path: str, mesh: jax.sharding.Mesh | None,
                 best_metric: str = 'eval_accuracy') -> tuple[dict[str, dict], bool]:
    """({collection: {path: array}}, strict) from a .pth file or a jaxres checkpoint."""
    if not os.path.exists(path):
        raise FinetuneError(f'config.init_from={path} does not exist.')
    if os.path.isdir(path):
        return _from_jaxres_checkpoint(path, mesh, best_metric), False
    if os.path.splitext(path)[1].lower() not in TORCH_SUFFIXES:
        raise FinetuneError(f'config.init_from={path}: give a torchvision state_dict '
                            f'({"/".join(TORCH_SUFFIXES)}) or a jaxres workdir / checkpoints '
                            'directory.')
    sources, unknown = convert_torchvision(load_torch_state_dict(path))
    if unknown:
        raise FinetuneError(f'{path} is not a torchvision ResNet state_dict: it has '
                            f'{len(unknown)} keys outside the torchvision layout, e.g. '
                            f'{unknown[:5]}.')
    return sources, True


def fit_variables(target: Mapping[str, Any], sources: Mapping[str, Mapping], strict: bool,
                  path: str) -> dict[str, dict[tuple[str, ...], Any]]:
    """Per collection, the merged flat variables; strict: any mismatch but the head fails.

    ``target`` leaves need only ``.shape`` (arrays or ``jax.ShapeDtypeStruct``).
    """
    out = {}
    for collection in ('params', 'batch_stats'):
        flat_target = traverse_util.flatten_dict(target.get(collection) or {})
        merged, loaded, problems = merge(flat_target, sources.get(collection, {}))
        if strict and problems:
            raise FinetuneError(
                f'{path} does not fit config.model ({len(problems)} mismatches in '
                f'{collection}: {"; ".join(problems[:8])}). For torchvision weights use '
                '--config.model.stem=imagenet --config.model.depth=18|34|50 and leave '
                'stage_sizes/stage_widths/stem_width at their defaults.')
        if collection == 'params' and not loaded:
            raise FinetuneError(f'no tensor of {path} matches config.model by name and shape.')
        fresh = sorted({'/'.join(p) for p in flat_target} - set(loaded))
        logging.info('init_from %s: %s: loaded %d of %d tensors%s', path, collection,
                     len(loaded), len(flat_target), f'; kept fresh: {fresh}' if fresh else '')
        out[collection] = merged
    return out


def _from_jaxres_checkpoint(path: str, mesh: jax.sharding.Mesh, best_metric: str
                            ) -> dict[str, dict]:
    manager, step = checkpointing.open_checkpoint(path, path, best_metric)
    restored = checkpointing.restore_variables(manager, step, sharding.replicated(mesh))
    logging.info('init_from: checkpoint step %d of %s', step, manager.directory)
    return {k: traverse_util.flatten_dict(v) for k, v in restored.items()}


def _replicated(merged: Mapping[tuple[str, ...], Any], target: Mapping[tuple[str, ...], Any],
                mesh: jax.sharding.Mesh) -> dict[tuple[str, ...], Any]:
    """Host arrays placed replicated on ``mesh`` in the target's dtype; device arrays as is."""
    repl = sharding.replicated(mesh)
    out = {}
    for path, leaf in merged.items():
        if isinstance(leaf, np.ndarray):
            host = leaf.astype(target[path].dtype)
            leaf = jax.make_array_from_callback(host.shape, repl, lambda i, h=host: h[i])
        out[path] = leaf
    return out
