"""What every task provides: problems (public statement + privileged info) and a verifier.

Pure python, no jax: verification runs in worker threads / the sandbox, many at a time.
"""

from __future__ import annotations

import dataclasses
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
