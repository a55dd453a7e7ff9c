"""Privileged hint texts (`dialogue.hints`): informative, varied, deterministic, never leaking."""

import os
import fractions
import random
import re

import pytest

from sml_jax.dialogue import hints, prompts, quality, question_templates
from sml_jax.tasks import generated_math, gsm8k, underspecified
from sml_jax.tasks.base import Problem, Verdict

needs_gsm8k = pytest.mark.skipif(not os.path.exists(gsm8k.default_train_path()),
                                 reason="GSM8K train split not available")


def _attempts(p):
  gold = int(float(p.answer))
  return [f"Final answer: {gold + 1}", f"So {gold - 1}. Final answer: {gold - 1}",
          f"Final answer: {gold * 3 + 7}", "Final answer: 0", f"maybe {gold + 2}",
          "How do I start?", "I am not sure.", f"It is {gold}? No. Final answer: {gold + 10}"]


def _math_problems():
  problems = []
  for level in (0, 2, 4, 5):
    problems += generated_math.ArithmeticTask(difficulty=level).problems("train", limit=40)
  if os.path.exists(gsm8k.default_train_path()):
    problems += gsm8k.GSM8KTask().problems("train", limit=250, seed=5)
    problems += underspecified.GSM8KShardedTask().problems("train", limit=80)
  return problems


def test_math_hints_and_questions_never_leak():
  task = gsm8k.GSM8KTask()  # every math task shares the verifier and `leaked`
  rng = random.Random(0)
  n = 0
  for p in _math_problems():
    for text in _attempts(p):
      v = task.verify(p, text)
      if v.correct:
        continue
      for _ in range(2):
        hint = hints.math_hint(p, text, v, rng)
        question = question_templates.template_question(p, text, rng)
        assert hint and not task.leaked(p, hint), (p.statement, p.answer, hint)
        assert question.endswith("?") and not task.leaked(p, question), (p.answer, question)
        n += 1
      if p.underspecified:
        for k in range(1, len(p.shards) + 1):
          q = question_templates.template_question(p, text, rng, shards_revealed=k)
          assert not task.leaked(p, q), (p.answer, q)
  assert n > 500


def test_math_hint_says_which_way_and_is_varied():
  p = generated_math.ArithmeticTask(difficulty=4).problems("train", limit=1)[0]
  task = gsm8k.GSM8KTask()
  gold = int(p.answer)
  high, low = f"Final answer: {gold + 1000}", f"Final answer: {gold - 1000}"
  high_hints = {hints.math_hint(p, high, task.verify(p, high), random.Random(s)) for s in range(30)}
  low_hints = {hints.math_hint(p, low, task.verify(p, low), random.Random(s)) for s in range(30)}
  assert all(("high" in h or "large" in h or "more" in h) for h in high_hints), high_hints
  assert all(("low" in h or "small" in h or "less" in h) for h in low_hints), low_hints
  assert all(("far" in h or "a lot" in h) for h in high_hints | low_hints)
  assert len(high_hints) >= 4  # several templates, chosen by the rng
  # Deterministic given the rng's seed.
  assert hints.math_hint(p, high, task.verify(p, high), random.Random(3)) == hints.math_hint(
      p, high, task.verify(p, high), random.Random(3))


def test_format_reminder_when_the_answer_is_not_anchored():
  p = generated_math.ArithmeticTask(difficulty=0).problems("train", limit=1)[0]
  v = gsm8k.GSM8KTask().verify(p, "I got 3")
  assert v.format_failure
  assert "Final answer: <number>" in hints.math_hint(p, "I got 3", v, random.Random(0))


@needs_gsm8k
def test_gsm8k_steps_come_from_the_worked_solution():
  p = gsm8k.GSM8KTask().problems("train", limit=None)
  natalia = next(q for q in p if q.statement.startswith("Natalia sold clips"))
  steps = hints.solution_steps(natalia)
  assert [(s.expression, s.value_text) for s in steps] == [("48/2", "24")]  # 48+24=72 skipped
  hint = hints.math_hint(natalia, "Final answer: 96", Verdict(True, False, "96"), random.Random(0))
  assert "48/2" in hint and "24" in hint and "72" not in hint
  # A turn that already reached 24 gets no step (the only non-answer step is done).
  assert hints.first_unreached_step(natalia, "48/2 = 24. Final answer: 50") is None


def test_float_artifacts_of_a_generated_solution_are_rounded_in_its_steps():
  """gsm_symbolic's generated solutions carry float noise (eval problem 53 of seed 0); the hint
  teacher quoted it: "Try working out 15.083333333333336 - 2 - 7/12 first: it comes to
  12.500000000000002". A teacher says 15.08 and 12.5, and a student who wrote 12.5 has reached
  the step."""
  p = Problem(id="g", task="gsm_symbolic", domain="math", statement="s", answer="6",
              privileged="After Tuesday, he had 15.083333333333336 - 2 - 7/12 = "
                         "12.500000000000002 hours of TV left.\nThen 12.500000000000002 - 10 = "
                         "2.5000000000000018 hours left, and 0.0000004 * 3 = 0.0000012.\n"
                         "Final answer: 6")
  steps = hints.solution_steps(p)
  assert [(s.expression, s.value_text, s.value) for s in steps] == [
      ("15.08 - 2 - 7/12", "12.5", fractions.Fraction(25, 2)),
      ("12.5 - 10", "2.5", fractions.Fraction(5, 2)),
      ("0.0000004 * 3", "0.0000012", fractions.Fraction(12, 10**7))]
  assert steps[0].context == "hours of TV left"
  hint = hints.math_hint(p, "Final answer: 9", Verdict(True, False, "9"), random.Random(0))
  assert "15.08 - 2 - 7/12" in hint and "0000000" not in hint, hint
  assert hints.first_unreached_step(p, "15 - 2.6 = 12.5. Final answer: 9").value_text == "2.5"


def test_a_step_whose_result_is_a_fraction_keeps_it():
  """Seen in the word-problem RL rollouts (Dec 7, gsm_symbolic train problem 727): the solution's
  "14/42 = 1/3 miles per minute" became the hint "Try working out 14/42 first: it comes to 1."."""
  p = Problem(id="g", task="gsm_symbolic", domain="math", statement="s", answer="64",
              privileged="Ava walks 14 miles per 42 minutes, or 14/42 = 1/3 miles per minute.\n"
                         "On the sidewalk, 2 * 1/3 = 2/3 miles per minute.\nFinal answer: 64")
  steps = hints.solution_steps(p)
  assert [(s.expression, s.value_text, s.value, s.context) for s in steps] == [
      ("14/42", "1/3", fractions.Fraction(1, 3), "miles per minute"),
      ("2 * 1/3", "2/3", fractions.Fraction(2, 3), "miles per minute")]
  hint = hints.math_hint(p, "Final answer: 9", Verdict(True, False, "9"), random.Random(0))
  assert "14/42" in hint and "1/3" in hint, hint


def test_arithmetic_steps_follow_evaluation_order():
  p = Problem(id="a", task="arithmetic", domain="math", statement="What is (3 + 4) * 6 - 2?",
              privileged="", answer="40", meta={"expression": "(3 + 4) * 6 - 2"})
  assert [(s.expression, s.value_text) for s in hints.solution_steps(p)] == [
      ("3 + 4", "7"), ("(3 + 4) * 6", "42")]
  q = question_templates.template_question(p, "Final answer: 12", random.Random(0))
  assert "3 + 4" in q and q.endswith("?")


SHARDED = Problem(id="s", task="gsm8k_sharded", domain="math", statement="How much do they spend?",
                  privileged="", answer="57",
                  shards=("How much do they spend?", "A ticket costs $12.",
                          "A group of 4 friends buys tickets.", "They share a $9 snack."))


def test_shard_reply_answers_the_question_asked_else_reveals_the_next():
  assert hints.shard_reply(SHARDED, "How much does the snack cost?", 1) == (SHARDED.shards[3], 3)
  assert hints.shard_reply(SHARDED, "How many friends are there?", 1) == (SHARDED.shards[2], 2)
  assert hints.shard_reply(SHARDED, "Final answer: 12", 1) == (SHARDED.shards[1], 1)
  assert hints.shard_reply(SHARDED, "What about the weather?", {0, 1}) == (SHARDED.shards[2], 2)
  assert hints.shard_reply(SHARDED, "How much is the snack?", 4)[1] is None


def test_template_question_asks_for_the_missing_fact():
  q = question_templates.template_question(SHARDED, "Final answer: 48", random.Random(0), shards_revealed=2)
  assert "friends" in q and q.endswith("?") and "4" not in q
  # The teacher's shard reply to that question is the fact it asks for.
  assert hints.shard_reply(SHARDED, q, 2) == (SHARDED.shards[2], 2)


def test_code_hint_names_the_failing_test_and_what_came_back():
  fb = ("3 of 3 tests failed.\nFailed: assert f(1) == 2\n  the left side evaluated to: 5\n"
        "Failed: assert f(2) == 3\n  the left side evaluated to: 6")
  h = hints.code_hint(Problem("c", "mbpp", "code", "", ""), Verdict(True, False, "x", fb),
                      random.Random(0))
  assert "assert f(1) == 2" in h and "5" in h and "f(2)" not in h
  fb = ("1 of 3 tests failed.\nError in assert f([]) == 0:\nTraceback (most recent call last):\n"
        '  File "solution.py", line 2, in f\nIndexError: list index out of range')
  h = hints.code_hint(Problem("c", "mbpp", "code", "", ""), Verdict(True, False, "x", fb),
                      random.Random(0))
  assert "assert f([]) == 0" in h and "IndexError: list index out of range" in h
  h = hints.code_hint(Problem("c", "mbpp", "code", "", ""), Verdict(False, False),
                      random.Random(0))
  assert "```python" in h


def test_code_hint_from_a_real_verdict():
  from sml_jax.tasks import code
  mbpp = code.MBPPTask(timeout=10.0)
  p = next(q for q in mbpp.all_problems() if q.id == "mbpp/2")
  v = mbpp.verify(p, "```python\ndef similar_elements(a, b):\n    return a\n```")
  h = hints.code_hint(p, v, random.Random(0))
  assert p.tests[0] in h and "(3, 4, 5, 6)" in h, (h, v.feedback)
  assert not mbpp.leaked(p, h)


def test_demo_copy_and_well_formed():
  demo_lines = [t for _, t in prompts.STUDENT_DEMOS["math"]]
  assert quality.is_demo_copy("How many apples did Tom have at the start?", demo_lines)
  assert quality.is_demo_copy("  how many apples did Tom have at the start ", demo_lines)
  assert not quality.is_demo_copy("How many eggs does she use each day?", demo_lines)
  assert quality.well_formed("6 + 7 = 13. Final answer: 13", "math")
  assert quality.well_formed("How many eggs does she use each day?", "math")
  assert not quality.well_formed("There is 1.Next to this. Alright.", "math")
  assert not quality.well_formed("The solution is 5.\u8f83\u4f4e\u4e2a\u65f6. Final answer: 5",
                               "math")
  assert quality.well_formed("```python\ndef f():\n    return 1\n```", "code")
  assert not quality.well_formed("def f(): return 1", "code")


def test_junk_after_the_anchored_answer_is_not_well_formed():
  """Seen in the study's seed-1 eval (pinned 02e0d38, turns not cut at '$$') and in demo
  rollouts: junk after the answer. A unit from the problem, or punctuation, is fine."""
  statement = "Tom has 5 apples and buys 19 more apples. How many apples does he have?"
  for text in ("68 * 59 = 442. Final answer: 442.$$$$$$$$$$", "Final answer: 74 oynuyoruz",
               "Final answer: 24.\\noindent\\noindent", "Final answer: 24 саме",
               # Seen after 4 RL steps on gsm_symbolic (Dec 7): junk between repeats of the answer.
               "Final answer: 24 validInput: 24 validInput: 24", "Final answer: 24 subarray: 24",
               "Final answer: $5 multiplicado by 19 = $24 multiplicado by 19 = $24",
               "Final answer: 39 multiplicado by 40 = 1560"):
    assert quality.math_answers.extract_answer(text) is not None
    assert not quality.well_formed(text, "math", statement), text
  for text in ("5 + 19 = 24. Final answer: 24", "Final answer: 24 apples.", "Final answer: 24.\n",
               "Final answer: 5 + 19 = 24", "\\boxed{24}.", "Final answer is 24",
               "Final answer: 5 apples + 19 apples = 24 apples", "Final answer: \\boxed{24}",
               "Final answer: x = 24", "Final answer: total = 24",
               "Final Answer: The total is 24 apples.",
               "The final answer is not obvious. 5 + 19 = 24, so \\boxed{24}"):
    assert quality.well_formed(text, "math", statement), text


def test_a_restated_problem_is_not_a_question():
  # Seen from the base 270M on gsm_symbolic (eval split): it copies the problem, question mark and all.
  statement = ("The area of David's rectangular office is 2277 square feet. If the length of his "
               "room is 11 yards, what is the perimeter of the room in feet?")
  echo = ("The area of David's rectangular office is 2277 square feet. If the length of his room "
          "is 11 yards, what is the perimeter of the room in feet?")
  assert quality.is_echo(echo, statement)
  assert not quality.well_formed(echo, "math", statement)
  assert quality.well_formed(echo, "math")                # without the statement it reads as a question
  asked = "Is the length 11 yards the same as 33 feet?"
  assert not quality.is_echo(asked, statement) and quality.well_formed(asked, "math", statement)
  # An anchored attempt that restates the problem first is still an attempt.
  assert quality.well_formed(echo + " 2277 / 33 = 69. Final answer: 204", "math", statement)
  assert not quality.is_echo("What is the perimeter?", statement)   # too short to call a copy


@pytest.mark.parametrize("expression,must_have", [
    ("55 * 13", ("550", "55 * 3")),      # split the two-digit factor: 55 * 10, then 55 * 3
    ("7 * 24", ("20", "7 * 4")),
    ("30 * 4", ("3 * 4 = 12", "multiply by 10")),
])
def test_multiplication_hint_splits_a_two_digit_factor(expression, must_have):
  answer = str(eval(expression))  # noqa: S307 (a test constant)
  p = Problem(id="m", task="arithmetic", domain="math", statement=f"What is {expression}?",
              privileged=f"{expression} = {answer}", answer=answer, meta={"expression": expression})
  for seed in range(6):
    h = hints.expression_hint(p, random.Random(seed))
    assert all(x in h for x in must_have) or "Multiply in two parts" in h, h
    assert answer not in h.replace(",", "")
    assert not hints.math_answers.answer_leaked(p, h)


def test_a_paraphrased_demo_question_is_a_demo_copy():
  demo_lines = [t for _, t in prompts.STUDENT_DEMOS["math"]]
  # Seen in the demo's RL rollouts on sums: the demo's apple question with two words changed.
  assert quality.is_demo_copy("How many more apples did Tom have at the end?", demo_lines,
                              statement="What is 5 + 10?")
  # Words the student takes from its own problem do not count towards a copy.
  statement = "Tom has 8 apples and did not have any at the start. He buys 4. How many now?"
  assert not quality.is_demo_copy("Did Tom have any apples at the start?", demo_lines,
                                  statement=statement)
  assert not quality.is_demo_copy("5 + 10 = 15. Final answer: 15", demo_lines,
                                  statement="What is 5 + 10?")


@pytest.mark.parametrize("expression,student,must_have", [
    ("67 * 30", "201 = 201", "201 by 10"),                       # the first part reached
    ("55 * 13", "55 * 10 = 550. Final answer: 550", "Now work out 55 * 3"),
    ("55 * 13", "550 + 165 = 700. Final answer: 700", "550 + 165"),
    ("54 + 26", "54 + 26 = 70. Final answer: 70", "Now add the ones, 4 + 6"),
    ("54 + 26", "70 and 10. Final answer: 70", "70 + 10"),
    ("83 - 27", "83 - 20 = 63. Final answer: 63", "the 7 that is left"),
])
def test_a_one_operation_hint_moves_on_once_the_student_has_a_part(expression, student, must_have):
  """The split hint ("Work out 3 * 67 = 201 first, then multiply by 10.") is not repeated after the
  student wrote 201: the next part is named. Only the student's numbers count: the teacher's own
  hint, which names the part, does not move it on."""
  answer = str(eval(expression))  # noqa: S307 (a test constant)
  p = Problem(id="m", task="arithmetic", domain="math", statement=f"What is {expression}?",
              privileged=f"{expression} = {answer}", answer=answer, meta={"expression": expression})
  extracted = student.split("Final answer: ")[-1] if "Final answer" in student else None
  verdict = Verdict(extracted is not None, False, extracted, format_failure=extracted is None)
  first = hints.math_hint(p, "", Verdict(False, False, format_failure=True), random.Random(0))
  seen = f"{first}\n{student}"
  for seed in range(4):
    h = hints.math_hint(p, seen, verdict, random.Random(seed), student_text=student)
    assert must_have in h and not hints.math_answers.answer_leaked(p, h), h
    # The teacher's hint alone (the part named, never written by the student): the first part.
    again = hints.math_hint(p, first, Verdict(False, False, format_failure=True),
                            random.Random(seed), student_text="")
    assert must_have not in again, again


@pytest.mark.parametrize("expression,student,must_have", [
    # Seen in the demo: the base 270M writes a difference below zero without its sign.
    ("21 - 68", "", ("below zero", "68 - 21")),
    ("21 - 68", "21 - 68 = 47. Final answer: 47", ("below zero",)),      # the size reached
    # Before: the tens split "43 - 80 = -37" named the answer, was dropped, and a generic nudge
    # ("Check which quantity the question asks for.") came instead.
    ("43 - 80", "43 - 80 = 17. Final answer: 17", ("80 - 43", "minus")),
    ("73 - 30", "73 - 30 = 40. Final answer: 40", ("3 tens", "ones stay 3")),
])
def test_a_difference_below_zero_or_of_whole_tens_gets_a_hint_that_names_no_answer(
    expression, student, must_have):
  answer = str(eval(expression))  # noqa: S307 (a test constant)
  p = Problem(id="m", task="arithmetic", domain="math", statement=f"What is {expression}?",
              privileged=f"{expression} = {answer}", answer=answer, meta={"expression": expression})
  extracted = student.split("Final answer: ")[-1] if "Final answer" in student else None
  verdict = Verdict(extracted is not None, False, extracted, format_failure=extracted is None)
  for seed in range(4):
    h = hints.math_hint(p, student, verdict, random.Random(seed), student_text=student)
    assert any(x in h for x in must_have) and not hints.math_answers.answer_leaked(p, h), h
    assert not any(k in h for k in hints._KEEP_GOING), h


def test_with_the_hint_teacher_the_demos_show_its_feedback_answered_with_new_numbers():
  """With `teacher=hint` the student's math demonstrations carry feedback the hint teacher itself
  gives on the demo's wrong attempt, and no demo answer repeats (the base 270M copied the old
  demos' 12 as its own wrong answer); other teachers keep the old demonstrations."""
  any_math = Problem(id="x", task="arithmetic", domain="math", statement="s", privileged="")
  demos = prompts.student_demos(any_math, teacher="hint")
  assert demos == prompts.HINT_STUDENT_DEMOS["math"] != prompts.STUDENT_DEMOS["math"]
  assert prompts.student_demos(any_math, teacher="scripted") == prompts.STUDENT_DEMOS["math"]
  first = Problem(id="d", task="arithmetic", domain="math", statement="What is 26 + 17?",
                  privileged="26 + 17 = 43\nFinal answer: 43", answer="43",
                  meta={"expression": "26 + 17"})
  (_, opening), (_, attempt), (_, feedback), (_, fixed) = demos[:4]
  assert opening.endswith(first.statement)
  verdict = Verdict(attempted=True, correct=False, extracted="33")
  given = {hints.math_hint(first, attempt, verdict, random.Random(s)) for s in range(100)}
  assert feedback in given, given
  assert fixed.endswith("Final answer: 43")
  answers = [t.rsplit("Final answer: ", 1)[1] for r, t in demos if r == "model" and "Final" in t]
  assert len(answers) == len(set(answers)) == 4, answers
  assert "12" not in answers


def test_word_problems_get_the_word_problem_demos_and_nothing_else_does():
  """With the hint teacher a fully specified math word problem (GSM-like) also sees
  `WORD_PROBLEM_DEMOS`; bare expressions, sharded problems, code and other teachers do not.
  Their numbers repeat no other demo's."""
  def problem(task, domain="math", shards=()):
    return Problem(id="x", task=task, domain=domain, statement="s", privileged="", shards=shards)
  hint = prompts.HINT_STUDENT_DEMOS
  for task in ("gsm_symbolic", "gsm8k"):
    assert prompts.student_demos(problem(task), teacher="hint") == (
        hint["math"] + prompts.WORD_PROBLEM_DEMOS)
  assert prompts.student_demos(problem("arithmetic"), teacher="hint") == hint["math"]
  assert prompts.student_demos(problem("gsm8k_sharded", shards=("a", "b")),
                               teacher="hint") == hint["math"]
  assert prompts.student_demos(problem("mbpp", "code"), teacher="hint") == hint["code"]
  assert (prompts.student_demos(problem("gsm8k"), teacher="scripted")
          == prompts.STUDENT_DEMOS["math"])
  assert prompts.student_demos(problem("gsm8k"), enabled=False, teacher="hint") == ()
  numbers = lambda demos: {n for _, t in demos for n in re.findall(r"\d+", t)}
  word = prompts.WORD_PROBLEM_DEMOS
  assert len(word) == 6 and not numbers(word) & numbers(hint["math"])
  # No number is shared between two of the word-problem demos either.
  assert sum(len(numbers(word[i:i + 2])) for i in range(0, 6, 2)) == len(numbers(word))
  answers = []
  for (user, opening), (model, worked) in zip(word[::2], word[1::2]):
    assert (user, model) == ("user", "model")
    assert opening.startswith(prompts.STUDENT_INSTRUCTIONS["math"])
    assert quality.well_formed(worked, "math") and quality.computes_its_answer(worked)
    answers.append(worked.rsplit("Final answer: ", 1)[1])
  assert answers == ["16", "58", "180"]
  # Its answer written as the student's own on another problem is a copy, whatever the working.
  gsm = Problem(id="g", task="gsm_symbolic", domain="math", privileged="",
                statement="An electrician works 5 days a week and earns 185 a day. How much a "
                          "week?")
  lines = prompts.demo_lines(prompts.student_demos(gsm, teacher="hint"))
  assert quality.is_demo_copy("5 * 5 = 25, and 25 - 185 = 16. Final answer: 16", lines,
                              statement=gsm.statement)
  assert not quality.is_demo_copy("5 * 185 = 925. Final answer: 925", lines,
                                  statement=gsm.statement)


def test_an_answer_computed_right_is_not_a_demo_copy_but_the_demos_wrong_number_is():
  """Seen in the demo's eval (Dec 6): after "work out 48 - 15, then put a minus sign in front",
  `48 - 15 = 33. Final answer: 33` was counted as a copy of the demo's wrong attempt
  `26 + 17 = 33. Final answer: 33` (half its word trigrams, "33 final answer" and "final answer
  33", are the demo's)."""
  demo_lines = [t for _, t in prompts.HINT_STUDENT_DEMOS["math"]]
  assert not quality.is_demo_copy("48 - 15 = 33. Final answer: 33", demo_lines,
                                  statement="What is 15 - 48?")
  assert not quality.is_demo_copy("9 + 5 = 14. Final answer: 14", demo_lines,
                                  statement="What is 9 + 5?")
  # The demo's wrong number on another sum is still a copy, and so is a demo line written whole.
  assert quality.is_demo_copy("45 - 69 = 33. Final answer: 33", demo_lines,
                              statement="What is 45 - 69?")
  assert quality.is_demo_copy("30 + 13 = 43. Final answer: 43", demo_lines,
                              statement="What is 5 + 2?")
  assert quality.is_demo_copy("9 + 5 = 14. Final answer: 14", demo_lines,   # the apples demo's
                              statement="What is 8 + 7?")
  assert quality.is_demo_copy("12 + 2 = 14. Final answer: 14", demo_lines,   # not its numbers
                              statement="What is 2 + 5?")
  assert quality.computes_its_answer("-3 * 4 = -12. Final answer: -12")
  assert quality.computes_its_answer("-3 * 4 = -12. Final answer: -12", "What is -3 * 4?")
  assert not quality.computes_its_answer("48 - 15 = 33.")                # no anchored answer
  assert not quality.computes_its_answer("48 - 15 = 33. Final answer: 34")
  assert not quality.computes_its_answer("1.48 - 15 = 33. Final answer: 33")   # not integers
  # Two steps: the second equation may use the first one's result, not any other number.
  statement = "Ann cuts 8 pies into 2 pieces each and eats 4 pieces. How many are left?"
  assert quality.computes_its_answer("8 * 2 = 16 pieces, and 16 - 4 = 12. Final answer: 12",
                                     statement)
  assert not quality.computes_its_answer("8 * 2 = 16, and 18 - 4 = 14. Final answer: 14",
                                         statement)
  assert not quality.computes_its_answer("8 * 2 = 15, and 15 - 4 = 11. Final answer: 11",
                                         statement)
