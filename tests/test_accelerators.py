"""Every config's train and eval steps lower for CUDA and TPU, as they would run there.

``jax.export`` lowers for platforms this machine does not have.  The steps are
sharded over the 8-device mesh and built with the accelerators' choices
(``backend.choose``): XLA convolutions and uint8 images, no CPU lowering and
no packed pixel words, and no host callback or CPU library call inside.
"""

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import pytest
from jax import export

from jaxres import sharding
from jaxres.cpu import backend
from jaxres.tools import accelerators

from conftest import ROOT

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not p.endswith('__init__.py'))


def _config(name, dtype):
    config = importlib.import_module(f'configs.{name}').get_config()
    config.dtype = dtype
    return config


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('name', CONFIGS)
def test_steps_export_for_cuda_and_tpu(name, dtype):
    mesh = sharding.make_data_mesh()
    assert mesh.size == 8
    exported = accelerators.export_steps(_config(name, dtype), mesh)
    for which, exp in exported.items():
        assert exp.platforms == ('cuda', 'tpu'), which
        assert exp.nr_devices == 8, which
        assert accelerators.custom_call_targets(exp) <= set(accelerators.PORTABLE_CUSTOM_CALLS), (
            which, accelerators.custom_call_targets(exp))
        text = exp.mlir_module()
        assert 'stablehlo.convolution' in text, f'{which}: convolutions are not XLA convolutions'
        assert 'callback' not in text, which
    # The images go in as uint8 (N, H, W, C), not CPU pixel words: the arguments
    # are (state..., train_pixels, train_labels, eval x3, order) for resident
    # input, (state..., batch image, index, label) for streaming.
    streamed = importlib.import_module(f'configs.{name}').get_config().input.kind == 'streaming'
    train_pixels = exported['train_step'].in_avals[-3 if streamed else -6]
    assert train_pixels.dtype == jnp.uint8 and train_pixels.ndim == 4


def test_the_cpu_makes_other_choices_and_the_check_sees_cpu_calls():
    config = _config('cifar10_speedrun', 'float32')
    assert backend.choose(config, 'cpu') == backend.Choices('cpu', 'winograd', 'tiles', True)
    assert backend.choose(config, 'cuda') == backend.Choices('cuda', 'xla', 'xla', False)
    assert backend.choose(config, 'tpu') == backend.Choices('tpu', 'xla', 'xla', False)
    with pytest.raises(ValueError, match='accelerators'):
        accelerators.export_steps(config, sharding.make_data_mesh(), ('cpu',))
    # The custom-call scan finds a CPU library call (LAPACK's eigensolver).
    eigh = export.export(jax.jit(jnp.linalg.eigh), platforms=['cpu'])(
        jax.ShapeDtypeStruct((4, 4), jnp.float32))
    assert any('lapack' in t for t in accelerators.custom_call_targets(eigh))
