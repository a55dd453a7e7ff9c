"""Math problems generated offline by `reasoning_gym` at controllable difficulty.

- `arithmetic` (reasoning_gym `basic_arithmetic`): difficulty is a level in ARITHMETIC_LEVELS,
  from "What is 3 + 4?" (level 0) to 4-6 terms of up to 4 digits with all four operators and
  parentheses (level 5). Problem.difficulty = the level.
- `gsm_symbolic` (reasoning_gym `gsm_symbolic`: GSM8K templates with fresh numbers): difficulty is
  the number of steps of the generated worked solution (2..15); `min_difficulty` /
  `max_difficulty` filter on it.

Splits are disjoint by construction: an arithmetic problem belongs to the split its expression
hashes to (80% train, 10% eval, 10% test, `split_of`), whatever generator seed produced it, and
a split never repeats an expression. The smallest levels have few distinct problems (level 0 has
100 in all, so about 10 eval problems): ask for more than exist and you get fewer, with a
warning. `gsm_symbolic` splits use disjoint generator seed ranges ("train": seed, "eval":
seed + 1,000,003, "test": seed + 2,000,006).
Everything is deterministic given (split, seed, size).
"""

from __future__ import annotations

import fractions
import hashlib
import logging
import re
from typing import Any

from sml_jax.tasks import math_task
from sml_jax.tasks.base import Problem

log = logging.getLogger(__name__)

_SPLIT_OFFSET = {"train": 0, "eval": 1_000_003, "test": 2_000_006}

# basic_arithmetic config per difficulty level. "simple" tasks (no parentheses) are evaluated left
# to right by reasoning_gym, so they stay with + and - only where precedence would differ.
ARITHMETIC_LEVELS: tuple[dict[str, Any], ...] = (
    dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=("+",),
         allow_parentheses=False, allow_negation=False),                      # What is 3 + 4?
    dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=("+", "-"),
         allow_parentheses=False, allow_negation=False),                      # What is 9 - 7?
    dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=("+", "-", "*"),
         allow_parentheses=False, allow_negation=False),                      # What is 12 * 4?
    dict(min_terms=3, max_terms=3, min_digits=1, max_digits=2, operators=("+", "-"),
         allow_parentheses=False, allow_negation=False),                      # 23 + 5 - 11
    dict(min_terms=3, max_terms=4, min_digits=1, max_digits=2, operators=("+", "-", "*", "/"),
         allow_parentheses=True, allow_negation=True),                        # -(3 + 4) * 6
    dict(min_terms=4, max_terms=6, min_digits=2, max_digits=4, operators=("+", "-", "*", "/"),
         allow_parentheses=True, allow_negation=True),                        # reasoning_gym default
    dict(min_terms=2, max_terms=2, min_digits=2, max_digits=2, operators=("+", "-"),
         allow_parentheses=False, allow_negation=False),                      # What is 54 + 26?
)
# Fractions of distinct expressions in each split (by hash of the expression).
_SPLIT_BUCKETS = {"train": range(0, 80), "eval": range(80, 90), "test": range(90, 100)}


def split_of(expression: str) -> str:
  """The split an arithmetic expression belongs to: a function of its text only."""
  bucket = int(hashlib.sha256(" ".join(expression.split()).encode()).hexdigest(), 16) % 100
  return next(name for name, r in _SPLIT_BUCKETS.items() if bucket in r)


def _exact_value(expression: str) -> fractions.Fraction | None:
  """Exact value of an arithmetic expression with true division (None if it divides by zero).

  reasoning_gym evaluates "/" as floor division; problems where that differs are skipped.
  """
  if not re.fullmatch(r"[\d\s+\-*/()]+", expression):
    raise ValueError(f"unexpected characters in generated expression {expression!r}")
  py = re.sub(r"(\d+)", r"fractions.Fraction(\1)", expression)
  try:
    return eval(py, {"fractions": fractions, "__builtins__": {}})  # input checked above
  except ZeroDivisionError:
    return None


def _generate(name: str, config: dict[str, Any], seed: int, size: int):
  import reasoning_gym  # lazy: imports every reasoning_gym dataset (~1 s)

  return reasoning_gym.create_dataset(name, seed=seed, size=size, **config)


class ArithmeticTask(math_task.MathTask):
  """Arithmetic expressions at one difficulty level (0 = easiest); see ARITHMETIC_LEVELS."""

  name = "arithmetic"

  def __init__(self, difficulty: int = 0, size: int = 1000, answer_format: str = "strict"):
    self.answer_format = math_task.check_answer_format(answer_format)
    if not isinstance(difficulty, int) or not 0 <= difficulty < len(ARITHMETIC_LEVELS):
      raise ValueError(f"arithmetic difficulty must be an int in [0, {len(ARITHMETIC_LEVELS) - 1}], "
                       f"got {difficulty!r}")
    if size <= 0:
      raise ValueError(f"size must be positive, got {size}")
    self.difficulty = difficulty
    self.size = size

  def problems(self, split: str = "train", limit: int | None = None, seed: int = 0) -> list[Problem]:
    """Up to `limit` (default `size`) problems, in generation order."""
    math_task.check_split(split)
    n = self.size if limit is None else limit
    config = dict(ARITHMETIC_LEVELS[self.difficulty], format_style="natural", whitespace="single")
    base = seed + _SPLIT_OFFSET[split]
    # Over-generate: a split keeps ~10-80% of the expressions, a few complex problems are dropped
    # (floor division != true division), and small levels repeat expressions.
    dataset = _generate("basic_arithmetic", config, base, max(20 * n, 64))
    problems, skipped, seen = [], 0, set()
    for i in range(len(dataset)):
      if len(problems) == n:
        break
      item = dataset[i]
      expression = item["metadata"]["expression"]
      if expression in seen or split_of(expression) != split:
        continue
      seen.add(expression)
      value = _exact_value(expression)
      if value is None or value != int(item["answer"]):
        skipped += 1
        continue
      problems.append(Problem(
          id=f"{self.name}-L{self.difficulty}-{split}-{base}-{i}", task=self.name,
          domain=self.domain, statement=item["question"],
          privileged=f"{expression} = {item['answer']}\nFinal answer: {item['answer']}",
          answer=item["answer"], difficulty=self.difficulty,
          meta={"expression": expression}))
    if len(problems) < n:
      log.warning("arithmetic level %d has only %d distinct %s problems (asked for %d)",
                  self.difficulty, len(problems), split, n)
      if not problems:
        raise RuntimeError(f"arithmetic level {self.difficulty}: no {split} problems generated")
    if skipped:
      log.debug("arithmetic level %d: skipped %d floor-division problems", self.difficulty, skipped)
    return problems


def _steps(answer_cot: str) -> int:
  """Number of reasoning steps: non-empty solution lines before the '#### N' line."""
  return sum(1 for line in answer_cot.split("####")[0].splitlines() if line.strip())


class GSMSymbolicTask(math_task.MathTask):
  """GSM8K-like word problems from reasoning_gym templates; difficulty = solution steps."""

  name = "gsm_symbolic"

  def __init__(self, min_difficulty: int = 0, max_difficulty: int | None = None, size: int = 1000,
               answer_format: str = "strict"):
    self.answer_format = math_task.check_answer_format(answer_format)
    if max_difficulty is not None and max_difficulty < min_difficulty:
      raise ValueError(f"max_difficulty {max_difficulty} < min_difficulty {min_difficulty}")
    if size <= 0:
      raise ValueError(f"size must be positive, got {size}")
    self.min_difficulty = min_difficulty
    self.max_difficulty = max_difficulty
    self.size = size

  def _in_range(self, steps: int) -> bool:
    return steps >= self.min_difficulty and (self.max_difficulty is None or
                                             steps <= self.max_difficulty)

  def problems(self, split: str = "train", limit: int | None = None, seed: int = 0) -> list[Problem]:
    """Up to `limit` (default `size`) problems within the difficulty range, in generation order."""
    math_task.check_split(split)
    n = self.size if limit is None else limit
    base = seed + _SPLIT_OFFSET[split]
    budget = max(20 * n, 200)  # narrow difficulty ranges reject most templates
    dataset = _generate("gsm_symbolic", {}, base, budget)
    problems = []
    for i in range(budget):
      if len(problems) == n:
        break
      item = dataset[i]
      cot = item["metadata"]["answer_cot"]
      steps = _steps(cot)
      if not self._in_range(steps):
        continue
      question = item["question"]
      problems.append(Problem(
          id=f"{self.name}-{split}-{base}-{i}", task=self.name, domain=self.domain,
          statement=question, privileged=f"{cot.split('####')[0].strip()}\nFinal answer: "
                                         f"{item['answer']}",
          answer=str(item["answer"]), difficulty=steps, meta={}))
    if len(problems) < n:
      raise RuntimeError(
          f"gsm_symbolic: only {len(problems)} of {n} problems with {self.min_difficulty} <= steps"
          f" <= {self.max_difficulty} in {budget} generated; widen the range or lower limit")
    return problems
