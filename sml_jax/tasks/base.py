"""What every task provides: problems (public statement + privileged info) and a verifier.

Pure python, no jax: verification runs in worker threads / the sandbox, many at a time.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
from typing import Any, Protocol, Sequence


@dataclasses.dataclass(frozen=True)
class Problem:
  id: str                        # unique within its task, stable across runs
  task: str                      # registry name, e.g. "gsm8k", "mbpp"
  domain: str                    # "math" | "code"
  statement: str                 # public: what the student sees in the first turn
  privileged: str                # teacher only: reference answer / solution, never shown to the student
  answer: str | None = None      # math: gold final answer (e.g. "72")
  tests: tuple[str, ...] = ()    # code: test statements (asserts) run against the program
  entry_point: str | None = None  # code: the function the tests call
  shards: tuple[str, ...] = ()   # underspecified: shards[0] is the opening request; the rest are
                                 # facts the user/teacher reveals, one per turn
  difficulty: int = 0            # for curricula (generated math)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False, compare=False)

  @property
  def underspecified(self) -> bool:
    return len(self.shards) > 1


@dataclasses.dataclass(frozen=True)
class Verdict:
  attempted: bool                # the turn contains an answer attempt (a number / a program)
  correct: bool
  extracted: str | None = None   # the extracted answer or program
  feedback: str = ""             # verifier output (e.g. failing tests' output): the teacher's
                                 # dynamic privileged information
  format_failure: bool = False   # math: the turn states an answer without the required anchor
                                 # ("Final answer: X" / \boxed{X}); counted, not rewarded


class Task(Protocol):
  name: str
  domain: str

  def problems(self, split: str = "train", limit: int | None = None, seed: int = 0) -> list[Problem]:
    """Deterministic list of problems for `split` ("train" or "eval")."""

  def verify(self, problem: Problem, student_text: str) -> Verdict:
    """Checks one student turn against the problem."""

  def verify_batch(self, problems: Sequence[Problem], texts: Sequence[str]) -> list[Verdict]:
    """Many at once (code tasks run the sandbox in parallel)."""

  def leaked(self, problem: Problem, text: str) -> bool:
    """True if a teacher turn states the final answer (math) or the reference program (code)."""

  def redact(self, problem: Problem, text: str) -> str:
    """`text` with every form `leaked` flags removed: afterwards `leaked(problem, result)` is False."""


# --- helpers shared by the task loaders -----------------------------------------------------------

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def data_dir() -> str:
  """Shared offline data: $SML_JAX_DATA, else ../shared/data beside the repo."""
  return os.environ.get("SML_JAX_DATA", os.path.join(os.path.dirname(_REPO), "shared", "data"))


def read_jsonl(path: str, required: dict[str, type], kind: str) -> list[tuple[int, dict]]:
  """(line number, object) per non-blank line of a .jsonl or .jsonl.gz file; a malformed line
  raises ValueError naming the file and line."""
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{kind} file not found: {path}. Pass the file as the task's path (e.g. "
        f"--config.curricula.math=gsm8k:1.0:path=/data/train.jsonl) or point $SML_JAX_DATA at a "
        f"directory laid out like ../shared/data (gsm8k/train.jsonl, mbpp/mbpp.jsonl).")
  opener = gzip.open if path.endswith(".gz") else open
  rows = []
  with opener(path, "rt", encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
        if not isinstance(obj, dict):
          raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        bad = [k for k, t in required.items() if not isinstance(obj.get(k), t)]
        if bad:
          raise ValueError("missing or mistyped field(s) " + ", ".join(
              f"{k} (want {required[k].__name__})" for k in bad))
      except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}:{lineno}: malformed {kind} line: {e}") from None
      rows.append((lineno, obj))
  if not rows:
    raise ValueError(f"{path}: no {kind} problems in the file")
  return rows


def subset(problems: list[Problem], limit: int | None, seed: int) -> list[Problem]:
  """A seeded shuffle of `problems`, truncated to `limit` (same inputs -> same list)."""
  if limit is not None and limit < 0:
    raise ValueError(f"limit must be >= 0, got {limit}")
  order = list(problems)
  random.Random(seed).shuffle(order)
  return order if limit is None else order[:limit]
