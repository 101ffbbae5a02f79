"""Metric writers: console + TensorBoard (clu) and ``metrics.jsonl`` in the workdir.

``metrics.jsonl`` holds one JSON object per log event (``write_scalars`` call):
``{"step": ..., "epoch": ..., "lr": ..., "train_loss": ..., ...}``.  Only
process 0 writes files; the others log to the console only.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
from clu import metric_writers
from clu.metric_writers import interface


class JsonlWriter(interface.MetricWriter):
    """Appends every scalar event to a JSON-lines file."""

    def __init__(self, path: str):
        self._path = path
        self._file = open(path, 'a', encoding='utf-8')

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        record = {'step': int(step)}
        for k, v in scalars.items():
            v = float(v)
            record[k] = v if math.isfinite(v) else str(v)
        self._file.write(json.dumps(record) + '\n')
        self._file.flush()

    def write_summaries(self, step, values, metadata=None):  # pragma: no cover
        pass

    def write_images(self, step, images):  # pragma: no cover
        pass

    def write_videos(self, step, videos):  # pragma: no cover
        pass

    def write_audios(self, step, audios, *, sample_rate):  # pragma: no cover
        pass

    def write_texts(self, step, texts):  # pragma: no cover
        pass

    def write_histograms(self, step, arrays, num_buckets=None):  # pragma: no cover
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def create_writer(workdir: str) -> metric_writers.MetricWriter:
    """Console + TensorBoard + metrics.jsonl on process 0; console elsewhere."""
    if jax.process_index() != 0:
        return metric_writers.create_default_writer(just_logging=True)
    default = metric_writers.create_default_writer(workdir, asynchronous=False)
    return metric_writers.MultiWriter([default, JsonlWriter(os.path.join(workdir, 'metrics.jsonl'))])


def read_jsonl(path: str) -> list[dict]:
    """The records of a metrics.jsonl file."""
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]
