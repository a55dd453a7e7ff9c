"""Math tasks: answer extraction / equivalence, GSM8K loader and splits, generated math, leaks,
turn classification."""

import concurrent.futures
import dataclasses
import json
import os
import time

import pytest

from sml_jax.tasks import generated_math, gsm8k, math_answers, turns
from sml_jax.tasks.base import Problem

GSM8K_TRAIN = gsm8k.default_train_path()
needs_gsm8k = pytest.mark.skipif(not os.path.exists(GSM8K_TRAIN),
                                 reason=f"GSM8K train split not at {GSM8K_TRAIN}")
NATALIA = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
           "in May. How many clips did Natalia sell altogether in April and May?")


def _problem(answer="72", statement=NATALIA, **kw):
  return Problem(id="p", task="gsm8k", domain="math", statement=statement, privileged="",
                 answer=answer, **kw)


# --- extraction -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("So she sold \\boxed{72} clips.", "72"),
    ("\\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
    ("First \\boxed{5}, no wait: \\boxed{72}", "72"),
    ("Final Answer: $1,080.", "$1,080"),
    ("**Final Answer:** 72 clips", "72"),
    ("The answer is 72 because 48 + 24 = 72.", "72"),
    ("The answer is not 70, it's 72.", "72"),
    ("Answer: 3.5 hours", "3.5"),
    ("48/2 = 24\n48 + 24 = 72\n#### 72", "72"),
    ("It will take her 120/24 = 5 hours to read 120 pages.", "5"),
    ("In May she sold 24. In total 72 clips. Is that right?", "72"),
    ("She earns 0.2 x 50 = $10.", "$10"),
    ("The difference is 72-48=24", "24"),
    ("It is -5 degrees.", "-5"),
    ("Mr. Smith has 3 dogs. He buys 2 more.", "2"),
])
def test_extract_answer_lenient(text, expected):
  assert math_answers.extract_answer(text, lenient=True) == expected


@pytest.mark.parametrize("text, expected", [
    ("So she sold \\boxed{72} clips.", "72"),
    ("First \\boxed{5}, no wait: \\boxed{72}", "72"),
    ("Final Answer: $1,080.", "$1,080"),
    ("**Final Answer:** 72 clips", "72"),
    ("Final answer: 18 + 6 = 24", "24"),                # the value after the anchored "="
    ("What is 6 + 7? 6 + 7 = 13. Final answer: 13", "13"),
    ("final answer is 3.5 hours", "3.5"),
    # unanchored: not an attempt under the strict (reward) reading
    ("The answer is 72 because 48 + 24 = 72.", None),
    ("Answer: 3.5 hours", None),
    ("48/2 = 24\n48 + 24 = 72\n#### 72", None),
    ("It will take her 120/24 = 5 hours to read 120 pages.", None),
    ("There is 1.Next to this. Alright. \u0421\u0430\u043c\u0435(not the 8th time...", None),
    ("Final answer: not sure", None),
])
def test_extract_answer_strict(text, expected):
  assert math_answers.extract_answer(text) == expected


def test_strict_reads_the_anchored_value():
  p = _problem(answer="1200")
  task = gsm8k.GSM8KTask()
  assert task.verify(p, "Final answer: $1,200.00").correct
  assert task.verify(_problem(answer="24"), "Final answer: 18 + 6 = 24").correct
  assert not task.verify(_problem(answer="18"), "Final answer: 18 + 6 = 24").correct


def test_gibberish_is_not_rewarded_but_counted_as_format_failure():
  text = "There is 1.Next to this. Alright. \u0421\u0430\u043c\u0435(not the 8th time..."
  p = _problem(answer="1", statement="What is 0 + 1?")
  for task in (gsm8k.GSM8KTask(), generated_math.ArithmeticTask()):
    v = task.verify(p, text)
    assert (v.attempted, v.correct, v.format_failure) == (False, False, True)
  # The lenient reading is an explicit option, and still flags the missing anchor.
  v = gsm8k.GSM8KTask(answer_format="lenient").verify(p, "There is 1.Next to this. Alright.")
  assert (v.attempted, v.correct, v.format_failure) == (True, True, True)
  v = gsm8k.GSM8KTask().verify(p, "There is 1.Next to this. Alright.")
  assert (v.attempted, v.correct, v.format_failure) == (False, False, True)
  v = gsm8k.GSM8KTask().verify(p, "0 + 1 = 1. Final answer: 1")
  assert (v.attempted, v.correct, v.format_failure) == (True, True, False)
  # A question is not a format failure.
  v = gsm8k.GSM8KTask().verify(_problem(), "How many did she sell in May?")
  assert (v.attempted, v.format_failure) == (False, False)
  with pytest.raises(ValueError, match="answer_format"):
    gsm8k.GSM8KTask(answer_format="loose")


def test_first_answer_end():
  text = "What is 6 + 7? 6 + 7 = 13. Final answer: 13 Then the user said"
  assert text[:math_answers.first_answer_end(text)] == "What is 6 + 7? 6 + 7 = 13. Final answer: 13"
  text = "Final answer: 18 + 6 = 24. Next question?"
  assert text[:math_answers.first_answer_end(text)] == "Final answer: 18 + 6 = 24"
  assert math_answers.first_answer_end("So \\boxed{7} it is") == len("So \\boxed{7}")
  assert math_answers.first_answer_end("How many? 7.") is None
  # The answer is the first number, not its last repeat: the 270M trained with GSM rollouts
  # (Dec 7) wrote "Final answer: 10 validInput: 10 validInput: 10 ...", and the turn kept it all.
  for text in ("Final answer: 10 validInput: 10 validInput: 10", "Final answer: 10 apples and 10",
               "Final answer: 10\u25bb10\u25bb22"):
    assert text[:math_answers.first_answer_end(text)] == "Final answer: 10", text
    assert math_answers.extract_answer(text) == "10"
  text = "Final answer: 24 = 24 apples, 24 more"
  assert text[:math_answers.first_answer_end(text)] == "Final answer: 24 = 24"


@pytest.mark.parametrize("text", [
    "", "   ", "I am not sure how to start.",
    "How many clips did she sell in May?",
    "Should I divide 48 by 2?",
    "how many did she sell in may",                                   # question without "?"
    "She sold 48 clips in April. How many did she sell in May?",      # restates a given, asks
])
def test_no_attempt(text):
  given = math_answers.number_values(NATALIA)
  assert math_answers.extract_answer(text, given=given, lenient=True) is None
  assert math_answers.extract_answer(text, given=given) is None


def test_given_number_without_question_is_an_attempt():
  # Stating a number from the problem as the result (a common wrong answer) is an attempt.
  given = math_answers.number_values(NATALIA)
  assert math_answers.extract_answer("She sold 48 clips.", given=given, lenient=True) == "48"


# --- equivalence ------------------------------------------------------------------------------

@pytest.mark.parametrize("pred, gold, expected", [
    ("72", "72", True), ("1,080", "1080", True), ("$1,080.00", "1080", True), ("72.", "72", True),
    ("0.5", "1/2", True), ("\\frac{1}{2}", "0.5", True), ("50%", "50", True),
    ("72", "73", False), ("7.2", "72", False), ("-3", "3", False),
    # not plain numbers: math_verify decides
    ("\\sqrt{4}", "2", True), ("x+1", "1+x", True), ("72 \\text{ clips}", "72", True),
    ("\\sqrt{2}", "2", False), ("x+2", "x+1", False),
])
def test_answers_equivalent(pred, gold, expected):
  assert math_answers.answers_equivalent(pred, gold) is expected


def test_equivalence_rejects_huge_and_empty_input_fast():
  start = time.monotonic()
  assert not math_answers.answers_equivalent("(" * 5000 + "1", "1")
  assert not math_answers.answers_equivalent("", "1")
  assert not math_answers.answers_equivalent(None, "1")
  assert time.monotonic() - start < 1.0


def test_math_verify_in_worker_threads():
  # math_verify's own timeout uses SIGALRM (main thread only); batched verification runs in threads.
  cases = [("\\sqrt{4}", "2", True), ("\\frac{6}{8}", "3/4", True), ("x+2", "x+1", False)] * 3
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    got = list(pool.map(lambda c: math_answers.answers_equivalent(c[0], c[1]), cases))
  assert got == [c[2] for c in cases]


def test_math_verify_timeout_in_thread(monkeypatch):
  import math_verify
  monkeypatch.setattr(math_verify, "verify", lambda *a, **k: time.sleep(5) or True)
  start = time.monotonic()
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    result = pool.submit(math_answers.answers_equivalent, "\\sqrt{4}", "2", 0.5).result()
  assert result is False
  assert time.monotonic() - start < 3.0


# --- GSM8K --------------------------------------------------------------------------------------

@needs_gsm8k
def test_gsm8k_splits_are_disjoint_deterministic_and_about_ten_percent():
  task = gsm8k.GSM8KTask()
  train, evals = task.problems("train"), task.problems("eval")
  assert len(train) + len(evals) == 7473
  assert 0.08 < len(evals) / 7473 < 0.12, len(evals)
  assert not {p.id for p in train} & {p.id for p in evals}
  assert [p.id for p in gsm8k.GSM8KTask().problems("eval")] == [p.id for p in evals]
  assert [p.id for p in task.problems("train", limit=5, seed=1)] != [p.id for p in train[:5]]
  assert len(task.problems("train", limit=5, seed=1)) == 5


@needs_gsm8k
def test_gsm8k_split_depends_on_question_only(tmp_path):
  lines = open(GSM8K_TRAIN).read().splitlines()[:400]
  (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
  (tmp_path / "b.jsonl").write_text("\n".join(reversed(lines)) + "\n")
  evals = [{p.statement for p in gsm8k.GSM8KTask(str(tmp_path / f)).problems("eval")}
           for f in ("a.jsonl", "b.jsonl")]
  assert evals[0] == evals[1] and evals[0]


@needs_gsm8k
def test_gsm8k_problem_fields():
  p = gsm8k.read_gsm8k(GSM8K_TRAIN)[0]
  assert p.line == 1 and p.answer == "72"
  assert "<<" not in p.solution and "####" not in p.solution
  assert p.solution.startswith("Natalia sold 48/2 = 24 clips in May.")
  problems = gsm8k.GSM8KTask().problems("train")
  assert all("<<" not in q.privileged and "," not in q.answer for q in problems)
  assert all(q.domain == "math" and q.task == "gsm8k" and q.statement for q in problems)


@pytest.mark.parametrize("line, message", [
    ("{not json", "malformed GSM8K line"),
    ('{"question": "q?", "answer": "no final answer"}', "####"),
    ('{"answer": "x #### 3"}', "question"),
    ('{"question": "q?", "answer": "x #### "}', "empty"),
    ('[1, 2]', "JSON object"),
])
def test_gsm8k_malformed_line_names_file_and_line(tmp_path, line, message):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"question": "What is 1+1?", "answer": "1+1=2\\n#### 2"}\n\n' + line + "\n")
  with pytest.raises(ValueError, match=rf"bad\.jsonl:3: .*{message}"):
    gsm8k.read_gsm8k(str(path))


def test_gsm8k_test_split_reads_user_file(tmp_path):
  path = tmp_path / "test.jsonl"
  path.write_text(json.dumps({"question": "Ann has 3 pens and buys 4. How many now?",
                              "answer": "3+4=<<3+4=7>>7\n#### 7"}) + "\n")
  task = gsm8k.GSM8KTask(path=str(path), test_path=str(path))
  (p,) = task.problems("test")
  assert (p.id, p.answer, p.privileged) == ("test:1", "7", "3+4=7\nFinal answer: 7")
  with pytest.raises(ValueError, match="test_path"):
    gsm8k.GSM8KTask(path=str(path)).problems("test")
  with pytest.raises(ValueError, match="unknown split"):
    task.problems("validation")
  with pytest.raises(FileNotFoundError):
    gsm8k.GSM8KTask(path=str(tmp_path / "missing.jsonl")).problems("train")


@needs_gsm8k
@pytest.mark.parametrize("every", [pytest.param(1, marks=pytest.mark.slow, id="all"),
                                   pytest.param(25, id="every_25th")])
def test_checking_agrees_with_gsm8k_answers(every):
  """Every GSM8K train solution verifies against its own '#### N' answer, a perturbed answer
  never does, and the worked solution alone (no '####' line, last-number rule) mostly does.
  Default: a fixed subset (every 25th line, 299 problems); the whole file is the `slow` run."""
  task = gsm8k.GSM8KTask(answer_format="lenient")  # reads GSM8K's "#### N" and bare solutions
  raw = [json.loads(line) for line in open(GSM8K_TRAIN)][::every]
  records = gsm8k.read_gsm8k(GSM8K_TRAIN)[::every]
  full = perturbed_fail = reasoning_only = 0
  for rec, obj in zip(records, raw):
    p = _problem(answer=rec.answer, statement=rec.question)
    full += task.verify(p, obj["answer"]).correct
    wrong = dataclasses.replace(p, answer=str(int(rec.answer) + 1))
    perturbed_fail += not task.verify(wrong, obj["answer"]).correct
    reasoning_only += task.verify(p, rec.solution).correct
  n = len(records)
  print(f"GSM8K agreement: full solutions {full}/{n}, perturbed rejected {perturbed_fail}/{n}, "
        f"reasoning-only {reasoning_only}/{n} ({reasoning_only / n:.2%})")
  assert full == n and perturbed_fail == n
  assert reasoning_only / n > 0.98


# --- verify / leaks / turns ----------------------------------------------------------------------

def test_verify_verdicts():
  task = gsm8k.GSM8KTask(answer_format="lenient")
  p = _problem()
  v = task.verify(p, "48 / 2 = 24 in May, so the answer is 72.")
  assert (v.attempted, v.correct, v.extracted) == (True, True, "72") and v.feedback
  v = task.verify(p, "She sold 48 + 48 = 96 clips.")
  assert (v.attempted, v.correct, v.extracted) == (True, False, "96")
  assert "72" not in v.feedback  # feedback must not carry the answer into a teacher template
  v = task.verify(p, "Did she sell half as many in May, so 24?")
  assert (v.attempted, v.correct) == (False, False)
  assert [v.correct for v in task.verify_batch([p, p], ["#### 72", "#### 71"])] == [True, False]
  with pytest.raises(ValueError, match="2 problems but 1 texts"):
    task.verify_batch([p, p], ["72"])


@pytest.mark.parametrize("text, leaked", [
    ("The answer is 72.", True),
    ("Great, so in total that's 72 clips!", True),
    ("Altogether she sold seventy-two clips.", True),
    ("\\boxed{72}", True),
    ("Try working out May first: what is half of 48?", False),
    ("Not quite: 70 is too small. Add April and May.", False),
    ("", False),
])
def test_answer_leaked(text, leaked):
  assert math_answers.answer_leaked(_problem(), text) is leaked


def test_leak_ignores_numbers_from_the_problem():
  # The answer (48) is itself stated in the problem: mentioning 48 is fine, stating it as the
  # answer is a leak.
  p = _problem(answer="48", statement="Tom has 48 apples and gives none away. How many are left?")
  assert not math_answers.answer_leaked(p, "Look again at how many apples Tom has: 48.")
  assert math_answers.answer_leaked(p, "So the final answer is 48.")
  # Numbers of not-yet-revealed shards are facts, not answers.
  sharded = _problem(answer="7", statement="How many are left?",
                     shards=("How many are left?", "Tom has 12.", "He gives away 5."))
  assert not math_answers.answer_leaked(sharded, "He gives away 5 of them.")
  assert math_answers.answer_leaked(sharded, "12 - 5 leaves 7.")
  assert gsm8k.GSM8KTask().leaked(_problem(), "It is 72.")


@pytest.mark.parametrize("text, attempted, kind", [
    ("The answer is 72.", True, "attempt"),
    ("Is the answer 72? I computed 48 + 24 = 72.", True, "attempt"),
    ("How many did she sell in May?", False, "question"),
    ("Could you remind me what half of 48 means here", False, "question"),
    ("Should I add the two months together?", False, "question"),
    ("Let me think about April first.", False, "other"),
    ("When she sold them, she was happy.", False, "other"),
    ("Do the sum first.", False, "other"),
    ("", False, "other"),
])
def test_classify_turn(text, attempted, kind):
  assert turns.classify_turn(text, attempted) == kind


def test_classify_with_verifier():
  task, p = gsm8k.GSM8KTask(answer_format="lenient"), _problem()
  kinds = [turns.classify_turn(t, task.verify(p, t).attempted) for t in
           ("In May she sold 24, so 72 in total.", "What did she sell in May?", "Hmm, let me see.")]
  assert kinds == ["attempt", "question", "other"]


def test_split_sentences():
  assert turns.split_sentences("Mr. Li has $2.50. How much is left?\nDone") == [
      "Mr. Li has $2.50.", "How much is left?", "Done"]


# --- generated math ------------------------------------------------------------------------------

def test_arithmetic_level0_is_really_easy():
  # Level 0 has ~100 distinct problems in all; the train split holds 80% of them, no repeats.
  problems = generated_math.ArithmeticTask(difficulty=0).problems("train", limit=70)
  assert len(problems) == 70
  for p in problems:
    expr = p.meta["expression"]
    a, op, b = expr.split()
    assert op == "+" and 0 <= int(a) <= 10 and 0 <= int(b) <= 10, expr
    assert int(p.answer) == int(a) + int(b) and p.difficulty == 0
    assert expr in p.statement and expr in p.privileged


def test_arithmetic_difficulty_grows_and_answers_are_exact():
  sizes = []
  for level in range(6):  # The ladder 0..5 (level 6, two-digit sums, is a family of its own).
    problems = generated_math.ArithmeticTask(difficulty=level).problems("train", limit=60)
    for p in problems:
      assert generated_math._exact_value(p.meta["expression"]) == int(p.answer)
    digits = [sum(c.isdigit() for c in p.meta["expression"]) for p in problems]
    sizes.append(sum(digits) / len(digits))
  assert sizes == sorted(sizes) and sizes[-1] > 3 * sizes[0], sizes


def test_generated_math_is_deterministic_and_splits_differ():
  task = generated_math.ArithmeticTask(difficulty=3)
  a = task.problems("train", limit=50, seed=7)
  assert a == task.problems("train", limit=50, seed=7)
  assert [p.statement for p in a] != [p.statement for p in task.problems("train", limit=50, seed=8)]
  ev = task.problems("eval", limit=50, seed=7)
  assert len({p.statement for p in a} & {p.statement for p in ev}) < 5
  assert all(task.verify(p, f"So the final answer is {p.answer}.").correct for p in a + ev)
  assert not any(task.verify(p, f"So the answer is {p.answer}.").attempted for p in a + ev)
  with pytest.raises(ValueError, match="difficulty"):
    generated_math.ArithmeticTask(difficulty=9)


def test_gsm_symbolic_difficulty_range():
  task = generated_math.GSMSymbolicTask(min_difficulty=3, max_difficulty=4)
  problems = task.problems("train", limit=40)
  assert len(problems) == 40 and {p.difficulty for p in problems} <= {3, 4}
  assert problems == task.problems("train", limit=40)
  assert all(task.verify(p, p.privileged).correct for p in problems)
  with pytest.raises(RuntimeError, match="widen the range"):
    generated_math.GSMSymbolicTask(min_difficulty=40).problems("train", limit=5)


@pytest.mark.parametrize("level", [0, 2, 6])
def test_arithmetic_splits_are_disjoint_by_construction(level):
  """A problem's split is a function of its expression: no eval problem is a train problem,
  at any level (level 0 has only ~100 distinct problems, which a seed split used to share)."""
  from sml_jax.tasks.generated_math import ArithmeticTask, split_of
  task = ArithmeticTask(level)
  train = {p.meta["expression"] for p in task.problems("train", seed=0)}
  train |= {p.meta["expression"] for p in task.problems("train", seed=7)}
  evals = [p.meta["expression"] for p in task.problems("eval", limit=200, seed=0)]
  assert len(set(evals)) == len(evals) and not train & set(evals)
  assert all(split_of(e) == "eval" for e in evals)
  if level > 0:
    assert len(evals) == 200
