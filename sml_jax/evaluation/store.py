"""The on-disk layout of evaluations under a workdir, and its readers.

    workdir/eval/<name>.json                metrics (`metrics.compute_metrics`) + extra (model, ...)
    workdir/eval/<name>.transcripts.jsonl   the conversations, one JSON record per line
    workdir/metrics.jsonl                   training log: {"step", "stage", "loss", "reward_mean", ...}

`workdir` may be local or gs://bucket/dir (`sml_jax.paths`). Names pair up for before/after
comparisons as `before_<x>` / `after_<x>`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from sml_jax import paths
from sml_jax.evaluation import metrics as metrics_lib
from sml_jax.evaluation import schema

EVAL_DIR = "eval"
TRAIN_LOG = "metrics.jsonl"
TRANSCRIPTS_SUFFIX = ".transcripts.jsonl"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_name(name: str) -> str:
  if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.endswith(".transcripts"):
    raise ValueError(f"Eval name must match {_NAME_RE.pattern} (a file name, not ending in "
                     f"'.transcripts'), got {name!r}.")
  return name


def write_eval(workdir: str, name: str, transcripts: Sequence[dict], extra: dict | None = None,
               *, max_k: int | None = None, max_len: int | None = None) -> dict[str, Any]:
  """Computes the metrics of `transcripts` and writes eval/<name>.json and its transcripts.

  `max_len` (the run's `train.max_len`) defines `truncated_rate` (see `metrics.py`).

  `extra` (e.g. model, checkpoint, task, teacher) is stored at the top level of the JSON beside
  the metrics and `name`; it may not reuse a metric key. Returns the written dict.
  """
  check_name(name)
  transcripts = schema.validate_transcripts(transcripts)
  result = {"name": name, **metrics_lib.compute_metrics(transcripts, max_k=max_k,
                                                                max_len=max_len)}
  clash = sorted(set(extra or {}) & set(result))
  if clash:
    raise ValueError(f"extra keys {clash} collide with metric keys of eval {name!r}.")
  result.update(extra or {})
  out_dir = paths.join(workdir, EVAL_DIR)
  paths.makedirs(out_dir)
  lines = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in transcripts)
  paths.write_text_atomic(paths.join(out_dir, name + TRANSCRIPTS_SUFFIX), lines)
  paths.write_text_atomic(paths.join(out_dir, name + ".json"),
                          json.dumps(result, indent=1, allow_nan=False, ensure_ascii=False) + "\n")
  return result


def read_evals(workdir: str) -> dict[str, dict]:
  """name -> metrics dict for every eval/<name>.json, sorted by name ({} if none)."""
  out_dir = paths.join(workdir, EVAL_DIR)
  evals = {}
  for fname in paths.listdir(out_dir):
    if fname.endswith(".json"):
      path = paths.join(out_dir, fname)
      try:
        evals[fname[:-len(".json")]] = json.loads(paths.read_text(path))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
  return evals


def _read_jsonl(path: str, tolerate_partial_tail: bool = False) -> list[dict]:
  """The records of a JSON-lines file ([] when it does not exist)."""
  text = paths.read_text_or_none(path) or ""
  lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
  records = []
  for i, line in lines:
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if tolerate_partial_tail and i == lines[-1][0]:
        break  # a writer is appending right now
      raise ValueError(f"{path}:{i} is not valid JSON: {e}") from e
  return records


def read_transcripts(workdir: str, name: str) -> list[dict]:
  """The conversations of eval `name` ([] when its transcripts file is absent)."""
  return _read_jsonl(paths.join(workdir, EVAL_DIR, check_name(name) + TRANSCRIPTS_SUFFIX))


def read_train_log(workdir: str) -> list[dict]:
  """The records of workdir/metrics.jsonl in file order ([] when absent)."""
  return _read_jsonl(paths.join(workdir, TRAIN_LOG), tolerate_partial_tail=True)


def pair_names(names: Sequence[str]) -> tuple[list[tuple[str, str, str]], list[str]]:
  """Splits eval names into before/after pairs [(x, "before_x", "after_x")] and the rest."""
  names = sorted(names)
  pairs = [(n[len("before_"):], n, "after_" + n[len("before_"):]) for n in names
           if n.startswith("before_") and "after_" + n[len("before_"):] in names]
  paired = {p for _, b, a in pairs for p in (b, a)}
  return pairs, [n for n in names if n not in paired]


def write_rollouts(workdir: str, stage: str, step: int, transcripts: Sequence[dict]) -> str:
  """workdir/rollouts/<stage>/step_<n>.jsonl: one training iteration's conversations."""
  out = paths.join(workdir, "rollouts", stage)
  paths.makedirs(out)
  path = paths.join(out, f"step_{step:05d}.jsonl")
  paths.write_text_atomic(path, "".join(json.dumps(c) + "\n" for c in transcripts))
  return path
