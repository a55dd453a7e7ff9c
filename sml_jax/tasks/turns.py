"""Domain-agnostic turn helpers: sentence splitting, question detection, turn classification.

A student turn is an "attempt" when the task's verifier extracted an answer from it (a number, a
program), a "question" when it asks something and attempts nothing, and "other" otherwise
(restating, thinking aloud, an empty turn). The verifier decides `attempted`; this module only
looks at the words, so math and code share it.
"""

from __future__ import annotations

import re
from typing import Literal

TurnKind = Literal["attempt", "question", "other"]

# Abbreviations whose trailing period does not end a sentence (compared lower-cased).
_ABBREVIATIONS = frozenset({
    "mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "vs.", "etc.", "e.g.", "i.e.", "a.m.",
    "p.m.", "no.", "approx.", "prof.", "mt.", "ft.", "oz.", "lb.", "lbs.", "in.", "min.",
})
# Candidate breaks: whitespace after . ! ? (a decimal point is never followed by whitespace), and
# newlines.
_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_AUX = (r"is|are|am|was|were|do|does|did|can|could|should|would|will|shall|may|might|have|has|"
        r"had|must|'s")
# An interrogative sentence the writer forgot to end with "?": "How many clips did she sell",
# "Should I divide by 2". The word after the opener must make it a question, so that statements
# ("When he left, ...") and imperatives ("Do the sum first.") are not questions.
_INTERROGATIVE = re.compile(
    rf"^(?:(?:so|and|but|ok|okay|then|wait|hmm|um)[\s,]+)*(?:"
    rf"(?:what|why|where|when|who|which|whose)\s*(?:{_AUX})\b"
    rf"|how\s+(?:many|much|long|far|old|often|big|do|does|did|can|could|should|would|will|is|are)\b"
    rf"|(?:{_AUX})\s+(?:i|you|we|it|that|this|there|she|he|they)\b)",
    re.IGNORECASE)


def split_sentences(text: str) -> list[str]:
  """Splits prose into sentences (keeps their punctuation); newlines always break.

  >>> split_sentences("Mr. Li has $2.50. How much is left?")
  ['Mr. Li has $2.50.', 'How much is left?']
  """
  pieces, start = [], 0
  for m in _BREAK.finditer(text):
    piece = text[start:m.start() + len(m.group(0).rstrip())].strip()
    last_word = piece.rsplit(None, 1)[-1].lower() if piece else ""
    if "\n" not in m.group(0) and last_word in _ABBREVIATIONS:
      continue  # "Mr. Smith": not a break; the sentence goes on
    if piece:
      pieces.append(piece)
    start = m.end()
  tail = text[start:].strip()
  if tail:
    pieces.append(tail)
  return pieces


def is_question_sentence(sentence: str) -> bool:
  """True if one sentence asks something: it ends with "?" or opens like a question."""
  s = sentence.strip().lstrip("*_#>-• ").strip()
  if not s:
    return False
  if s.rstrip("*_\"') ").endswith("?"):
    return True
  return bool(_INTERROGATIVE.match(s)) and not s.endswith(":")


def question_sentences(text: str) -> list[str]:
  """The sentences of `text` that ask something."""
  return [s for s in split_sentences(text) if is_question_sentence(s)]


def is_question(text: str) -> bool:
  """True if the turn contains at least one question."""
  return any(is_question_sentence(s) for s in split_sentences(text))


def classify_turn(text: str, attempted: bool) -> TurnKind:
  """"attempt" if the verifier found an answer in the turn, else "question" if it asks
  something, else "other".

  >>> classify_turn("Did she sell 48 clips in May?", attempted=False)
  'question'
  """
  if attempted:
    return "attempt"
  return "question" if is_question(text) else "other"
