"""A readable console: jaxres's own lines, not the libraries' start-up notices.

TensorFlow (imported by TFDS and CLU's writers) announces its oneDNN kernels
through C++ logging at import, which also prints absl's "All log messages
before absl::InitializeLog()" banner; JAX logs "Unable to initialize backend
'tpu'" on every machine without one; Orbax and TFDS log each save and read at
INFO.  Warnings and errors still show, and ``--verbosity=1`` (or ``-v 1``)
shows everything.  Nothing here imports JAX or TensorFlow.
"""

from __future__ import annotations

import logging
import os
from typing import MutableMapping, Sequence

# Loggers whose INFO lines are library chatter; their warnings still show.
_CHATTY_PATHS = ('orbax', 'tensorflow_datasets', os.path.join('jax', '_src'))


def verbose(argv: Sequence[str]) -> bool:
    """True when the command line asks absl for more than INFO (``--verbosity=N``, ``-v N``)."""
    for i, arg in enumerate(argv):
        value = None
        if arg.startswith(('--verbosity=', '-v=')):
            value = arg.split('=', 1)[1]
        elif arg in ('--verbosity', '-v') and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None and value.lstrip('-').isdigit() and int(value) >= 1:
            return True
    return False


def quiet_native_startup(environ: MutableMapping[str, str], argv: Sequence[str]) -> None:
    """Call before TensorFlow is imported: no oneDNN notice (TF's kernels are not used).

    jaxres computes with JAX; TensorFlow only reads and decodes data, so its
    oneDNN math (the subject of the notice) never runs.
    """
    if not verbose(argv):
        environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
        environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')


# Warnings that are advice to the library's own users, not to jaxres's: TFDS suggests
# OpenCV for its image decoding, which jaxres does not use for training.
_NOT_FOR_OUR_USERS = ('OpenCV is not installed',)


class _DropLibraryChatter(logging.Filter):
    """Hides INFO lines of Orbax, TFDS and JAX's internals; keeps their warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(_NOT_FOR_OUR_USERS):
            return False
        return (record.levelno >= logging.WARNING
                or not any(p in record.pathname for p in _CHATTY_PATHS))


def quiet_library_logs() -> None:
    """Filters the Python log handlers (absl's included) unless absl is verbose."""
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    if absl_logging.get_verbosity() >= 1:
        return
    for handler in logging.getLogger().handlers + logging.getLogger('absl').handlers:
        handler.addFilter(_DropLibraryChatter())
