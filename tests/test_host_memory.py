"""The huge-page malloc tunable: when entry points re-execute, and with what."""

import os
import subprocess
import sys

from jaxres.cpu import host_memory


def test_env_adds_the_tunable_once_and_keeps_others(monkeypatch):
    monkeypatch.setattr(host_memory, '_thp_usable', lambda: True)
    monkeypatch.setattr(sys, 'platform', 'linux')
    env = host_memory.hugepage_env({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2', 'X': '1'})
    assert env['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
    assert env['X'] == '1'
    assert host_memory.hugepage_env(env) is None  # already set: no second exec
    assert host_memory.hugepage_env({})['GLIBC_TUNABLES'] == 'glibc.malloc.hugetlb=1'
    assert host_memory.hugepage_env({'JAXRES_HUGEPAGES': '0'}) is None


def test_env_is_left_alone_without_transparent_hugepages(monkeypatch):
    monkeypatch.setattr(host_memory, '_thp_usable', lambda: False)
    assert host_memory.hugepage_env({}) is None


def test_reexec_runs_the_same_command_with_the_tunable(tmp_path):
    script = tmp_path / 'entry.py'
    script.write_text('import os, sys\n'
                      'from jaxres.cpu import host_memory\n'
                      'print("run", os.environ.get("GLIBC_TUNABLES"), flush=True)\n'
                      'host_memory.reexec_with_hugepages([sys.executable] + sys.argv)\n')
    env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', 'JAXRES_HUGEPAGES')}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    runs = out.stdout.strip().splitlines()
    if host_memory.hugepage_env(env) is None:  # no THP here: runs once, untouched
        assert runs == ['run None']
    else:  # runs again, once, with the tunable
        assert runs == ['run None', 'run glibc.malloc.hugetlb=1']
