"""Per-step metrics: `workdir/metrics.jsonl`, TensorBoard events, and a console progress bar.

    writer = MetricsWriter(workdir, total_steps=500, resume_step=restored_step)
    writer.write(step, {"stage": "rl", "loss": 0.41, "reward_mean": 0.3, "tokens_per_s": 812.0,
                        "time_sampling_s": 12.0, "time_training_s": 3.1})
    writer.close()

`workdir` may be local or gs://bucket/dir (`sml_jax.paths`). metrics.jsonl holds one JSON
object per call: {"step": ..., "time": unix seconds, **metrics}. Numbers (python, numpy or jax scalars) are stored as floats, strings as strings; other values are
rejected. TensorBoard (tensorboardX) gets every numeric metric as a scalar, tagged
"<stage>/<name>" when a string `stage` is given. On resume (`resume_step`), lines written after
that step by the interrupted run are dropped so the file matches the restored state.
The progress bar (tqdm) shows the step, ETA and a few headline metrics.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from typing import Any, Mapping

import numpy as np

from sml_jax import paths

METRICS_FILE = "metrics.jsonl"
HEADLINE = ("loss", "reward_mean", "success_rate", "tokens_per_s")


def _to_json_value(name: str, value: Any):
  if isinstance(value, str) or value is None:
    return value
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  try:
    arr = np.asarray(value)
  except Exception as e:  # pylint: disable=broad-except
    raise TypeError(f"Metric {name!r} is not a number or string: {type(value).__name__}") from e
  if arr.size != 1 or arr.dtype.kind not in "biuf":
    raise TypeError(f"Metric {name!r} must be a scalar number or a string, got shape "
                    f"{arr.shape} dtype {arr.dtype}.")
  v = float(arr.reshape(()))
  return v if math.isfinite(v) else str(v)  # JSON has no NaN / inf.


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  text = paths.read_text_or_none(paths.join(workdir, METRICS_FILE))
  return [json.loads(line) for line in (text or "").splitlines() if line.strip()]


def truncate_after(workdir: str | os.PathLike, step: int) -> int:
  """Drops metrics.jsonl lines with step > `step`; returns how many were dropped."""
  rows = read_metrics(workdir)
  keep = [r for r in rows if r.get("step", -1) <= step]
  if len(keep) != len(rows):
    paths.write_text_atomic(paths.join(workdir, METRICS_FILE),
                            "".join(json.dumps(r) + "\n" for r in keep))
  return len(rows) - len(keep)


class _EpathEventFile:
  """tensorboardX's event file on GCS through `paths` (its own "gs" writer opens another client
  with its own credential lookup): the buffer is uploaded whole at every flush."""

  def __init__(self, p: str):
    self.path, self._buffer, self._flushed = p, io.BytesIO(), 0

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    if self._buffer.tell() != self._flushed:
      paths.write_bytes(self.path, self._buffer.getvalue())
      self._flushed = self._buffer.tell()

  def close(self) -> None:
    self.flush()


class _EpathEventFileFactory:

  def open(self, p: str) -> _EpathEventFile:
    return _EpathEventFile(p)

  def directory_check(self, p: str) -> None:
    del p   # GCS has no directories.


def _tensorboard_writer(logdir: str):
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  record_writer.register_writer_factory("gs", _EpathEventFileFactory())
  return SummaryWriter(logdir)


class MetricsWriter:
  def __init__(self, workdir: str | os.PathLike, *, total_steps: int | None = None,
               resume_step: int | None = None, tensorboard: bool = True, progress: bool = True,
               desc: str = "train"):
    self.workdir = os.fspath(workdir)
    paths.makedirs(self.workdir)
    if resume_step is not None:
      truncate_after(self.workdir, resume_step)
    self.path = paths.join(self.workdir, METRICS_FILE)
    self._file = paths.Appender(self.path)
    self._tb = _tensorboard_writer(paths.join(self.workdir, "tensorboard")) if tensorboard else None
    self._bar = None
    # The bar opens when a training stage starts (`start_progress`, or the first row), not
    # here: an eval that runs first (eval_before) shows its own bar alone, not under an idle
    # "train 0/N" whose clock would count the eval.
    self._progress = dict(total=total_steps, initial=resume_step or 0, desc=desc) if progress else None
    self._last_step = resume_step

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict:
    """Appends one line (flushed at once, so a killed run keeps every finished step)."""
    row = {"step": int(step), "time": round(time.time(), 3)}
    row.update({k: _to_json_value(k, v) for k, v in metrics.items()})
    self._file.write(json.dumps(row) + "\n")   # Flushed (on GCS: uploaded) at once.
    stage = row.get("stage") if isinstance(row.get("stage"), str) else None
    if self._tb is not None:
      for k, v in row.items():
        if k not in ("step", "time") and isinstance(v, float):
          self._tb.add_scalar(f"{stage}/{k}" if stage else k, v, int(step))
    self.start_progress()
    if self._bar is not None:
      advance = int(step) - (self._last_step if self._last_step is not None else 0)
      if stage:
        self._bar.set_description(stage)
      self._bar.set_postfix({k: f"{row[k]:.4g}" for k in HEADLINE if isinstance(row.get(k), float)})
      self._bar.update(max(advance, 0))
    self._last_step = int(step)
    return row

  def start_progress(self) -> None:
    """Opens the progress bar (once; a training stage calls it as it starts, so the bar's clock
    and ETA count training only)."""
    if self._bar is None and self._progress is not None:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(**self._progress, dynamic_ncols=True)

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()
    if self._bar is not None:
      self._bar.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
