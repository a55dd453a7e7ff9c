"""Questions a student could ask about *this* problem, built from its privileged information:
the Q-priming `template` writer (`questions.py`), and a fallback when the model writer's question
leaks or copies a demonstration.

    template_question(problem, failed_attempt, rng)   # "Should I first work out 7-3 to get ...?"
"""

from __future__ import annotations

import re
from typing import Collection

from sml_jax.dialogue import hints
from sml_jax.tasks import math_answers
from sml_jax.tasks.base import Problem


# --- Q-priming questions -------------------------------------------------------------------------

_SHARD_QUESTIONS = ("{echo}?", "Could you tell me: {echo}?", "I am missing something: {echo}?")
_STEP_QUESTIONS = (
    "Should I first work out {expr}{about}?",
    "Do I need {expr}{about} before the rest?",
    "Is {expr}{about} the first thing to compute?",
)
_WHOLE_QUESTIONS = ("How should I compute {expr}?", "Can you remind me how to work out {expr}?",
                    "Which part of {expr} should I do first?")
_GENERIC = "What information am I missing to solve this?"


def _echo_question(shard: str) -> str:
  """"Tom has 12 apples." -> "Tom has how many apples"; "It costs $5." -> "It costs how much"."""
  s = shard.strip().rstrip(".!")
  s = re.sub(r"\$\s?\d[\d,]*(?:\.\d+)?", "how much", s, count=1)
  s = re.sub(r"\b\d[\d,]*(?:\.\d+)?%", "what percent", s, count=1)
  s = re.sub(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:/\d+)?\b", "how many", s, count=1)
  s = math_answers._WORD_NUM_RE.sub("how many", s, count=1)  # pylint: disable=protected-access
  return s


def template_question(problem: Problem, attempt_text: str, rng,
                      shards_revealed: int | Collection[int] | None = None) -> str:
  """A question the student could have asked instead of `attempt_text`, built from the privileged
  information and about this problem: for a sharded problem the missing fact (the first
  unrevealed shard when `shards_revealed` is given, else the first whose numbers the turn does not
  mention), turned into a question; otherwise the first solution step the turn has not reached;
  for a one-step problem, how to compute its expression; for code, what a test the student has
  not seen expects. Always passes `answer_leaked`."""
  if problem.domain == "code":
    return code_question(problem, attempt_text, rng)
  if problem.underspecified:
    hidden = range(1, len(problem.shards))
    if shards_revealed is not None:
      revealed = hints.revealed_set(shards_revealed)
      hidden = [i for i in hidden if i not in revealed]
    else:
      seen = math_answers.number_values(attempt_text)
      hidden = [i for i in hidden if not math_answers.number_values(problem.shards[i]) <= seen
                or not math_answers.number_values(problem.shards[i])] or list(hidden)
    if hidden:
      text = rng.choice(_SHARD_QUESTIONS).format(echo=_echo_question(problem.shards[hidden[0]]))
      return hints.leak_free(problem, text, _GENERIC)
  step = hints.first_unreached_step(problem, attempt_text)
  if step is not None:
    first = step.context.split()[0].lower() if step.context else ""
    about = f" to get the {step.context}" if first and first not in hints.STOPWORDS else ""
    text = rng.choice(_STEP_QUESTIONS).format(expr=step.expression, about=about)
    return hints.leak_free(problem, text, _GENERIC)
  expr = problem.meta.get("expression")
  if expr:
    return hints.leak_free(problem, rng.choice(_WHOLE_QUESTIONS).format(expr=expr), _GENERIC)
  return _GENERIC


_CODE_QUESTIONS = ("What should `{call}` return?", "What is the expected result of `{call}`?",
                   "Could you tell me what `{call}` should give?")
_GENERIC_CODE = "Which kind of input does my function get wrong?"


def code_question(problem: Problem, attempt_text: str, rng) -> str:
  """A code student's question about the problem: what a test it has not seen expects."""
  fresh = hints.unshown_tests(problem, attempt_text)
  if fresh:
    return rng.choice(_CODE_QUESTIONS).format(call=hints.test_call(fresh[0]))
  return _GENERIC_CODE
