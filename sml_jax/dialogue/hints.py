"""Teacher texts built from the privileged information, without an LLM: hints, shard replies and
Q-priming questions, plus the turn checks behind the dialogue-quality metrics.

Pure functions (tasks/, prompts, turn_end, expression_hints and the standard library only).
Randomness comes from the `rng` argument (a `random.Random`, or anything with `.choice`), so a
seeded caller gets the same texts.

What a hint may say (decided here, tested in tests/test_hints.py):
- Math: never the final answer or any number equal to it (every text passes the task's
  `answer_leaked` check; a text that would not is replaced by a safe one). It may say whether the
  student's number is too high or too low and *roughly* by how much, as a relative bucket ("a
  little", "quite a bit", "far"), never the exact difference (answer = attempt + difference would
  be trivial). It may name the first intermediate result of the reference solution the student's
  turn does not contain ("48/2 = 24"): intermediate values are the teacher's to give, and any step
  whose text holds a number equal to the answer is skipped.
- Code: the first failing test's call, its expected value as written in the test (standard
  feedback, it is one test of a visible kind and does not give the program), and what the program
  returned or raised.
"""

from __future__ import annotations

import ast
import dataclasses
import fractions
import re
from typing import Collection

from sml_jax.dialogue import prompts, turn_end
from sml_jax.dialogue.expression_hints import expression_hint
from sml_jax.tasks import math_answers, turns
from sml_jax.tasks.base import Problem, Verdict

# --- reference solution steps ---------------------------------------------------------------------

# "48/2 = 24", "80/100 * 10 = 8", "$5 x 3 = $15", "3 + 4 = 7": an arithmetic expression = a number.
_NUMBER = r"\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)%?"
_CONTEXT_BREAK = frozenset("because since so and which that if when but while as".split())
_STEP_RE = re.compile(
    rf"(?P<expr>\(?\s*{_NUMBER}\s*\)?(?:\s*[-+*/x\u00d7\u00f7]\s*\(?\s*{_NUMBER}\s*\)?)+)\s*=\s*"
    rf"(?P<value>-?{_NUMBER}(?:/\d+(?![\d.]))?)")   # "14/42 = 1/3": the value is 1/3, not 1


@dataclasses.dataclass(frozen=True)
class Step:
  expression: str            # "48/2"
  value: fractions.Fraction  # 24
  value_text: str            # "24" as written
  context: str               # words after the result in its line ("clips in May"), may be ""


# A float artifact of a generated solution ("12.500000000000002", "0.666666666666666"): a teacher
# says 12.5 and 0.67.
_LONG_DECIMAL = re.compile(r"\d+\.\d{6,}")


def _tidy_decimals(text: str) -> str:
  """`text` with every decimal of 6+ places rounded to 2 (trailing zeros dropped), unless that
  would make it 0."""
  def tidy(m: re.Match) -> str:
    out = f"{float(m.group()):.2f}".rstrip("0").rstrip(".")
    return out if out != "0" else m.group()
  return _LONG_DECIMAL.sub(tidy, text)


def _solution_text(problem: Problem) -> str:
  text = problem.privileged
  if "Solution:" in text:   # sharded problems: "Full problem: ...\n\nSolution:\n..."
    text = text.split("Solution:", 1)[1]
  return text.split("Final answer:", 1)[0]


def _expression_steps(expression: str) -> list[Step]:
  """Sub-results of an arithmetic expression in evaluation order ("(3 + 4) * 6" -> 3 + 4 = 7)."""
  try:
    tree = ast.parse(expression, mode="eval").body
  except SyntaxError:
    return []
  ops = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
  steps: list[Step] = []

  def value(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
      return fractions.Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
      v = value(node.operand)
      return None if v is None else -v
    if isinstance(node, ast.BinOp) and type(node.op) in ops:
      a, b = value(node.left), value(node.right)
      if a is None or b is None or (isinstance(node.op, ast.Div) and b == 0):
        return None
      v = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op)) if not isinstance(
          node.op, ast.Div) else a / b
      text = ast.get_source_segment(expression, node) or ""
      steps.append(Step(text.strip(), v, _fmt(v), ""))
      return v
    return None

  value(tree)
  return steps[:-1]  # the last one is the whole expression: the answer


def _fmt(v: fractions.Fraction) -> str:
  return str(v.numerator) if v.denominator == 1 else f"{float(v):g}"


def solution_steps(problem: Problem) -> list[Step]:
  """The intermediate results of `problem`'s reference solution, in order, without any step whose
  text holds a number equal to the final answer (so naming a step never states it).

  GSM8K-style worked solutions: every "expression = number" in the solution lines (the
  `<<48/2=24>>` calculator annotations are stripped by the loader; the plain "48/2 = 24" stays).
  Generated arithmetic (`meta["expression"]`): the sub-expressions in evaluation order.
  """
  gold = math_answers.parse_number(problem.answer or "")
  steps = []
  if problem.meta.get("expression"):
    steps = _expression_steps(problem.meta["expression"])
  else:
    for line in _solution_text(problem).splitlines():
      for m in _STEP_RE.finditer(_tidy_decimals(line)):
        value = math_answers.parse_number(m.group("value").rstrip("%"))
        if value is None:
          continue
        tail = []
        for w in re.split(r"[.,;:!?=(]", m.string[m.end():], maxsplit=1)[0].split()[:6]:
          if w.lower() in _CONTEXT_BREAK or not re.fullmatch(r"[A-Za-z'-]+", w):
            break
          tail.append(w)
        steps.append(Step(" ".join(m.group("expr").split()), value, m.group("value"),
                          " ".join(tail)))
  out = []
  for s in steps:
    numbers = math_answers.number_values(f"{s.expression} {s.value_text} {s.context}", words=True)
    if gold is not None and gold in numbers:
      continue
    out.append(s)
  return out


def first_unreached_step(problem: Problem, attempt_text: str) -> Step | None:
  """The first solution step whose result is not among the numbers of the student's turn."""
  seen = math_answers.number_values(attempt_text)
  return next((s for s in solution_steps(problem) if s.value not in seen), None)


# --- math hints ------------------------------------------------------------------------------------

_FORMAT_REMINDERS = (
    "Please end your turn with 'Final answer: <number>' so I can check it.",
    "When you answer, finish with 'Final answer: <number>'.",
    "I could not find your final answer. Write it as 'Final answer: <number>'.",
)
_DIRECTION = {
    "high": ("{attempt} is {size} too high.", "Your answer of {attempt} is {size} too large.",
             "That is {size} more than it should be."),
    "low": ("{attempt} is {size} too low.", "Your answer of {attempt} is {size} too small.",
            "That is {size} less than it should be."),
}
_SIZES = ((fractions.Fraction(1, 10), ("a little", "slightly")),
          (fractions.Fraction(1, 2), ("quite a bit", "noticeably")),
          (None, ("far", "a lot")))
_STEP_HINTS = (
    "Check this step: {expr} = {value}{context}.",
    "One step you need: {expr} = {value}{context}.",
    "Try working out {expr} first: it comes to {value}{context}.",
    "Look at {expr}: that gives {value}{context}.",
)
_KEEP_GOING = ("Go through your steps again, one at a time.",
               "Re-read the problem and check each calculation.",
               "Check which quantity the question asks for.")
_SAFE = "Not quite. Check your steps again."


def _size_bucket(attempt: fractions.Fraction, gold: fractions.Fraction, rng) -> str:
  rel = abs(attempt - gold) / max(abs(gold), 1)
  for limit, words in _SIZES:
    if limit is None or rel < limit:
      return rng.choice(words)
  return "far"


def _step_sentence(step: Step, rng) -> str:
  context = f" ({step.context})" if step.context else ""
  return rng.choice(_STEP_HINTS).format(expr=step.expression, value=step.value_text,
                                        context=context)


def leak_free(problem: Problem, text: str, fallback: str) -> str:
  return fallback if math_answers.answer_leaked(problem, text) else text


def math_hint(problem: Problem, attempt_text: str, verdict: Verdict, rng,
              student_text: str | None = None) -> str:
  """A hint on a wrong (or unanchored) math turn; see the module docstring for what it may say.

  - no anchored answer (`verdict.format_failure`, or nothing attempted): a format reminder,
    plus the first step the turn has not reached;
  - a numeric answer: too high / too low with a rough size, plus the first unreached step;
  - otherwise (symbolic answer): the first unreached step, else a generic nudge.
  `student_text`: the student's turns (default `attempt_text`): the parts of a one-operation
  problem it has reached move `expression_hint` on.
  """
  parts = []
  gold = math_answers.parse_number(problem.answer or "")
  attempt = math_answers.parse_number(verdict.extracted) if verdict.extracted else None
  if turn_end.is_unfinished(verdict):
    parts.append(prompts.CUT_OFF_FEEDBACK)
  elif verdict.format_failure or not verdict.attempted:
    parts.append(rng.choice(_FORMAT_REMINDERS))
  elif attempt is not None and gold is not None and attempt != gold:
    side = "high" if attempt > gold else "low"
    shown = _fmt(attempt)  # the number, not its raw text ("2.$$" -> "2")
    parts.append(rng.choice(_DIRECTION[side]).format(
        attempt=shown, size=_size_bucket(attempt, gold, rng)))
  step = first_unreached_step(problem, attempt_text)
  if step is not None:
    parts.append(_step_sentence(step, rng))
  elif len(parts) < 2:
    reached = math_answers.number_values(attempt_text if student_text is None else student_text)
    how = expression_hint(problem, rng, reached)
    parts.append(how if how and not math_answers.answer_leaked(problem, how)
                 else rng.choice(_KEEP_GOING))
  text = " ".join(parts)
  return leak_free(problem, text, _SAFE)


# --- code hints ------------------------------------------------------------------------------------

_CODE_FORMAT = ("Please put your whole solution in one ```python code block.",
                "I could not find your program. Write it in a ```python block.")
_FAILED = ("Your program fails `{test}`: it returned {got}.",
           "Check `{test}`: your function gives {got} there.",
           "For `{test}` your program returns {got}.")
_RAISED = ("`{test}` raises {error} in your program.",
           "Your program crashes on `{test}` with {error}.")


def code_hint(problem: Problem, verdict: Verdict, rng) -> str:
  """The first failing test's call and what the program returned or raised, read from the
  verifier output the Verdict carries (`Verdict.feedback`, see `code_exec.feedback_text`). The
  test as written shows its expected value (fine: one test, and no program)."""
  fb = verdict.feedback or ""
  if not verdict.attempted:
    return rng.choice(_CODE_FORMAT)
  if verdict.correct:
    return "All tests pass."
  m = re.search(r"^Failed: (?P<test>.+)\n  the left side evaluated to: (?P<got>.+)$", fb, re.M)
  if m:
    return rng.choice(_FAILED).format(test=m.group("test").strip(), got=m.group("got").strip())
  m = re.search(r"^Failed: (?P<test>.+)$", fb, re.M)
  if m:
    return f"Your program fails `{m.group('test').strip()}`."
  m = re.search(r"^Error in (?P<test>.+):\n", fb, re.M)
  if m:
    tb = re.split(r"\n(?=Failed: |Error in |\(\d+ more|Program output:)", fb[m.end():])[0]
    error = _last_error_line(tb)
    return rng.choice(_RAISED).format(test=m.group("test").strip(), error=error)
  m = re.search(r"^Timed out \(limit [^)]*\) while running: (?P<test>.+)$", fb, re.M)
  if m:
    return f"Your program does not finish on `{m.group('test').strip()}`: look for an endless loop."
  if "raised an error before any test ran" in fb:
    return ("Your program fails before any test runs: "
            f"{_last_error_line(fb.split('ran:', 1)[-1])}. Define the function without running it.")
  if "before the tests ran" in fb:
    return "Your program stops before the tests run: do not call exit() or read input."
  return "Your program does not pass the tests yet; check the example test in the problem."


def _last_error_line(traceback_text: str) -> str:
  lines = [l.strip() for l in traceback_text.strip().splitlines() if l.strip()]
  errors = [l for l in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", l)]
  return (errors or lines or ["an error"])[-1][:200]


# --- underspecified problems ----------------------------------------------------------------------

STOPWORDS = frozenset(
    "a an the of to in on at for and or but is are was were be been do does did how many much what "
    "which who whom whose when where why can could should would will i you he she it we they his "
    "her its their my me there this that these those with from by as if so than then each per all "
    "any some more most have has had not no yes please tell know need about "
    # common verbs: a question's subject ("the snack"), not its verb ("cost"), picks the shard
    "cost buy bought spend spent pay paid get got make made take took use used sell sold give "
    "gave want like".split())


def _content_words(text: str) -> set[str]:
  words = re.findall(r"[a-z]+", text.lower())
  return {w.rstrip("s") if len(w) > 3 else w for w in words if w not in STOPWORDS and len(w) > 1}


def revealed_set(shards_revealed: int | Collection[int]) -> set[int]:
  return set(range(shards_revealed)) if isinstance(shards_revealed, int) else set(shards_revealed)


def shard_reply(problem: Problem, question_text: str,
                shards_revealed: int | Collection[int]) -> tuple[str, int | None]:
  """The teacher's reply to a student's turn on a sharded problem: the unrevealed shard the
  question asks about (most content words in common with the question), otherwise the next
  unrevealed shard. `shards_revealed`: how many shards were shown (shards[0] counts), or the set
  of shown indices. Returns (text, shard index), or a closing text and None when all are shown."""
  revealed = revealed_set(shards_revealed)
  hidden = [i for i in range(1, len(problem.shards)) if i not in revealed]
  if not hidden:
    return "You have all the information you need now.", None
  asked = _content_words(question_text) if turns.is_question(question_text) else set()
  overlap = {i: len(asked & _content_words(problem.shards[i])) for i in hidden}
  best = max(hidden, key=lambda i: (overlap[i], -i))
  index = best if overlap[best] > 0 else hidden[0]
  return problem.shards[index], index


# --- answers to a student's question (the teacher answers a question as a question) -------------

_STEP_ANSWERS = (
    "Good question. One step you need: {expr} = {value}{context}.",
    "Here is a step that helps: {expr} = {value}{context}.",
    "Start from this: {expr} = {value}{context}.",
    "Work out {expr} first: it comes to {value}{context}.",
)
# No step left to name (or none found in the solution): a nudge that claims nothing about the
# student's progress.
_ALL_STEPS = ("Write down each quantity the problem gives, then combine them one step at a time.",
              "Start from the numbers in the problem and work out one quantity at a time.")
_TEST_ANSWERS = ("Your function must also pass `{test}`.", "Here is another test it must pass: `{test}`.",
                 "Good question: check it against `{test}`.")


def test_call(test: str) -> str:
  """"assert f(1, 2) == 3" -> "f(1, 2)" (the left side of the assert)."""
  body = re.sub(r"^\s*assert\s+", "", test.strip())
  return body.split("==", 1)[0].strip() if "==" in body else body


def unshown_tests(problem: Problem, seen_text: str) -> list[str]:
  """Tests the student has not seen (not in the statement, nor in the conversation so far)."""
  shown = problem.statement + "\n" + seen_text
  return [t for t in problem.tests if t.strip() not in shown]


def answer_question(problem: Problem, question_text: str, seen_text: str, rng,
                    student_text: str | None = None) -> str:
  """The teacher's answer to a student's question on a fully specified problem, from the
  privileged information and never the final answer.

  Math: the first step of the reference solution the conversation (`seen_text`: the turns so far)
  has not reached, else how to work out a one-operation problem, else "combine what you have".
  Code: a test the question names, else one the student has not seen (a visible kind of
  privileged information: a test, not the program), else the function name to use.
  Passes the task's leak check (the caller checks again).
  """
  if problem.domain == "code":
    named = [t for t in problem.tests if test_call(t) and test_call(t) in question_text]
    fresh = named or unshown_tests(problem, seen_text)
    if fresh:
      return rng.choice(_TEST_ANSWERS).format(test=fresh[0].strip())
    name = problem.entry_point or "the function"
    return (f"Your function must be called `{name}`; the test in the problem shows how it is "
            "called and what it must return.")
  step = first_unreached_step(problem, seen_text)
  if step is not None:
    context = f" ({step.context})" if step.context else ""
    text = rng.choice(_STEP_ANSWERS).format(expr=step.expression, value=step.value_text,
                                            context=context)
    return leak_free(problem, text, _SAFE_ANSWER)
  how = expression_hint(problem, rng, math_answers.number_values(
      seen_text if student_text is None else student_text))
  if how and not math_answers.answer_leaked(problem, how):
    return how
  return rng.choice(_ALL_STEPS)


_SAFE_ANSWER = "Re-read the problem: which quantities does it give, and which does it ask for?"
