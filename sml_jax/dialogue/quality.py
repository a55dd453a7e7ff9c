"""Dialogue quality, read from a turn's text: is it well formed (an anchored answer attempt or a
question about the problem, in one script), does it copy a line of an in-context demonstration.

    well_formed("6 + 7 = 13. Final answer: 13", "math")      # True
    well_formed("The solution is 5.较低个时. Final answer: 5", "math")   # False: mixed script
    is_demo_copy("How many apples did Tom have at the start?", demo_lines)
"""

from __future__ import annotations

import functools
import operator
import re
import unicodedata
from typing import Sequence

from sml_jax.tasks import math_answers, turns

# --- dialogue-quality checks -------------------------------------------------------------------------

def _normalize(text: str) -> str:
  return " ".join(re.sub(r"[^\w\s+\-*/=]", " ", text.lower()).split())


def _grams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
  return {tuple(words[j:j + n]) for j in range(len(words) - n + 1)}


_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_EQUATION = re.compile(r"(?<![\d.])(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*(-?\d+)(?!\d|\.\d)")


def _anchored_value(text: str):
  """The turn's strict anchored answer as an exact number, or None."""
  return math_answers.parse_number(math_answers.extract_answer(text) or "")


def computes_its_answer(text: str, statement: str | None = None) -> bool:
  """True if the turn's anchored answer is the right value of an integer equation it wrote
  ("48 - 15 = 33. Final answer: 33"): the number is its own arithmetic. With `statement`, the
  equation's operands must also be numbers of the problem ("9 + 5 = 14" on "Compute 9 + 5.") or
  results of the turn's earlier right equations ("8 * 2 = 16, and 16 - 4 = 12")."""
  answer = _anchored_value(text)
  if answer is None:
    return False
  # Magnitudes on both sides: "-3 * 4" is read as -3 in the statement, and as -3 or 3 in a turn.
  known = None if statement is None else {abs(v) for v in math_answers.number_values(statement)}
  for a, op, b, c in _EQUATION.findall(text):
    a, b, c = int(a), int(b), int(c)
    if _OPS[op](a, b) != c or (known is not None and not {abs(a), abs(b)} <= known):
      continue
    if c == answer:
      return True
    if known is not None:
      known.add(abs(c))
  return False


@functools.lru_cache(maxsize=64)
def _demo_answers(demo_lines: tuple[str, ...]) -> frozenset:
  """The anchored answers ("Final answer: X") of the demonstrations' lines, as numbers."""
  return frozenset(_anchored_value(line) for demo in demo_lines for line in demo.splitlines())


def is_demo_copy(text: str, demo_lines: Sequence[str], min_words: int = 3, statement: str = "",
                 near: float = 0.5, n: int = 3) -> bool:
  """True if `text` reproduces a line of an in-context demonstration. For `demo_copy_rate`.

  Exact: some demo line of at least `min_words` words appears in it (case, punctuation and
  spacing ignored). Near: at least `near` of the turn's word n-grams come from one demo line and
  not from the problem `statement` ("How many more apples did Tom have at the end?" on "What is
  5 + 10?" paraphrases the demo's "How many apples did Tom have at the start?"). A short answer
  shares half its n-grams with a demo line whenever its number equals the demo's ("N. Final
  answer: N"): that counts (the base 270M wrote the demo's wrong 33 on other sums), and so does a
  whole demo line, unless the turn is the right computation of its problem's own numbers
  (`computes_its_answer` with the `statement`: "48 - 15 = 33. Final answer: 33" on "Solve 15 -
  48.", "9 + 5 = 14. Final answer: 14" on "Compute 9 + 5."). So does, on the same terms, any
  turn whose anchored answer is a demo's ("5 * 5 = 25, and 25 - 185 = 15. Final answer: 15"
  after a demo ending "Final answer: 15"), however long its working."""
  norm = _normalize(text)
  if not norm:
    return False
  words = norm.split()
  grams = _grams(words, n) - _grams(_normalize(statement).split(), n)
  own = bool(statement) and computes_its_answer(text, statement)
  if not own and _anchored_value(text) in _demo_answers(tuple(demo_lines)) - {None}:
    return True
  for demo in demo_lines:
    for line in demo.splitlines():
      d = _normalize(line)
      if len(d.split()) >= min_words and d in norm and not own:
        return True
      if (not own and len(words) >= 2 * n and grams
          and len(grams & _grams(d.split(), n)) >= near * len(_grams(words, n))):
        return True
  return False


def scripts(text: str) -> set[str]:
  """The writing systems of `text`'s letters ("LATIN", "CYRILLIC", "CJK", ...)."""
  out = set()
  for ch in text:
    if ch.isalpha():
      name = unicodedata.name(ch, "")
      first = name.split(" ")[0] if name else "OTHER"
      out.add("CJK" if first in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL") else first)
  return out


def mixed_script(text: str) -> bool:
  """True if the turn mixes writing systems (the 270M's gibberish: "5.较低个时表示...")."""
  return len(scripts(text)) > 1


def is_echo(text: str, statement: str, n: int = 3, min_words: int = 6,
            threshold: float = 0.6) -> bool:
  """True if `text` mostly copies the problem statement: at least `threshold` of its word
  n-grams occur in `statement` (case and punctuation ignored; turns under `min_words` words never
  count). The base 270M often restates the problem, ending on its question mark: that is neither
  a question about the problem nor an attempt."""
  words = _normalize(text).split()
  if len(words) < min_words:
    return False
  grams = _grams(words, n)
  return len(grams & _grams(_normalize(statement).split(), n)) >= threshold * len(grams)


def _clean_tail(text: str, statement: str) -> bool:
  """Nothing but punctuation or words of the problem (a unit: "Final answer: 24 apples.") after
  the turn's first anchored answer, and no other words (LaTeX commands aside) inside its
  "Final answer" expression once its numbers start: not "Final answer: 442.$$$$$$", "... 74
  oynuyoruz" or "Final answer: 39 multiplicado by 40 = 1560" ("Final answer: the total is 24",
  "5 apples + 19 apples = 24" pass). Turns cut at the answer, `turn_end`, pass the first check;
  older transcripts need not."""
  end = math_answers.first_answer_end(text)
  if end is None:
    return True
  known = set(_normalize(statement).split())
  working = math_answers.first_answer_working(text) or ""
  if any(w not in known for w in re.findall(r"[^\W\d_]+", re.sub(r"\\[A-Za-z]+", " ", working)
                                                                  .lower())):
    return False
  return all(w in known for w in re.findall(r"[^\W\d_]+|[^\w\s.,;:!?)\]}'\"]", text[end:].lower()))


def well_formed(turn_text: str, domain: str, statement: str = "") -> bool:
  """A student turn that is an anchored answer attempt (math: "Final answer: X" / \\boxed{X}, X a
  number or a formula without words, with nothing after it but punctuation or the problem's
  words, `_clean_tail`; code: a ```python block) or a question about the problem (not a
  restatement of `statement`, `is_echo`), in one writing system. For `well_formed_rate`."""
  if not turn_text or not turn_text.strip() or mixed_script(turn_text):
    return False
  if domain == "math":
    answer = math_answers.extract_answer(turn_text)
    answered = (answer is not None and _clean_tail(turn_text, statement)
                # The tasks' answers are numbers: "24.\\noindent" is junk read as one.
                and (math_answers.parse_number(answer) is not None
                     or not re.search(r"[A-Za-z]", answer)))
  else:
    answered = re.search(r"```[\w+-]*\n.*?```", turn_text, re.S) is not None
  return answered or (turns.is_question(turn_text) and not is_echo(turn_text, statement))
