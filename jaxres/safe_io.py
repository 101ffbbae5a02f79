"""Safe file I/O: readers that never execute code from the file, writers that
never leave a half-written file.

CIFAR's "python version" archives are pickles.  ``pickle.load`` on a file from
the internet can run arbitrary code, so they are read with an unpickler that
only rebuilds plain containers and NumPy arrays and refuses everything else.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from typing import Any, BinaryIO

import numpy as np

# (module, name) pairs a CIFAR batch (or any plain array pickle) needs.
_ALLOWED_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'),
    ('builtins', 'bytearray'),
    ('_codecs', 'encode'),
    ('copyreg', '_reconstructor'),
}


class UnsafePickleError(ValueError):
    """The pickle asks to build an object other than containers and arrays."""


class _RestrictedUnpickler(pickle.Unpickler):

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f'refusing to load {module}.{name} from a pickle: only plain containers and '
            'NumPy arrays are accepted (the file may try to run code)')


def safe_unpickle(file: BinaryIO | bytes) -> Any:
    """Loads a pickle of dicts/lists/bytes/numbers/NumPy arrays; refuses anything else."""
    if isinstance(file, bytes):
        file = io.BytesIO(file)
    # encoding='bytes' reads Python 2 pickles (the CIFAR archives) too.
    obj = _RestrictedUnpickler(file, encoding='bytes').load()
    return _decode_keys(obj)


def _decode_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {(k.decode('latin1') if isinstance(k, bytes) else k): v for k, v in obj.items()}
    return obj


def load_npy(path: str) -> np.ndarray:
    """``np.load`` with pickles disabled."""
    return np.load(path, allow_pickle=False)


def write_atomic(path: str, data: bytes | str) -> None:
    """Writes ``data`` to ``path`` through a temporary file and a rename, so that a
    reader (or a run killed mid-write) sees the old file or the new one, never part."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            f.write(data.encode('utf-8') if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically."""
    write_atomic(path, json.dumps(obj, indent=2))
