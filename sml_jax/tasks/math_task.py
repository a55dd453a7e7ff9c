"""What every math task shares: the verifier, the leak check, and deterministic subsetting."""

from __future__ import annotations

from typing import Sequence

from sml_jax.tasks import math_answers
from sml_jax.tasks.base import Problem, Verdict, subset  # pylint: disable=unused-import (re-exported)

SPLITS = ("train", "eval", "test")


def check_split(split: str, allowed: Sequence[str] = SPLITS) -> None:
  if split not in allowed:
    raise ValueError(f"unknown split {split!r}; expected one of {tuple(allowed)}")


class MathTask:
  """Base for math tasks: subclasses set `name` and implement `problems`."""

  name = "math"
  domain = "math"

  def problems(self, split: str = "train", limit: int | None = None, seed: int = 0) -> list[Problem]:
    raise NotImplementedError

  def verify(self, problem: Problem, student_text: str) -> Verdict:
    """Extracts the answer from one student turn and compares it with `problem.answer`."""
    if problem.answer is None:
      raise ValueError(f"math problem {problem.id!r} has no reference answer")
    given = set().union(*(math_answers.number_values(t) for t in math_answers.public_texts(problem)))
    extracted = math_answers.extract_answer(student_text, given=given)
    if extracted is None:
      return Verdict(attempted=False, correct=False, feedback="No final answer found in the turn.")
    correct = math_answers.answers_equivalent(extracted, problem.answer)
    feedback = (f"Correct: {extracted} matches the reference answer." if correct else
                f"Incorrect: {extracted} does not match the reference answer.")
    return Verdict(attempted=True, correct=correct, extracted=extracted, feedback=feedback)

  def verify_batch(self, problems: Sequence[Problem], texts: Sequence[str]) -> list[Verdict]:
    if len(problems) != len(texts):
      raise ValueError(f"{len(problems)} problems but {len(texts)} texts")
    return [self.verify(p, t) for p, t in zip(problems, texts)]

  def leaked(self, problem: Problem, text: str) -> bool:
    """True if (teacher) `text` states the problem's final answer."""
    return math_answers.answer_leaked(problem, text)
