"""Underspecified (sharded) math problems in the style of Lost in Conversation (arXiv:2505.06120).

A sharded problem reveals its information over the conversation: shards[0] is the opening request
(the question, without the facts needed to answer it) and each later shard is one fact, revealed
one per turn by the user/teacher. An answer attempt made before every shard has been revealed is
*premature* (`is_premature`).

Two sources:
- `gsm8k_sharded`: GSM8K questions split deterministically by `shard_question` (rules below).
- `lic_math`: the math items of Lost in Conversation's released `sharded_instructions_600.json`
  (a JSON list of {"task_id", "task", "shards": [{"shard_id", "shard_text"}], ...task keys}; math
  items carry GSM8K's "question" and "answer" ("... #### N")).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re

from sml_jax.tasks import gsm8k, math_answers, math_task, turns
from sml_jax.tasks.base import Problem

log = logging.getLogger(__name__)

# "If she works 10 hours a day, how much does she make?" -> fact + ask. The ask part must start
# like a question or an instruction, so commas inside the condition are skipped; without a comma
# ("If he has 23 goats what is ...") the first question word ends the condition.
_COND = r"^(?:if|given that|assuming that|assuming|suppose that|suppose)\s+(?P<cond>.+?)"
_ASK = (r"(?:then\s+)?(?P<ask>(?:how|what|which|who|whom|whose|when|where|why|calculate|find|"
        r"determine|compute|work out|in how)\b.*)$")
_CONDITIONAL_ASKS = (re.compile(_COND + r",\s*" + _ASK, re.IGNORECASE | re.DOTALL),
                     re.compile(_COND + r"\s+" + _ASK, re.IGNORECASE | re.DOTALL))
_INSTRUCTION = re.compile(r"^(?:calculate|find|determine|compute|work out|what|how)\b", re.I)


def _capitalize(text: str) -> str:
  return text[:1].upper() + text[1:]


def _ask_index(sentences: list[str]) -> int:
  """The request: the last sentence ending with "?", else the last instruction, else the last."""
  for i in reversed(range(len(sentences))):
    if sentences[i].rstrip().endswith("?"):
      return i
  for i in reversed(range(len(sentences))):
    if _INSTRUCTION.match(sentences[i]):
      return i
  return len(sentences) - 1


def shard_question(question: str) -> tuple[str, ...]:
  """Splits a word problem into (ask, fact_1, ..., fact_k), deterministically.

  The ask is the question sentence (see `_ask_index`); a leading condition in it ("If she works 10
  hours a day, how much ...?") becomes a fact of its own ("She works 10 hours a day."), placed
  where the ask stood. Every other sentence is one fact, in the original order.

  >>> shard_question("Tom has 3 apples. He buys 2 more. If he eats 1, how many are left?")
  ('How many are left?', 'Tom has 3 apples.', 'He buys 2 more.', 'He eats 1.')
  """
  sentences = turns.split_sentences(" ".join(question.split()))
  if not sentences:
    raise ValueError("empty question")
  k = _ask_index(sentences)
  ask, facts = sentences[k], sentences[:k]
  m = _CONDITIONAL_ASKS[0].match(ask) or _CONDITIONAL_ASKS[1].match(ask)
  if m:
    ask = _capitalize(m.group("ask").strip())
    facts.append(_capitalize(m.group("cond").strip().rstrip(",")) + ".")
  facts.extend(sentences[k + 1:])
  return (ask, *facts)


def is_premature(problem: Problem, n_revealed: int, attempted: bool) -> bool:
  """True if an answer attempt came while only `n_revealed` of the problem's shards were shown.

  Args:
    problem: the problem; a fully specified one (no shards) is never premature.
    n_revealed: shards shown to the student so far, counting shards[0] (the opening request).
    attempted: whether the turn is an answer attempt (`Verdict.attempted`).
  """
  return attempted and problem.underspecified and n_revealed < len(problem.shards)


def concat_shards(problem: Problem, n: int | None = None) -> str:
  """The first `n` shards (default all) as one fully specified prompt: the request, then facts."""
  shards = problem.shards[:n] if n is not None else problem.shards
  return " ".join((*shards[1:], shards[0])) if shards else problem.statement


def _privileged(question: str, solution: str, answer: str) -> str:
  return f"Full problem: {question}\n\nSolution:\n{solution}\nFinal answer: {answer}"


class GSM8KShardedTask(math_task.MathTask):
  """GSM8K problems as sharded conversations; problems with fewer than `min_shards` are dropped."""

  name = "gsm8k_sharded"

  def __init__(self, path: str | None = None, test_path: str | None = None,
               eval_fraction: float = 0.1, min_shards: int = 3, answer_format: str = "strict"):
    self.answer_format = math_task.check_answer_format(answer_format)
    if min_shards < 2:
      raise ValueError(f"min_shards must be >= 2 (a request and a fact), got {min_shards}")
    self.base = gsm8k.GSM8KTask(path=path, test_path=test_path, eval_fraction=eval_fraction)
    self.min_shards = min_shards

  def problems(self, split: str = "train", limit: int | None = None, seed: int = 0) -> list[Problem]:
    """Same split rule as `gsm8k`; ids are the gsm8k ids."""
    problems = []
    for p in self.base.problems(split, limit=None, seed=seed):
      shards = shard_question(p.statement)
      if len(shards) < self.min_shards:
        continue
      solution = p.privileged.rsplit("\nFinal answer:", 1)[0]
      problems.append(Problem(
          id=p.id, task=self.name, domain=self.domain, statement=shards[0],
          privileged=_privileged(p.statement, solution, p.answer), answer=p.answer, shards=shards,
          difficulty=len(shards) - 1, meta={**p.meta, "question": p.statement}))
    return problems if limit is None else problems[:limit]


def _lic_math_problem(item: dict, name: str) -> Problem:
  """One LiC math item -> Problem; raises ValueError naming what is wrong."""
  shards = item.get("shards")
  if not isinstance(shards, list) or not shards:
    raise ValueError("'shards' must be a non-empty list")
  parsed = []
  for s in shards:
    text = s.get("shard_text", s.get("shard")) if isinstance(s, dict) else None
    if not isinstance(text, str) or not text.strip() or not isinstance(s.get("shard_id"), int):
      raise ValueError(f"bad shard {s!r}: need an int 'shard_id' and a non-empty 'shard_text'")
    parsed.append((s["shard_id"], text.strip()))
  ids = [i for i, _ in parsed]
  if len(set(ids)) != len(ids):
    raise ValueError(f"duplicate shard_id in {ids}")
  texts = tuple(t for _, t in sorted(parsed))
  answer_field = item.get("answer")
  if not isinstance(answer_field, (str, int, float)):
    raise ValueError("math item has no 'answer'")
  answer_field = str(answer_field)
  if "####" in answer_field:
    solution, answer = gsm8k.parse_answer_field(answer_field)
  elif math_answers.parse_number(answer_field) is not None:
    solution, answer = "", answer_field.strip().replace(",", "")
  else:
    raise ValueError(f"answer {answer_field[:60]!r} has no '#### N' line and is not a number")
  question = item.get("question") if isinstance(item.get("question"), str) else " ".join(texts)
  return Problem(id=str(item["task_id"]), task=name, domain="math", statement=texts[0],
                 privileged=_privileged(question, solution, answer), answer=answer, shards=texts,
                 difficulty=len(texts) - 1, meta={"question": question, "source": "lic"})


def read_lic_math(path: str, strict: bool = True, name: str = "lic_math") -> list[Problem]:
  """Math problems from a Lost-in-Conversation sharded file, in file order.

  Non-math items are skipped (counted in one log line). A malformed item raises ValueError naming
  the file, index and task_id; with `strict=False` it is skipped and counted instead.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"Lost in Conversation file not found: {path}")
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON: {e}") from None
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected a JSON list of items, got {type(data).__name__}")
  problems, skipped, malformed = [], collections.Counter(), []
  for i, item in enumerate(data):
    try:
      if not isinstance(item, dict):
        raise ValueError(f"expected an object, got {type(item).__name__}")
      for key in ("task_id", "task"):
        if not isinstance(item.get(key), str) or not item[key]:
          raise ValueError(f"missing or non-string {key!r}")
      if item["task"] != "math":
        skipped[item["task"]] += 1
        continue
      problems.append(_lic_math_problem(item, name))
    except ValueError as e:
      where = f"{path}: item {i} (task_id={item.get('task_id') if isinstance(item, dict) else None!r})"
      if strict:
        raise ValueError(f"{where}: {e}") from None
      malformed.append(f"{where}: {e}")
  log.info("%s: %d math problems; skipped %d non-math items %s and %d malformed items", path,
           len(problems), sum(skipped.values()), dict(sorted(skipped.items())), len(malformed))
  for m in malformed:
    log.warning("skipped malformed item: %s", m)
  return problems


class LiCMathTask(math_task.MathTask):
  """Lost in Conversation's sharded math items (an evaluation set: splits "eval" / "test")."""

  name = "lic_math"

  def __init__(self, path: str | None = None, strict: bool = True, answer_format: str = "strict"):
    self.answer_format = math_task.check_answer_format(answer_format)
    if not path:
      raise ValueError("lic_math needs path= to a sharded_instructions_600.json-style file")
    self.path = path
    self.strict = strict
    self._problems: list[Problem] | None = None

  def problems(self, split: str = "eval", limit: int | None = None, seed: int = 0) -> list[Problem]:
    """All math items (file order), truncated to `limit`; `seed` is unused (kept for the API)."""
    math_task.check_split(split, allowed=("eval", "test"))
    if self._problems is None:
      self._problems = read_lic_math(self.path, strict=self.strict, name=self.name)
    return self._problems if limit is None else self._problems[:limit]
