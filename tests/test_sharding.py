"""sharding: one 'data' axis over every device; batches split on it, state replicated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxres import sharding


def test_mesh_spans_every_device_on_one_data_axis():
    mesh = sharding.make_data_mesh()
    assert mesh.axis_names == ('data',) and mesh.size == jax.device_count() == 8
    assert sharding.make_data_mesh(jax.devices()[:2]).size == 2


@pytest.mark.parametrize('n, devices, want', [(10, 8, 16), (16, 8, 16), (1, 1, 1), (0, 4, 0)])
def test_round_up_to_devices(n, devices, want):
    assert sharding.round_up_to_devices(n, devices) == want


def test_batches_split_on_the_data_axis_and_state_is_replicated():
    mesh = sharding.make_data_mesh()
    batch = jax.device_put(jnp.arange(16.0).reshape(16, 1), sharding.batch_sharded(mesh))
    assert {s.data.shape for s in batch.addressable_shards} == {(2, 1)}
    params = jax.device_put(jnp.ones(3), sharding.replicated(mesh))
    assert all(np.array_equal(s.data, np.ones(3)) for s in params.addressable_shards)
