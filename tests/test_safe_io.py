"""safe_io: pickles that never run code, .npy without pickles, atomic writes."""

import json
import os
import pickle

import numpy as np
import pytest

from jaxres import safe_io


def test_safe_unpickle_refuses_code():
    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))

    with pytest.raises(safe_io.UnsafePickleError, match='posix.system|os.system'):
        safe_io.safe_unpickle(pickle.dumps(Evil()))
    ok = safe_io.safe_unpickle(pickle.dumps({b'data': np.arange(3, dtype=np.uint8)}))
    np.testing.assert_array_equal(ok['data'], [0, 1, 2])


def test_load_npy_refuses_an_object_array(tmp_path):
    np.save(tmp_path / 'objects.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match='allow_pickle'):
        safe_io.load_npy(str(tmp_path / 'objects.npy'))


def test_write_atomic_replaces_whole_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / 'sub' / 'results.json'
    safe_io.write_json(str(path), {'accuracy': 0.5})
    assert json.loads(path.read_text()) == {'accuracy': 0.5}

    def fail(src, dst):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'replace', fail)
    with pytest.raises(OSError, match='No space'):
        safe_io.write_json(str(path), {'accuracy': 0.9})
    assert json.loads(path.read_text()) == {'accuracy': 0.5}  # the old file, whole
    assert os.listdir(path.parent) == ['results.json']
