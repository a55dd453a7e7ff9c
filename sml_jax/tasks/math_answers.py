"""Math answers: extraction from a turn, equivalence, and the teacher-leak check.

Two answer formats (`ANSWER_FORMATS`):

- "strict" (the reward default): only an anchored answer counts, first that applies wins:
    1. the last `\\boxed{...}` / `\\fbox{...}`;
    2. the last "Final answer: X" (also "Final answer is X", "**Final Answer:** X"). Inside the
       anchored segment the answer is the value after its last "=" ("Final answer: 18 + 6 = 24"
       reads 24), so "$1,200.00" reads 1200.
  Anything else ("There is 1. Next to this...", "The answer is 7") is not an attempt.
- "lenient" (for reading other people's transcripts, never the reward default): also
    2'. the other anchors: "The answer is X", "Answer: X", "#### X";
    3. the last number in the last sentence with numbers that is not a question (in a sentence
       with "=", the first number after the last "="). When the turn also asks something and
       that number is one of the problem's given numbers, the turn is a question that restates a
       fact ("She sold 48 clips in April. How many in May?"), not an attempt.
A turn with nothing extracted is not an attempt. A turn where the lenient reading finds an answer
but the strict one does not is a *format failure* (`Verdict.format_failure`).

Equivalence: a fast exact numeric path (integers, decimals, "1,080", "$5", "3/4", "\\frac{3}{4}",
"50%") and only otherwise `math_verify` (sympy), bounded by a timeout because sympy can hang on
odd input. Pure python; `math_verify` is imported lazily.
"""

from __future__ import annotations

import fractions
import logging
import math
import re
import threading
from typing import Iterable, Sequence

from sml_jax.tasks import turns
from sml_jax.tasks.base import Problem

log = logging.getLogger(__name__)

# A number token: optional sign (not after a word/digit/")": "72-48" is a subtraction), thousands
# separators, decimals, and an adjacent "/d" fraction part ("3/4"; "48 / 2" stays two numbers).
_NUM = (r"(?:(?<![\w.)\]])[-\u2212])?(?<![\w.])\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
        r"(?:/\d+)?")
_NUM_RE = re.compile(_NUM)
ANSWER_FORMATS = ("strict", "lenient")
_ANCHOR_RE = re.compile(
    r"(?:^[ \t]*####|\banswer\b[\s*_]*(?:is\b|:|=))[\s*_:=]*",
    re.IGNORECASE | re.MULTILINE)
# The strict anchor: "Final answer: X" ("final answer is X", "**Final Answer:** X", "Final answer X").
_FINAL_ANCHOR_RE = re.compile(r"\bfinal\s+answer\b[\s*_]*(?:is\b|:|=)?[\s*_:=]*", re.IGNORECASE)
# Where an anchored answer stops: end of line, end of sentence, ";", or ", <word>" ("5, since").
_SEGMENT_END = re.compile(r"\n|(?<=\S)[.;!?](?=\s|$)|,\s+(?=[A-Za-z])")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FRAC_RE = re.compile(r"^\\[dt]?frac\{\s*(-?\d+)\s*\}\{\s*(-?\d+)\s*\}$")
_MAX_VERIFY_CHARS = 200  # longer "answers" are not sent to sympy
_NUMBER_WORDS = {
    w: i for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen".split())}
_NUMBER_WORDS.update({w: 10 * i for i, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)})
_WORD_NUM_RE = re.compile(
    r"\b(" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")(?:[- ](one|two|three|"
    r"four|five|six|seven|eight|nine))?\b", re.IGNORECASE)


def parse_number(text: str) -> fractions.Fraction | None:
  """Exact value of a plain numeric answer, or None if `text` is not one.

  Accepts "72", "-3.5", "1,080", "$1,080.00", "3/4", "\\frac{3}{4}", "50%", "72." and surrounding
  `$...$`. Returns a Fraction so comparisons are exact.
  """
  s = text.strip().replace("\u2212", "-").replace("\\%", "%").replace("\\$", "$")
  s = re.sub(r"\\[,!; ]", "", s)  # LaTeX spacing: "1\,080"
  s = s.strip().strip("$").strip().rstrip(".").rstrip("%").strip()
  if s.startswith("$"):
    s = s[1:]
  elif s.startswith("-$"):
    s = "-" + s[2:]
  m = _FRAC_RE.match(s)
  if m:
    num, den = int(m.group(1)), int(m.group(2))
    return fractions.Fraction(num, den) if den else None
  if not re.fullmatch(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?", s):
    return None
  s = s.replace(",", "")
  try:
    if "/" in s:
      num, den = s.split("/")
      den_f = fractions.Fraction(den)
      return fractions.Fraction(num) / den_f if den_f else None
    return fractions.Fraction(s)
  except (ValueError, ZeroDivisionError):
    return None


def find_numbers(text: str, words: bool = False) -> list[tuple[int, str, fractions.Fraction]]:
  """All number tokens in `text` as (position, token, value); with `words`, also "twenty-four"."""
  found = []
  for m in _NUM_RE.finditer(text):
    value = parse_number(m.group(0))
    if value is not None:
      found.append((m.start(), m.group(0), value))
  if words:
    for m in _WORD_NUM_RE.finditer(text):
      value = _NUMBER_WORDS[m.group(1).lower()]
      if m.group(2) and value >= 20:
        value += _NUMBER_WORDS[m.group(2).lower()]
      found.append((m.start(), m.group(0), fractions.Fraction(value)))
    found.sort(key=lambda t: t[0])
  return found


def number_values(text: str, words: bool = False) -> set[fractions.Fraction]:
  """The set of numeric values mentioned in `text`."""
  return {v for _, _, v in find_numbers(text, words=words)}


def _boxed_spans(text: str) -> list[tuple[int, int, str]]:
  """(start, end, content) of every closed, non-empty \\boxed{...} with balanced braces."""
  spans = []
  for m in _BOXED_RE.finditer(text):
    depth, i = 1, m.end()
    while i < len(text) and depth:
      depth += {"{": 1, "}": -1}.get(text[i], 0)
      i += 1
    if depth == 0:
      content = text[m.end():i - 1].strip()
      if content:
        spans.append((m.start(), i, content))
  return spans


def _last_boxed(text: str) -> str | None:
  """Content of the last \\boxed{...} with balanced braces (None if absent or unclosed)."""
  spans = _boxed_spans(text)
  return spans[-1][2] if spans else None


def _answer_span(segment: str) -> tuple[int, str] | None:
  """(offset, answer) of the answer inside an anchored segment such as "$72 in total" or
  "2 + 3 = 5": the whole segment if it is a number (or LaTeX), the first number after its last
  "=" ("15 gallons * 8 pints / gallon = 120 pints"), else its first number. What follows the
  answer is not part of it ("10 validInput: 10" is 10, and its answer ends after the first 10)."""
  stripped = segment.strip().strip("*_").strip()
  if not stripped or re.match(r"(?i)not\b|unknown\b|unclear\b", stripped):
    return None
  start = segment.find(stripped)
  if parse_number(stripped) is not None:
    return start, stripped
  if "\\" in stripped or "^" in stripped:  # LaTeX: leave it whole to math_verify
    return (start, stripped) if len(stripped) <= _MAX_VERIFY_CHARS else None
  eq = segment.rfind("=")
  if eq >= 0:
    nums = find_numbers(segment[eq + 1:])
    return (eq + 1 + nums[0][0], nums[0][1]) if nums else None
  nums = find_numbers(segment)
  return (nums[0][0], nums[0][1]) if nums else None


def _answer_from_segment(segment: str) -> str | None:
  """The answer inside an anchored segment (`_answer_span`)."""
  span = _answer_span(segment)
  return span[1] if span else None


_JUNK = re.compile("[\"`\u201c\u201d]|\\$\\$")


def _without_junk(segment: str) -> str:
  """The segment up to a quote, a backtick or "$$", which no answer contains, without a dangling
  "=" or ".": the base 270M runs on past its answer in code-like junk ('125 =",125 =",125' -> '125',
  '37.$$ =$$ = $$</tex>' -> '37'). A segment that starts with one ('"12"') is kept whole."""
  m = _JUNK.search(segment)
  if m is None or not segment[:m.start()].strip():
    return segment
  return segment[:m.start()].rstrip(" \t=.")


def _anchored(text: str, anchor_re: re.Pattern) -> list[tuple[int, int, str]]:
  """(anchor start, answer end, answer) of every anchored answer in `text`, in order."""
  found = []
  for m in anchor_re.finditer(text):
    segment = _without_junk(_SEGMENT_END.split(text[m.end():], maxsplit=1)[0])
    span = _answer_span(segment)
    if span is not None:
      at, answer = span
      found.append((m.start(), m.end() + at + len(answer), answer))
  return found


def _last_anchored(text: str, anchor_re: re.Pattern = _ANCHOR_RE) -> str | None:
  found = _anchored(text, anchor_re)
  return found[-1][2] if found else None


def first_answer_end(text: str) -> int | None:
  """Character offset just after the first strict anchored answer (`\\boxed{X}` or
  "Final answer: X", the whole anchored expression: "Final answer: 18 + 6 = 24" ends after 24),
  or None if the turn has none. Where a student turn that answers should be cut."""
  ends = [end for _, end, content in _boxed_spans(text) if _answer_from_segment(content)]
  ends += [end for _, end, _ in _anchored(text, _FINAL_ANCHOR_RE)[:1]]
  return min(ends) if ends else None


def first_answer_working(text: str) -> str | None:
  """The first "Final answer: ..." expression from its first digit to its answer's end ("39
  multiplicado by 40 = 1560" of "Final answer: 39 multiplicado by 40 = 1560"), when that is the
  turn's first answer (`first_answer_end`); else None. Words in it are units or junk."""
  found = _anchored(text, _FINAL_ANCHOR_RE)[:1]
  if not found or found[0][1] != first_answer_end(text):
    return None
  start, end, _ = found[0]
  digit = re.search(r"\d", text[start:end])
  return text[start + digit.start():end] if digit else None


def extract_answer(text: str, given: Iterable[fractions.Fraction] = (),
                   lenient: bool = False) -> str | None:
  """The student's final answer in `text`, or None if the turn makes no attempt.

  Args:
    text: one student turn.
    given: numeric values stated in the problem; used by the lenient last-number reading (see the
      module docstring).
    lenient: False (default, the reward's reading): only `\\boxed{X}` / "Final answer: X" count.
      True: also other anchors and the last number of the turn (reading other transcripts).
  """
  if not text or not text.strip():
    return None
  boxed = _last_boxed(text)
  if boxed is not None:
    return _answer_from_segment(boxed)
  if not lenient:
    return _last_anchored(text, _FINAL_ANCHOR_RE)
  anchored = _last_anchored(text)
  if anchored is not None:
    return anchored
  sentences = turns.split_sentences(text)
  asks = any(turns.is_question_sentence(s) for s in sentences)
  for sentence in reversed(sentences):
    if turns.is_question_sentence(sentence):
      continue
    if "=" in sentence:  # "120/24 = 5 hours to read 120 pages": the result follows "="
      nums = find_numbers(sentence.rsplit("=", 1)[1])[:1] or find_numbers(sentence)
    else:
      nums = find_numbers(sentence)
    if nums:
      _, token, value = nums[-1]
      if asks and value in set(given):
        return None
      return token
  return None


def _math_verify(pred: str, gold: str, timeout: float) -> bool:
  """math_verify equivalence, never blocking longer than ~`timeout` seconds.

  math_verify's own timeouts use SIGALRM, which works only on the main thread: used there; on
  other threads (batched verification) the call runs in a daemon thread that is abandoned on
  timeout (counts as not equivalent).
  """
  import math_verify  # lazy: sympy import is ~1 s

  seconds = max(1, math.ceil(timeout))
  if threading.current_thread() is threading.main_thread():
    try:
      g = math_verify.parse(gold, parsing_timeout=seconds)
      p = math_verify.parse(pred, parsing_timeout=seconds)
      return bool(g and p and math_verify.verify(g, p, timeout_seconds=seconds))
    except Exception as e:  # math_verify raises on timeouts and odd input
      log.debug("math_verify failed on %r vs %r: %s", pred, gold, e)
      return False

  result: list[bool] = []

  def run():
    try:
      g = math_verify.parse(gold, parsing_timeout=None)
      p = math_verify.parse(pred, parsing_timeout=None)
      result.append(bool(g and p and math_verify.verify(g, p, timeout_seconds=None)))
    except Exception as e:
      log.debug("math_verify failed on %r vs %r: %s", pred, gold, e)

  worker = threading.Thread(target=run, daemon=True, name="math_verify")
  worker.start()
  worker.join(timeout)
  if worker.is_alive():
    log.warning("math_verify timed out after %.1fs on %r vs %r", timeout, pred[:80], gold[:80])
    return False
  return bool(result and result[0])


def answers_equivalent(pred: str | None, gold: str, timeout: float = 3.0) -> bool:
  """True if answer `pred` equals `gold` (exactly for numbers, else by math_verify)."""
  if pred is None or not pred.strip():
    return False
  p, g = parse_number(pred), parse_number(gold)
  if p is not None and g is not None:
    return p == g
  if len(pred) > _MAX_VERIFY_CHARS or len(gold) > _MAX_VERIFY_CHARS:
    return False
  return _math_verify(_as_latex(pred), _as_latex(gold), timeout)


def _as_latex(answer: str) -> str:
  """Wraps an answer in $...$ so math_verify's LaTeX extraction reads it as math."""
  a = answer.strip()
  return a if a.startswith("$") or "\\boxed" in a else f"${a}$"


def states_answer(answer: str | None, text: str, public_texts: Sequence[str] = ()) -> bool:
  """True if `text` states the final `answer`.

  It does when it makes an anchored or boxed statement of it ("the answer is 72"), or when the
  answer's value is among its numbers (digits, or words up to ninety-nine) -- unless that value is
  already public (stated in one of `public_texts`: the problem, revealed shards), in which case only
  an anchored statement counts.
  """
  if not answer or not text:
    return False
  stated = _last_boxed(text) or _last_anchored(text)
  if stated is not None and answers_equivalent(_answer_from_segment(stated) or stated, answer):
    return True
  gold = parse_number(answer)
  if gold is None:  # symbolic answer: only anchored statements are checked
    return False
  if any(gold in number_values(t, words=True) for t in public_texts):
    return False
  return gold in number_values(text, words=True)


def public_texts(problem: Problem) -> list[str]:
  """Everything the student may see of `problem`: statement, shards, the full sharded question."""
  return [problem.statement, *problem.shards, problem.meta.get("question", "")]


def answer_leaked(problem: Problem, teacher_text: str) -> bool:
  """True if a teacher turn gives away `problem`'s final answer (see `states_answer`)."""
  return states_answer(problem.answer, teacher_text, public_texts(problem))


REDACTED = "[redacted]"


def redact_answer(problem: Problem, text: str) -> str:
  """`text` with every statement of `problem`'s final answer that `answer_leaked` flags removed.

  Replaced by "[redacted]": every number token (digits in any format -- "1,200", "$1,200.00",
  "2.50" for 2.5, "5/2" -- or number words) whose value equals the answer, unless that value is
  public (then mentioning it is fine, see `states_answer`); every anchored or boxed statement of
  the answer ("the answer is 48" when 48 is public). Other numbers are kept. If a leak somehow
  remains, the sentences that leak are dropped. Afterwards `answer_leaked(problem, result)` is False.
  """
  answer = problem.answer
  if not answer or not text:
    return text
  spans = []  # (start, end) to replace
  for start, end, content in _boxed_spans(text):
    if answers_equivalent(_answer_from_segment(content) or content, answer):
      spans.append((start, end))
  for start, end, stated in _anchored(text, _ANCHOR_RE):
    if answers_equivalent(stated, answer):
      spans.append((start, end))
  gold = parse_number(answer)
  publics = public_texts(problem)
  if gold is not None and not any(gold in number_values(t, words=True) for t in publics):
    spans += [(pos, pos + len(token)) for pos, token, value in find_numbers(text, words=True)
              if value == gold]
  out, cursor = [], 0
  for start, end in sorted(spans):
    if end <= cursor:
      continue
    out.append(text[cursor:max(start, cursor)])
    out.append(REDACTED)
    cursor = end
  out.append(text[cursor:])
  redacted = "".join(out)
  if answer_leaked(problem, redacted):  # belt and braces: drop the sentences that still leak
    redacted = " ".join(s for s in turns.split_sentences(redacted)
                        if not answer_leaked(problem, s))
    if answer_leaked(problem, redacted):
      redacted = REDACTED
  return redacted
