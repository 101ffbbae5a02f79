"""The CPU speed tricks, each chosen in this one place by the backend it helps.

| trick (``config.backend.*``) | CPU | GPU / TPU | why |
| --- | --- | --- | --- |
| ``conv``: convolution lowering | ``winograd``; ``onednn`` for bfloat16 on a CPU with bf16 instructions | ``xla`` | XLA:CPU's conv gradients run far below its matrix products (``jaxres/cpu/conv.py``), and its bf16 convs are f32 ones (``jaxres/cpu/onednn``) |
| ``max_pool``: non-overlapping max-pool | ``tiles`` | ``xla`` | XLA:CPU expands ``reduce_window``'s gradient into a scatter (``pool.max_pool_tiles``) |
| ``packed_pixels``: resident training set | ``on`` | ``off`` | on CPU the crop as a gather of packed pixel rows vectorises (``resident``) |
| ``hugepages``: glibc huge pages | ``on`` | ``off`` | XLA:CPU re-allocates its step temporaries each step (``host_memory``) |

Every key is ``'auto'`` by default (the column of the backend the run is on)
and can be forced.  None of them changes the model, its parameters or its
checkpoints: a run may resume with other choices, on another backend.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import ml_collections

CONV_CHOICES = ('auto', 'xla', 'im2col', 'winograd', 'onednn')
MAX_POOL_CHOICES = ('auto', 'xla', 'tiles')
SWITCH_CHOICES = ('auto', 'on', 'off')


@dataclasses.dataclass(frozen=True)
class Choices:
    """What one run uses on its backend (every ``'auto'`` resolved)."""

    platform: str
    conv: str = 'xla'  # 'xla' | 'im2col' | 'winograd' | 'onednn'
    max_pool: str = 'xla'  # 'xla' | 'tiles'
    packed_pixels: bool = False


def _switch(value: str, on_cpu: bool) -> bool:
    return on_cpu if value == 'auto' else value == 'on'


def choose(config: ml_collections.ConfigDict, platform: str | None = None) -> Choices:
    """Resolves ``config.backend`` for ``platform`` ('cpu', 'cuda', 'gpu', 'tpu', ...).

    ``platform`` defaults to JAX's default backend; pass 'cuda' or 'tpu' to see
    (or lower, as ``tests/test_accelerators.py`` does) what a run there would use.
    """
    platform = platform or jax.default_backend()
    b = config.backend
    cpu = platform == 'cpu'
    return Choices(
        platform=platform,
        conv=_cpu_conv(config.dtype) if cpu and b.conv == 'auto' else
        'xla' if b.conv == 'auto' else b.conv,
        max_pool=('tiles' if cpu else 'xla') if b.max_pool == 'auto' else b.max_pool,
        packed_pixels=_switch(b.packed_pixels, cpu),
    )


def _cpu_conv(dtype: str) -> str:
    """'onednn' for bfloat16 where the CPU has bf16 instructions, else 'winograd'."""
    from jaxres.cpu import onednn  # pylint: disable=g-import-not-at-top
    return 'onednn' if dtype == 'bfloat16' and onednn.cpu_has_bf16() else 'winograd'


def warn_if_slow_here(config: ml_collections.ConfigDict, platform: str | None = None) -> None:
    """One warning line for a setting that is slow on this backend."""
    platform = platform or jax.default_backend()
    if (platform == 'cpu' and config.dtype == 'bfloat16'
            and choose(config, platform).conv != 'onednn'):
        logging.warning('dtype=bfloat16 runs slower than float32 on this CPU: XLA:CPU has no '
                        'fast 16-bit convolutions, and the onednn lowering needs bf16 '
                        'instructions (avx512_bf16 or amx_bf16), which this CPU lacks (or '
                        'backend.conv is set to another lowering). Use '
                        '--config.dtype=float32 on this machine; bf16 pays on GPUs and TPUs.')
