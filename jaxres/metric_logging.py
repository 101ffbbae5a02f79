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
    """The records of a metrics.jsonl file; a half-written last line (a run killed
    mid-write) is skipped."""
    records = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def duration(seconds: float) -> str:
    """``seconds`` as ``1h02m``, ``4m05s`` or ``12s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f'{hours}h{minutes:02d}m'
    return f'{minutes}m{secs:02d}s' if minutes else f'{secs}s'


def progress_line(step: int, total_steps: int, steps_per_epoch: int, seconds_per_step: float,
                  images_per_sec: float, loss: float, accuracy: float,
                  next_eval_step: int | None = None) -> str:
    """One line a person reads at a log step: where the run is, how fast, and
    when it ends (and evaluates next) at the recent step time."""
    line = (f'step {step}/{total_steps} (epoch {step / steps_per_epoch:.2f}) | '
            f'{images_per_sec:,.0f} images/s | loss {loss:.4f}, accuracy {accuracy:.2%} | '
            f'ETA {duration((total_steps - step) * seconds_per_step)}')
    if next_eval_step is not None and step < next_eval_step < total_steps:
        line += f' (next eval in {duration((next_eval_step - step) * seconds_per_step)})'
    return line
