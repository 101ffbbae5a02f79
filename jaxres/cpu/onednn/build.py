"""Compiles ``kernels.cc`` against oneDNN and jaxlib's FFI headers, once per version.

oneDNN comes from PyPI: ``pip install onednn-cpu-gomp==2023.2.0
onednn-devel-cpu-gomp==2023.2.0`` (the ``onednn`` extra), whose CPU runtime is
GNU OpenMP.  The newer ``onednn`` 2026.1.0 wheel is built with a SYCL CPU
runtime, which finds no CPU device without an OpenCL adapter that no PyPI wheel
ships, so it cannot run here.  Headers and ``libdnnl.so`` are looked for in this
Python's prefix, then in ``/usr`` (Debian's ``libdnnl-dev``).

The library lands in ``$JAXRES_CACHE_DIR`` (default ``~/.cache/jaxres``) under a
name hashed from the source, the compiler command, jaxlib's and oneDNN's
versions, so an upgrade of any of them rebuilds it.

    python -m jaxres.cpu.onednn.build    # builds (if needed) and prints the path
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name('kernels.cc')
PREFIXES = (Path(sys.prefix), Path('/usr'), Path('/usr/local'))


class BuildError(RuntimeError):
    """Why the library cannot be built here (one line)."""


def find_onednn() -> tuple[Path, Path]:
    """(include dir, lib dir) of the first oneDNN with both headers and library."""
    for prefix in PREFIXES:
        include = prefix / 'include'
        for lib in (prefix / 'lib', prefix / 'lib64', prefix / 'lib' / 'x86_64-linux-gnu'):
            if (include / 'oneapi' / 'dnnl' / 'dnnl.hpp').exists() and (lib / 'libdnnl.so').exists():
                return include, lib
    raise BuildError('oneDNN headers or libdnnl.so not found (pip install -e ".[onednn]")')


def onednn_version(include: Path) -> str:
    """'3.2.0+<git hash>', read from the headers; also says which CPU runtime."""
    text = (include / 'oneapi' / 'dnnl' / 'dnnl_version.h').read_text()
    parts = [re.search(rf'#define DNNL_VERSION_{p}\s+(\S+)', text) for p in
             ('MAJOR', 'MINOR', 'PATCH', 'HASH')]
    config = (include / 'oneapi' / 'dnnl' / 'dnnl_config.h').read_text()
    runtime = re.search(r'#define DNNL_CPU_RUNTIME\s+(\S+)', config)
    return '.'.join(m.group(1) for m in parts[:3] if m) + (
        f'+{parts[3].group(1).strip(chr(34))}' if parts[3] else '') + (
        f' ({runtime.group(1)})' if runtime else '')


def compile_command(include: Path, lib: Path, output: Path) -> list[str]:
    import jax
    compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
    if not compiler:
        raise BuildError('no C++ compiler (g++) on PATH')
    # --disable-new-dtags writes RPATH, not RUNPATH, so that libdnnl's own
    # dependencies are found next to it too.
    return [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-fopenmp',
            f'-I{include}', f'-I{jax.ffi.include_dir()}', str(SOURCE), '-o', str(output),
            f'-L{lib}', '-ldnnl', f'-Wl,--disable-new-dtags,-rpath,{lib}']


def cache_dir() -> Path:
    return Path(os.environ.get('JAXRES_CACHE_DIR') or Path.home() / '.cache' / 'jaxres')


def library_path() -> Path:
    """The built library, compiling it first if this version is not built yet."""
    import jaxlib
    include, lib = find_onednn()
    probe = compile_command(include, lib, Path('OUT'))
    key = hashlib.sha256('\0'.join([SOURCE.read_text(), *probe, jaxlib.__version__,
                                    onednn_version(include)]).encode()).hexdigest()[:16]
    target = cache_dir() / 'onednn' / f'libjaxres_onednn_{key}.so'
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Compiled under a temporary name and renamed: two processes (test workers)
    # building at once each write their own file and the rename is atomic.
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=target.parent)
    os.close(fd)
    try:
        command = compile_command(include, lib, Path(tmp))
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        except OSError as e:
            raise BuildError(f'cannot run the compiler {command[0]}: {e.strerror}') from e
        if done.returncode:
            first = next((l for l in done.stderr.splitlines() if 'error' in l),
                         done.stderr.strip()[-300:])
            raise BuildError(f'compiling {SOURCE.name} failed: {first}')
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def main() -> None:
    include, lib = find_onednn()
    print(f'oneDNN {onednn_version(include)}: {include}, {lib}')
    print(' '.join(compile_command(include, lib, Path('<cache>/libjaxres_onednn_<hash>.so'))))
    print(library_path())
    from jaxres.cpu import onednn
    print('available' if onednn.available() else f'unavailable: {onednn.unavailable_reason()}')


if __name__ == '__main__':
    main()
