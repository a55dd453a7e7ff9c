"""The words of the dialogue: student opening, teacher briefing, scripted feedback, Q-priming.

Plain strings, kept in one place so experiments can change them without touching the loop.
The public conversation (what the student sees) never contains privileged text: only the teacher
briefing and the verifier notes (teacher context) do.
"""

from __future__ import annotations

from sml_jax.dialogue import turn_end
from sml_jax.tasks.base import Problem, Verdict

STUDENT_INSTRUCTIONS = {
    "math": ("Solve the following problem. You are talking with a teacher who can help: if you are "
             "unsure or information is missing, ask a question. When you give an answer, end with "
             "'Final answer: <number>'."),
    "code": ("Write a Python function for the following task. You are talking with a teacher who can "
             "help: if you are unsure, ask a question. Give your solution in a ```python code block."),
}

TEACHER_BRIEFING = (
    "You are a teacher helping a student solve a problem. You know the reference solution, but the "
    "student must find the answer themselves: NEVER state the final answer or write the solution "
    "for them. Reply in one to three sentences: point to the first mistake, give a hint, or answer "
    "the student's question.\n\nProblem:\n{statement}\n\nReference solution (secret):\n{privileged}")

VERIFIER_NOTE = "\n\n[Private note for the teacher: {note}]"
QUESTION_NOTE = ("the student asked a question instead of answering. Answer it from the reference "
                 "solution, without giving the final answer.")

# Every teacher's reply to a turn cut off by the token budget inside its answer
# (`turn_end.answer_may_continue`), before any hint.
CUT_OFF_FEEDBACK = ("Your answer was cut off before you finished it. Keep your working short and "
                    "end with 'Final answer: <number>'.")

QPRIME_PROMPT = (
    "A student is solving this problem:\n{statement}\n\nReference solution (secret):\n{privileged}"
    "\n\nThe student's attempt was wrong:\n{attempt}\n\nWrite ONE short question the student "
    "could ask the teacher to get the information they are missing. Do not reveal the answer. "
    "Reply with the question only.")


# In-context demonstrations of the dialogue format (answer format, using feedback, asking when
# information is missing). Base models need them to follow the turn template at all; they are
# part of the prompt (Role.DEMO), never trained on, and the same before and after training.
def _math_demos(question: str, wrong: str, feedback: str, fixed: str, apples: tuple[int, int],
                pens: tuple[int, int, int]) -> tuple[tuple[str, str], ...]:
  """Three math demonstrations: `question` answered `wrong`, then `fixed` after `feedback`; the
  apples question asked when information is missing (apples = (had, bought)); a two-step word
  problem worked in one line (pens = (per box, boxes, given away))."""
  had, bought = apples
  per_box, boxes, away = pens
  opening = STUDENT_INSTRUCTIONS["math"] + "\n\n"
  return (
      ("user", opening + question), ("model", wrong), ("user", feedback), ("model", fixed),
      ("user", opening + f"Tom has some apples and buys {bought} more. How many apples does he "
       "have now?"),
      ("model", "How many apples did Tom have at the start?"),
      ("user", f"He had {had} apples."),
      ("model", f"{had} + {bought} = {had + bought}. Final answer: {had + bought}"),
      ("user", opening + f"A box holds {per_box} pens. Sara fills {boxes} boxes and gives away "
       f"{away} pens. How many pens does she have left?"),
      ("model", f"{boxes} * {per_box} = {boxes * per_box} pens, and {boxes * per_box} - {away} = "
       f"{boxes * per_box - away}. Final answer: {boxes * per_box - away}"),
  )


STUDENT_DEMOS = {
    "math": _math_demos("What is 6 + 7?", "6 + 7 = 12. Final answer: 12",
                        "Not quite. Count up from 6 by 7 again.", "6 + 7 = 13. Final answer: 13",
                        apples=(3, 2), pens=(4, 3, 5)),
    "code": (
        ("user", STUDENT_INSTRUCTIONS["code"] + "\n\nWrite a function add(a, b) that returns the sum "
         "of a and b.\nYour code should pass: assert add(1, 2) == 3"),
        ("model", "```python\ndef add(a, b):\n    return a - b\n```"),
        ("user", "Your program is not correct. The tests report:\nassert add(1, 2) == 3 failed: "
         "add(1, 2) evaluated to -1\nPlease fix it."),
        ("model", "```python\ndef add(a, b):\n    return a + b\n```"),
    ),
}
# With the hint teacher (`dialogue.teacher=hint`) the math demonstrations show the feedback the
# student will get, in the hint teacher's own words (how far off, then a step), answered by an
# anchored attempt that uses it; their numbers are all different (with the demos above, the base
# 270M's wrong answers copied the demo's 12 - "4 * 4 = 12. Final answer: 12" - and it echoed hints
# it had never seen answered).
HINT_STUDENT_DEMOS = {
    "math": _math_demos("What is 26 + 17?", "26 + 17 = 33. Final answer: 33",
                        "33 is quite a bit too low. Add the tens and the ones separately: "
                        "20 + 10 = 30, and 6 + 7 = 13.", "30 + 13 = 43. Final answer: 43",
                        apples=(9, 5), pens=(6, 7, 8)),
    "code": STUDENT_DEMOS["code"],
}
TEACHER_DEMOS = {
    "math": (
        ("user", TEACHER_BRIEFING.format(statement="What is 6 + 7?", privileged="6 + 7 = 13")
         + "\n\nThe student said:\n6 + 7 = 12. Final answer: 12"
         + VERIFIER_NOTE.format(note="the student's answer (12) is wrong.")),
        ("model", "Not quite. Count up from 6 by 7 again."),
    ),
    "code": (
        ("user", TEACHER_BRIEFING.format(
            statement="Write a function add(a, b) that returns the sum of a and b.",
            privileged="def add(a, b):\n    return a + b")
         + "\n\nThe student said:\n```python\ndef add(a, b):\n    return a - b\n```"
         + VERIFIER_NOTE.format(note="the student's answer (def add(a, b): ...) is wrong. Verifier "
                                "output:\nassert add(1, 2) == 3 failed: add(1, 2) evaluated to -1")),
        ("model", "Close. Look at the operator your function uses to combine a and b."),
    ),
}


# Q-priming demonstrations, several per domain. Each question is tied to its own problem (its
# names, objects, numbers), so a writer that pastes one onto another problem is caught
# (`quality.is_demo_copy`) and its question rewritten by the template writer (`questions.py`).
def _qprime_demo(statement: str, privileged: str, attempt: str, question: str):
  return (("user", QPRIME_PROMPT.format(statement=statement, privileged=privileged, attempt=attempt)),
          ("model", question))


QPRIME_DEMOS = {
    "math": (
        *_qprime_demo(
            "Maria bakes 4 trays of cookies with 12 cookies on each tray. She gives 15 cookies to "
            "her neighbours. How many cookies does she have left?",
            "4 * 12 = 48 cookies baked. 48 - 15 = 33 cookies left.\nFinal answer: 33",
            "4 + 12 = 16. 16 - 15 = 1. Final answer: 1",
            "Should I multiply Maria's 4 trays by the 12 cookies on each tray first?"),
        *_qprime_demo(
            "A train runs at 60 km per hour for 3 hours, then at 40 km per hour for 2 hours. How "
            "far does it go in total?",
            "60 * 3 = 180 km. 40 * 2 = 80 km. 180 + 80 = 260 km.\nFinal answer: 260",
            "60 + 40 = 100. Final answer: 100",
            "Do I work out the train's distance for each part of the trip, speed times hours?"),
        *_qprime_demo(
            "Ravi buys notebooks for his class. How much does he spend?",
            "Full problem: Ravi buys 6 notebooks at $3 each. How much does he spend?\n\nSolution:\n"
            "6 * 3 = 18.\nFinal answer: 18",
            "Final answer: 3",
            "How many notebooks does Ravi buy, and what does each one cost?"),
    ),
    "code": (
        *_qprime_demo(
            "Write a function count_vowels(s) that returns the number of vowels in the string s.\n"
            "Your code should pass: assert count_vowels('hello') == 2",
            "def count_vowels(s):\n    return sum(ch in 'aeiouAEIOU' for ch in s)",
            "```python\ndef count_vowels(s):\n    return len(s)\n```",
            "Should count_vowels('hello') count only the letters e and o, not every character?"),
        *_qprime_demo(
            "Write a function second_largest(nums) that returns the second largest distinct number "
            "in the list nums.\nYour code should pass: assert second_largest([1, 4, 2]) == 2",
            "def second_largest(nums):\n    return sorted(set(nums))[-2]",
            "```python\ndef second_largest(nums):\n    return sorted(nums)[-2]\n```",
            "When the largest number repeats, as in second_largest([5, 5, 3]), should the repeat be "
            "skipped?"),
    ),
}


# Three word problems worked in one line each (three, two and two steps: -, * and /), added to the
# hint teacher's math demos on fully specified word problems (every math task but the bare
# expressions of `arithmetic`). On GSM-like problems the base 270M, shown only the short demos
# above, restated the problem instead of computing (a third of its turns) or ran on in
# "X = X + ..." chains. Chosen on 32 gsm_symbolic *train*-split problems (greedy, 4 turns,
# 40-token turns): well-formed turns 0.58 (short demos) -> 0.70 (the first demo alone) -> 0.78
# (all three; 0.85 with 64-token turns); held out (README): 0.70 -> 0.85, and 0.78 -> 0.94 with
# 64-token turns. Each costs ~120 prompt tokens. No number repeats across demos (a first
# version's answer 24 came back as the student's own, `4 * 8 = 24. Final answer: 24`).
WORD_PROBLEM_DEMOS = (
    ("user", STUDENT_INSTRUCTIONS["math"] + "\n\nLena runs a small bakery. On Monday she bakes 3 "
     "trays of muffins with 16 muffins on each tray. She sells 21 muffins in the morning and gives "
     "11 to her neighbours in the evening. How many muffins does she have at the end of the day?"),
    ("model", "3 * 16 = 48 muffins, then 48 - 21 = 27, and 27 - 11 = 16. Final answer: 16"),
    ("user", STUDENT_INSTRUCTIONS["math"] + "\n\nOmar buys 23 pencils for his class. Each pencil "
     "costs 4 dollars, and he pays with a 150-dollar note. How much change does he get?"),
    ("model", "23 * 4 = 92 dollars, and 150 - 92 = 58. Final answer: 58"),
    ("user", STUDENT_INSTRUCTIONS["math"] + "\n\nA farmer collects 270 eggs and packs them in "
     "cartons of 18. He sells each carton for 12 dollars. How much money does he make?"),
    ("model", "270 / 18 = 15 cartons, and 15 * 12 = 180. Final answer: 180"),
)
_EXPRESSION_TASKS = ("arithmetic",)


def student_demos(problem: Problem, enabled: bool = True,
                  teacher: str = "scripted") -> tuple[tuple[str, str], ...]:
  """The student's in-context demonstrations for a dialogue with a `teacher` of that kind (hint:
  plus `WORD_PROBLEM_DEMOS` on a fully specified math word problem)."""
  if not enabled:
    return ()
  if teacher != "hint":
    return STUDENT_DEMOS[problem.domain]
  demos = HINT_STUDENT_DEMOS[problem.domain]
  if (problem.domain == "math" and problem.task not in _EXPRESSION_TASKS
      and not problem.underspecified):
    demos += WORD_PROBLEM_DEMOS
  return demos


def teacher_demos(problem: Problem, enabled: bool = True) -> tuple[tuple[str, str], ...]:
  return TEACHER_DEMOS[problem.domain] if enabled else ()


def qprime_demos(problem: Problem, enabled: bool = True) -> tuple[tuple[str, str], ...]:
  return QPRIME_DEMOS[problem.domain] if enabled else ()


def demo_lines(demos, prompt: str = "") -> tuple[str, ...]:
  """The lines of in-context demonstration turns that a party's turn must not reproduce
  (`quality.is_demo_copy`): every line of every demo turn, except lines that are also in the party's
  real `prompt` (the shared instructions: repeating those is not copying a demonstration)."""
  own = {" ".join(l.split()) for l in prompt.splitlines()}
  out = []
  for _, text in demos:
    out += [l.strip() for l in text.splitlines() if l.strip() and " ".join(l.split()) not in own]
  return tuple(dict.fromkeys(out))


def student_opening(problem: Problem) -> str:
  """First user turn of the public conversation."""
  body = problem.shards[0] if problem.underspecified else problem.statement
  return f"{STUDENT_INSTRUCTIONS[problem.domain]}\n\n{body}"


def teacher_briefing(problem: Problem) -> str:
  return TEACHER_BRIEFING.format(statement=problem.statement, privileged=problem.privileged)


def verifier_note(verdict: Verdict, question: bool = False) -> str:
  """The teacher's dynamic privileged information about the student's latest turn. A question
  (`question`: the turn asks, e.g. a Q-priming question) gets the question note: it is answered
  as a question, never judged as an attempt."""
  if question:
    note = QUESTION_NOTE
  elif turn_end.is_unfinished(verdict):
    note = "the student's turn ran out of tokens before its final answer was complete."
  elif not verdict.attempted:
    note = "the student did not give an answer in this turn."
  elif verdict.correct:
    note = "the student's answer is correct."
  else:
    note = f"the student's answer ({(verdict.extracted or '')[:200]}) is wrong."
    if verdict.feedback:
      note += f" Verifier output:\n{verdict.feedback[:800]}"
  return VERIFIER_NOTE.format(note=note)


def scripted_feedback(problem: Problem, verdict: Verdict) -> str:
  """Feedback from the verifier alone (no LLM): the cheap, leak-free baseline teacher."""
  if turn_end.is_unfinished(verdict):
    return CUT_OFF_FEEDBACK
  if not verdict.attempted:
    if problem.domain == "code":
      return "Please give your complete solution in a ```python code block."
    return "Please work it out and end with 'Final answer: <number>'."
  if problem.domain == "code":
    detail = verdict.feedback.strip()[-600:] or "it does not pass the tests."
    return f"Your program is not correct. The tests report:\n{detail}\nPlease fix it."
  return "That answer is not correct. Check each step of your calculation and try again."


def reveal_shard(shard: str, premature: bool) -> str:
  """Underspecified problems: the user/teacher reveals the next piece of information."""
  lead = "I have not given you all the information yet. " if premature else ""
  return f"{lead}{shard}"


def qprime_prompt(problem: Problem, attempt: str) -> str:
  return QPRIME_PROMPT.format(statement=problem.statement, privileged=problem.privileged,
                              attempt=attempt.strip()[:1000])
