"""Host memory tuning that must be in place before the process starts.

XLA:CPU allocates its per-step temporaries (gigabytes for a ResNet-18 step at
batch 128) afresh on every step; with 4 KiB pages the kernel then takes a page
fault and zeroes a page for every 4 KiB touched (measured here: ~140,000 faults
for one 600 MB im2col temporary, more time than the matrix product that reads
it).  glibc's ``glibc.malloc.hugetlb=1`` tunable makes malloc ask for
transparent huge pages (2 MiB), 512x fewer faults.  glibc reads tunables only at
start-up, so the entry points re-execute themselves once with it set.
Set ``JAXRES_HUGEPAGES=0`` to turn this off.
"""
from __future__ import annotations

import os
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def _thp_usable() -> bool:
    """True when the kernel grants transparent huge pages on request."""
    try:
        with open(THP_SETTING) as f:
            setting = f.read()
    except OSError:
        return False
    return '[always]' in setting or '[madvise]' in setting


def hugepage_env(environ: dict[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with, or None when nothing is to change."""
    if (sys.platform != 'linux' or environ.get('JAXRES_HUGEPAGES', '1') == '0'
            or not _thp_usable()):
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
    env = hugepage_env(dict(os.environ))
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(argv[0], argv, env)
