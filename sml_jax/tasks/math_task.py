"""What every math task shares: the verifier, the leak check, and deterministic subsetting."""

from __future__ import annotations

from typing import Sequence

from sml_jax.tasks import math_answers
from sml_jax.tasks.base import Problem, Verdict, subset  # pylint: disable=unused-import (re-exported)

SPLITS = ("train", "eval", "test")


def check_split(split: str, allowed: Sequence[str] = SPLITS) -> None:
  if split not in allowed:
    raise ValueError(f"unknown split {split!r}; expected one of {tuple(allowed)}")


def check_answer_format(answer_format: str) -> str:
  if answer_format not in math_answers.ANSWER_FORMATS:
    raise ValueError(f"unknown answer_format {answer_format!r}; expected one of "
                     f"{math_answers.ANSWER_FORMATS}")
  return answer_format


class MathTask:
  """Base for math tasks: subclasses set `name` and implement `problems`.

  `answer_format` (a constructor argument of every math task): "strict" (default: only
  `Final answer: X` / `\\boxed{X}` is an attempt, see `math_answers`) or "lenient" (also the last
  number of the turn; for reading other transcripts, never for rewards).
  """

  name = "math"
  domain = "math"
  answer_format = "strict"

  def problems(self, split: str = "train", limit: int | None = None, seed: int = 0) -> list[Problem]:
    raise NotImplementedError

  def verify(self, problem: Problem, student_text: str) -> Verdict:
    """Extracts the answer from one student turn and compares it with `problem.answer`."""
    if problem.answer is None:
      raise ValueError(f"math problem {problem.id!r} has no reference answer")
    given = set().union(*(math_answers.number_values(t) for t in math_answers.public_texts(problem)))
    strict = math_answers.extract_answer(student_text, given=given)
    loose = strict if strict is not None else math_answers.extract_answer(
        student_text, given=given, lenient=True)
    # An answer the lenient reader finds but without the anchor: counted, rewarded only if lenient.
    format_failure = strict is None and loose is not None
    extracted = loose if self.answer_format == "lenient" else strict
    if extracted is None:
      feedback = ("No final answer found in the turn." if not format_failure else
                  f"No 'Final answer: <number>' in the turn (it mentions {loose}).")
      return Verdict(attempted=False, correct=False, feedback=feedback,
                     format_failure=format_failure)
    correct = math_answers.answers_equivalent(extracted, problem.answer)
    feedback = (f"Correct: {extracted} matches the reference answer." if correct else
                f"Incorrect: {extracted} does not match the reference answer.")
    return Verdict(attempted=True, correct=correct, extracted=extracted, feedback=feedback,
                   format_failure=format_failure)

  def verify_batch(self, problems: Sequence[Problem], texts: Sequence[str]) -> list[Verdict]:
    if len(problems) != len(texts):
      raise ValueError(f"{len(problems)} problems but {len(texts)} texts")
    return [self.verify(p, t) for p, t in zip(problems, texts)]

  def leaked(self, problem: Problem, text: str) -> bool:
    """True if (teacher) `text` states the problem's final answer."""
    return math_answers.answer_leaked(problem, text)

  def redact(self, problem: Problem, text: str) -> str:
    """`text` without any form of the final answer that `leaked` flags ("1,200", "$1,200.00",
    "2.50" for 2.5, "5/2", number words, anchored statements); other numbers are kept."""
    return math_answers.redact_answer(problem, text)
