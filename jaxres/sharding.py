"""Device mesh, shardings and multi-host start-up.

Data parallelism on a 1-D mesh over every device of every process: parameters
and optimizer state replicated (``P()``), batches split over ``'data'``.  Under
``jax.jit``'s global view the gradient mean and the BatchNorm statistics are
taken over the whole global batch with no explicit ``pmean``.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import ml_collections
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

_CLUSTER_ENV_VARS = ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE',
                     'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS')


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Calls ``jax.distributed.initialize`` on clusters (or when the config says so).

    ``config.distributed.coordinator_address`` / ``num_processes`` /
    ``process_id`` set it up explicitly (e.g. several CPU processes on one
    machine); otherwise JAX auto-detects SLURM, Open MPI and TPU pod slices.
    """
    d = config.get('distributed')
    explicit = d is not None and d.coordinator_address
    if not explicit and not any(v in os.environ for v in _CLUSTER_ENV_VARS):
        return
    if d is not None and d.cpu_collectives:
        jax.config.update('jax_cpu_collectives_implementation', d.cpu_collectives)
    if explicit:
        jax.distributed.initialize(coordinator_address=d.coordinator_address,
                                   num_processes=d.num_processes, process_id=d.process_id)
    else:
        jax.distributed.initialize()


def make_data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named ``'data'`` over all devices of all processes (or ``devices``)."""
    if devices is not None:
        return Mesh(np.asarray(devices), ('data',),
                    axis_types=(jax.sharding.AxisType.Auto,))
    # Auto axes: XLA's partitioner places the collectives (gradient all-reduce,
    # BatchNorm statistics) from the in/out shardings of the jitted step.
    return jax.make_mesh((jax.device_count(),), ('data',),
                         axis_types=(jax.sharding.AxisType.Auto,))


def round_up_to_devices(n: int, num_devices: int) -> int:
    """The smallest multiple of ``num_devices`` that is >= ``n`` (e.g. an eval batch:
    padded and masked, so its size needs no relation to the device count)."""
    return -(-n // num_devices) * num_devices


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P('data'))
