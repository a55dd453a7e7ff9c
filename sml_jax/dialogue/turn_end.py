"""Where a party's turn ends when the model does not say so itself.

Base (not instruction-tuned) models rarely emit `<end_of_turn>`: after "Final answer: 10" the
270M goes on with junk and invented follow-up questions, which would corrupt answer extraction
and the next turns. The dialogue cuts each sampled turn at its natural end:

  student, math:  right after the first anchored answer ("Final answer: X" or \\boxed{X}; the
                  whole anchored expression: "Final answer: 18 + 6 = 24" ends after 24), even
                  when a question comes before it ("What is 6 + 7? 6 + 7 = 13. Final answer:
                  13" keeps its answer); else after the first question mark (a question
                  turn); else the whole turn
  student, code:  right after the first complete ``` fenced block ``` (even after a question),
                  else after the first question mark, else the whole turn
  teacher:        at the last sentence end of its first line (the briefing asks for 1-3 sentences)

A math turn that runs out of token budget right after a digit of its anchored answer
(`answer_may_continue`) may have been cut inside its number, so its answer is not read: it is
a format failure, not an attempt.

The cut is made on tokens (the longest prefix whose text stays within the cut), the tokens after
it are removed from the KV cache (`Sampler.truncate`), and the turn is closed with an
`<end_of_turn>` the student is trained on: the dialogue teaches the model where its turn ends.
"""

from __future__ import annotations

import functools
import re
from typing import Sequence

from sml_jax.tasks import math_answers

_CODE_BLOCK = re.compile(r"```[a-zA-Z0-9_+-]*\n.*?```", re.S)
_PARAGRAPH_END = re.compile(r"\S.*?(?=\n\s*\n|\n|$)", re.S)


def student_cut(text: str, domain: str) -> int | None:
  """Character offset where a student turn should end, or None to keep it whole."""
  if domain == "math":
    end = math_answers.first_answer_end(text)
  else:
    m = _CODE_BLOCK.search(text)
    end = m.end() if m else None
  if end is not None:
    return end
  q = text.find("?")
  if q >= 0:
    return q + 1
  return None


# The verifier note (`Verdict.feedback`) of a turn whose answer `answer_may_continue`.
UNFINISHED_NOTE = "the turn ran out of tokens inside its final answer, so it was not read."


def is_unfinished(verdict) -> bool:
  """Whether `verdict` (a `tasks.base.Verdict`) is that of a turn cut off inside its answer."""
  return verdict.feedback == UNFINISHED_NOTE


# After the last digit of an anchored answer, what the number or expression may go on with: a
# decimal point, a thousands comma or a fraction bar ("2." of 2.5, "1,2" of 1,200, "3/" of 3/4),
# or an operator and more of an expression, numbers and operators only ("Final answer: 18 + 6"
# of 18 + 6 = 24; "110 = 110 = 11" running on to the budget; not "42 - that is all").
# A closing "**" (markdown bold: "**Final answer: 42**") is not an operator.
_CONTINUES = re.compile(r"(?:[.,/]\d*|[ \t]*(?:[-+/=]|\*(?!\*\s*\Z))[-+*/=.,()\d \t]*)?")


def answer_may_continue(text: str, domain: str) -> bool:
  """True if a math turn that ran out of token budget may have been cut inside its anchored
  answer: `text` (the turn as sampled, before any cut) ends right after a digit of its first
  answer, or after what `_CONTINUES` allows ("... = 2100. Final answer: 210" cut from 2100). Its
  number is unfinished, so it is not an attempt. Call it only for turns that did not stop by
  themselves: a line break or a word after the answer ends the number."""
  if domain != "math":
    return False
  end = math_answers.first_answer_end(text)
  if end is None or not text[:end][-1:].isdigit():
    return False
  # A word after the answer's first digit means the answer had ended ("Final answer: 3 apples").
  anchor = text[:end].lower().rfind("answer")
  if anchor >= 0 and re.search(r"\d[^\n]*[^\W\d_]", text[anchor + len("answer"):end]):
    return False
  return _CONTINUES.fullmatch(text[end:]) is not None


def teacher_cut(text: str) -> int | None:
  """End of the first line's last complete sentence (the junk a base model writes where it
  should stop sits on the same line), else the end of the first line."""
  m = _PARAGRAPH_END.search(text)
  if m is None:
    return None
  end = m.end()
  line = text[:end]
  last = max(line.rfind(". "), line.rfind("? "), line.rfind("! "))
  if line.rstrip()[-1:] in ".?!":
    end = len(line.rstrip())
  elif last >= 0:
    end = last + 1
  # Sampled with a line stop (`line_stop`), the text ends with the line break: cut it too.
  return None if end >= len(text.rstrip()) and text == text.rstrip() else end


@functools.lru_cache(maxsize=4)
def _line_stop(tokenizer):
  from sml_jax.sampling.decode import LineStop  # pylint: disable=g-import-not-at-top
  sp = tokenizer._sp  # pylint: disable=protected-access
  pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
  blank = tuple(i for i, p in enumerate(pieces)
                if not sp.is_control(i) and p.replace("\u2581", " ").strip() == "")
  return LineStop(line_end=tuple(i for i in blank if "\n" in pieces[i]), blank=blank)


def line_stop(tokenizer):
  """The sampler's `LineStop` for turns cut at their first line (the teacher's): decoding ends
  at the first line break after some text instead of running to the token budget."""
  return _line_stop(tokenizer)


def tokens_within(tokenizer, ids: Sequence[int], cut: int) -> int:
  """The number of leading tokens whose decoded text reaches `cut` characters (at least 1)."""
  ids = list(ids)
  lo, hi = 1, len(ids)
  while lo < hi:  # Smallest k with len(decode(ids[:k])) >= cut; decode length grows with k.
    mid = (lo + hi) // 2
    if len(tokenizer.decode(ids[:mid])) >= cut:
      hi = mid
    else:
      lo = mid + 1
  return lo
