"""The CPU speed tricks: chosen by backend, overridable, never part of the model."""

import json

import pytest

from jaxres import checkpointing, config_validation
from jaxres.cpu import backend, host_memory

from conftest import tiny_config


@pytest.mark.parametrize('platform,expected', [
    ('cpu', backend.Choices('cpu', 'winograd', 'tiles', True)),
    ('cuda', backend.Choices('cuda', 'xla', 'xla', False)),
    ('rocm', backend.Choices('rocm', 'xla', 'xla', False)),
    ('tpu', backend.Choices('tpu', 'xla', 'xla', False)),
])
def test_auto_picks_by_backend(platform, expected):
    assert backend.choose(tiny_config(), platform) == expected


@pytest.mark.parametrize('has_bf16', [True, False])
def test_auto_takes_onednn_for_bfloat16_on_a_cpu_with_bf16_instructions(monkeypatch, has_bf16):
    from jaxres.cpu import onednn
    monkeypatch.setattr(onednn, 'cpu_has_bf16', lambda: has_bf16)
    config = tiny_config(dtype='bfloat16')
    assert backend.choose(config, 'cpu').conv == ('onednn' if has_bf16 else 'winograd')
    assert backend.choose(config, 'cuda').conv == backend.choose(config, 'tpu').conv == 'xla'
    assert backend.choose(tiny_config(), 'cpu').conv == 'winograd'  # float32
    config.backend.conv = 'im2col'
    assert backend.choose(config, 'cpu').conv == 'im2col'


def test_each_trick_can_be_forced():
    config = tiny_config(**{'backend.conv': 'im2col', 'backend.max_pool': 'xla',
                            'backend.packed_pixels': 'off'})
    assert backend.choose(config, 'cpu') == backend.Choices('cpu', 'im2col', 'xla', False)
    config.backend.packed_pixels = 'on'
    assert backend.choose(config, 'tpu').packed_pixels
    config.backend.conv = 'fft'
    with pytest.raises(config_validation.ConfigError, match='backend.conv'):
        config_validation.validate(config)


def test_the_tricks_are_not_part_of_the_model_on_resume():
    config = tiny_config()
    saved = json.loads(config.to_json())
    saved['backend']['conv'] = 'xla'  # written on a GPU
    saved['model']['conv_impl'] = 'auto'  # written before the key moved out of model.*
    checkpointing.check_resumable({'config': saved}, config, 'ckpt')  # no refusal
    saved['model']['block'] = 'preact'
    with pytest.raises(checkpointing.CheckpointError, match='model.block'):
        checkpointing.check_resumable({'config': saved}, config, 'ckpt')


def test_hugepages_follow_the_backend_unless_forced(monkeypatch):
    monkeypatch.setattr(host_memory.importlib.util, 'find_spec', lambda name: None)
    assert host_memory.wanted({})  # no accelerator plugin: the CPU
    assert not host_memory.wanted({'JAX_PLATFORMS': 'cuda'})
    assert host_memory.wanted({'JAX_PLATFORMS': 'cpu'})
    assert not host_memory.wanted({}, ['--config.backend.hugepages=off'])
    assert not host_memory.wanted({'JAXRES_HUGEPAGES': '0'})
    assert host_memory.wanted({'JAX_PLATFORMS': 'tpu'}, ['--config.backend.hugepages=on'])
    monkeypatch.setattr(host_memory.importlib.util, 'find_spec',
                        lambda name: object() if name == 'jax_cuda12_plugin' else None)
    assert not host_memory.wanted({})  # jax[cuda12] installed: a GPU machine


@pytest.mark.parametrize('batch,devices,accum,nearest', [
    (100, 8, 1, '96 or 104'), (4, 8, 1, '8'), (2000, 16, 4, None), (2000, 24, 4, '1992 or 2016'),
    (30, 2, 4, '28 or 32')])
def test_a_batch_that_does_not_split_names_the_nearest_that_do(batch, devices, accum, nearest):
    if nearest is None:
        config_validation.check_batch_splits(batch, devices, accum)  # micro-batches may be uneven
        return
    with pytest.raises(config_validation.ConfigError, match=f'that do are {nearest} '):
        config_validation.check_batch_splits(batch, devices, accum)
