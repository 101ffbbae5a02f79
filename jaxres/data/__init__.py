"""Data: what a data set is and how its examples reach a train or eval step.

``datasets`` (facts from TFDS metadata, in-memory data sets, sources), ``image_io``
(reading and checking image files and arrays, channel statistics), ``preprocess``
(the ops a spec string composes, run inside jit), ``resident`` (the training set
on the device), ``streaming`` (grain over ArrayRecord), ``host_ops`` (JPEG
decode/crop on the host), ``prepare`` (local archives and folders -> TFDS).
``inputs`` holds the ``Input`` interface the training loop reads from and the
batch sources of evaluation and prediction.  Nothing here imports training,
checkpointing or models (tests/test_layout.py).
"""


class DataError(ValueError):
    """Data that cannot be loaded; the message names the cause and the fix."""
