"""Host memory tuning that must be in place before the process starts.

XLA:CPU allocates its per-step temporaries (gigabytes for a ResNet-18 step at
batch 128) afresh on every step; with 4 KiB pages the kernel then takes a page
fault and zeroes a page for every 4 KiB touched, which can take longer than the
matrix product that reads the memory (``benchmarks/RESULTS.md`` has the
measurements).  glibc's ``glibc.malloc.hugetlb=1`` tunable makes malloc ask for
transparent huge pages (2 MiB), 512x fewer faults.  glibc reads tunables only at
start-up, so the entry points re-execute themselves once with it set.

It helps XLA:CPU only, so by default (``backend.hugepages='auto'``) it is on
when the run will be on the CPU: no GPU/TPU plugin of JAX is installed, or
``JAX_PLATFORMS`` says cpu.  ``--config.backend.hugepages=on|off`` on the
command line (read here, before JAX starts) or ``JAXRES_HUGEPAGES=1|0`` forces it.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Sequence

TUNABLE = 'glibc.malloc.hugetlb=1'
THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'
# Python modules that give JAX a GPU or TPU backend (jax[cuda12], jax[cuda13], jax[tpu]).
ACCELERATOR_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin',
                       'jax_rocm7_plugin', 'libtpu')


def _thp_usable() -> bool:
    """True when the kernel grants transparent huge pages on request."""
    try:
        with open(THP_SETTING) as f:
            setting = f.read()
    except OSError:
        return False
    return '[always]' in setting or '[madvise]' in setting


def runs_on_cpu(environ: dict[str, str]) -> bool:
    """Whether JAX will pick the CPU, decided without importing JAX."""
    platforms = environ.get('JAX_PLATFORMS', '')
    if platforms:
        return platforms.split(',')[0].strip() == 'cpu'
    return not any(importlib.util.find_spec(m) for m in ACCELERATOR_PLUGINS)


def wanted(environ: dict[str, str], argv: Sequence[str] = ()) -> bool:
    """``--config.backend.hugepages=on|off|auto`` in ``argv``, else JAXRES_HUGEPAGES, else auto."""
    setting = 'auto'
    for arg in argv:
        if arg.startswith('--config.backend.hugepages='):
            setting = arg.split('=', 1)[1].strip('\'"')
    if setting == 'auto' and environ.get('JAXRES_HUGEPAGES') in ('0', '1'):
        setting = 'on' if environ['JAXRES_HUGEPAGES'] == '1' else 'off'
    return runs_on_cpu(environ) if setting == 'auto' else setting == 'on'


def hugepage_env(environ: dict[str, str], argv: Sequence[str] = ()
                 ) -> dict[str, str] | None:
    """The environment to re-execute with, or None when nothing is to change."""
    if sys.platform != 'linux' or not wanted(environ, argv) or not _thp_usable():
        return None
    tunables = environ.get('GLIBC_TUNABLES', '')
    if 'glibc.malloc.hugetlb' in tunables:
        return None
    return dict(environ, GLIBC_TUNABLES=':'.join(t for t in (tunables, TUNABLE) if t))


def reexec_with_hugepages(argv: list[str]) -> None:
    """Replaces this process by ``argv`` run with the huge-page tunable, if needed.

    Call it first thing in an entry point, before JAX is imported; ``argv`` is
    the full command (e.g. ``[sys.executable, '-m', 'jaxres.bench', *args]``).
    The process id, open descriptors and signal handling stay the same.
    """
    env = hugepage_env(dict(os.environ), argv)
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(argv[0], argv, env)
