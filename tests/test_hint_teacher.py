"""The hint teacher (`dialogue.teacher=hint`): leak-free, deterministic, varied and informative, on
its own (pure python, many problems) and in `EpisodeRunner` runs with the `tiny` model (math, MBPP
code through the sandbox, sharded problems)."""

import dataclasses
import os
import types

import jax.numpy as jnp
import pytest

from sml_jax.dialogue import hints, teachers
from sml_jax.dialogue.conversation import Conversation, Turn
from sml_jax.dialogue.episode import DialogueConfig, EpisodeRunner
from sml_jax.sampling import Sampler
from sml_jax.tasks import code, generated_math, gsm8k, underspecified
from sml_jax.tasks.base import Problem

MATH = gsm8k.GSM8KTask()  # every math task shares the verifier, `leaked` and `redact`
HAVE_GSM8K = os.path.exists(gsm8k.default_train_path())


def _math_problems():
  problems = []
  for level in (0, 1, 2, 4, 5):
    problems += generated_math.ArithmeticTask(difficulty=level).problems("train", limit=30)
  if HAVE_GSM8K:
    problems += MATH.problems("train", limit=150, seed=7)
    problems += underspecified.GSM8KShardedTask().problems("train", limit=40)
  return problems


def _turns(p):
  """Student turns of every kind: wrong anchored attempts, an unanchored number, questions."""
  gold = int(float(p.answer))
  return [(f"Final answer: {gold + 1}", False), (f"So {gold * 2 + 9}. Final answer: {gold * 2 + 9}", False),
          (f"I think it is {gold - 3}", False), ("How do I start?", True),
          ("What should I compute first?", True), ("I am not sure.", False)]


def _reply(p, text, question, *, seed=0, row=0, task=MATH, history=()):
  c = Conversation(p, "hint", 4)
  c.turns += [Turn("user", p.statement), *history,
              Turn("student", text, {"question": question,
                                     "premature": p.underspecified and not question})]
  stats = {}
  setup = teachers.TeacherSetup(types.SimpleNamespace(teacher="hint"), None, lambda name: task,
                                None, None, [c], seed, row, stats)
  verdict = task.verify(p, text)
  return teachers.make_teacher(setup).reply({0: c}, {0: verdict}, turn=1)[0], c, stats


def test_hint_teacher_is_leak_free_deterministic_and_varied_on_many_problems():
  texts, n = set(), 0
  for p in _math_problems():
    for text, question in _turns(p):
      reply, c, stats = _reply(p, text, question)
      assert reply.text and not MATH.leaked(p, reply.text), (p.statement, p.answer, reply.text)
      assert not reply.leak and stats["teacher_turns"] == 1
      assert stats.get("leak_fallbacks", 0) == 0, (p.answer, text)  # leak-free by construction
      assert reply.shard == p.underspecified and (c.shards_revealed == 2) == p.underspecified
      # Deterministic given (seed, row); the wording varies with them.
      assert _reply(p, text, question)[0] == reply
      texts.add(reply.text)
      n += 1
  assert n >= 5 * 30 * 6
  assert len(texts) > n // 4  # about the problem, not one fixed string
  p = generated_math.ArithmeticTask(difficulty=4).problems("train", limit=1)[0]
  worded = {_reply(p, "Final answer: 0", False, seed=s, row=r)[0].text
            for s in range(4) for r in range(4)}
  assert len(worded) >= 3, worded


def test_hint_teacher_answers_questions_and_attempts_from_the_privileged_info():
  p = Problem(id="a", task="arithmetic", domain="math", statement="What is (3 + 4) * 6 - 2?",
              privileged="", answer="40", meta={"expression": "(3 + 4) * 6 - 2"})
  # A question gets the first step, not a verdict; an attempt gets the direction and the step.
  question, _, _ = _reply(p, "Where do I start?", True)
  assert "3 + 4" in question.text and "high" not in question.text and "low" not in question.text
  attempt, _, _ = _reply(p, "Final answer: 90", False)
  assert ("high" in attempt.text or "large" in attempt.text or "more" in attempt.text)
  # Steps already named in the conversation count as reached: the next hint moves on.
  named = [Turn("student", "Final answer: 90", {}), Turn("teacher", question.text, {})]
  later, _, _ = _reply(p, "Is it about the 6?", True, history=named)
  assert "(3 + 4) * 6" in later.text and not MATH.leaked(p, later.text)
  # One-step sums get a way to work them out by parts.
  s = Problem(id="s", task="arithmetic", domain="math", statement="What is 54 + 26?",
              privileged="", answer="80", meta={"expression": "54 + 26"})
  r, _, _ = _reply(s, "54 + 26 = 74. Final answer: 74", False)
  assert ("low" in r.text or "small" in r.text or "less" in r.text) and "50 + 20" in r.text


SHARDED = Problem(id="s", task="gsm8k_sharded", domain="math", statement="How much do they spend?",
                  privileged="", answer="57",
                  shards=("How much do they spend?", "A ticket costs $12.",
                          "A group of 4 friends buys tickets.", "They share a $9 snack."))


def test_hint_teacher_gives_the_shard_a_question_asks_about_else_the_next():
  reply, c, _ = _reply(SHARDED, "How much does the snack cost?", True)
  assert reply.text == SHARDED.shards[3] and reply.shard and c.shown_shards == [0, 3]
  reply, c, _ = _reply(SHARDED, "Final answer: 12", False)
  assert reply.text.endswith(SHARDED.shards[1]) and "not given you all" in reply.text
  assert c.shown_shards == [0, 1]


def test_hint_teacher_answers_a_code_question_with_a_test_the_student_has_not_seen():
  mbpp = code.MBPPTask(timeout=10.0)
  p = next(q for q in mbpp.all_problems() if q.id == "mbpp/2")
  reply, _, _ = _reply(p, "What should it return for other inputs?", True, task=mbpp)
  unseen = [t for t in p.tests if t not in p.statement]
  assert any(t in reply.text for t in unseen) and not mbpp.leaked(p, reply.text)


# --- in an EpisodeRunner, with the tiny model --------------------------------------------------------


@dataclasses.dataclass
class FixedAttempt:
  """A real task whose verifier reads a fixed student turn instead of the tiny model's noise
  (`attempt(problem)`), so the teacher sees real verdicts: wrong anchored answers, failing programs."""
  task: object
  attempt: object

  def __getattr__(self, name):
    return getattr(self.task, name)

  def verify_batch(self, problems, texts):
    return self.task.verify_batch(problems, [self.attempt(p) for p in problems])


@pytest.fixture(scope="module")
def sampler(tiny):
  return Sampler(tiny[0], cache_length=1024, dtype=jnp.float32)


def _run(sampler, tokenizer, params, task, problems, **cfg):
  base = dict(max_turns=3, student_max_tokens=8, temperature=1.0, teacher="hint")
  base.update(cfg)
  runner = EpisodeRunner(sampler, tokenizer, lambda name: task, DialogueConfig(**base))
  return runner, runner.run(problems, params, seed=5, repeats=2)


def _check_flags(convs):
  for c in convs:
    for t in c.turns[1:]:
      if t.role == "student":
        assert {"format_failure", "well_formed", "demo_copy"} <= set(t.flags)
      else:
        assert set(t.flags) == {"leak", "shard", "demo_copy"} and not t.flags["leak"]


def test_hint_teacher_in_a_math_run_is_informative_leak_free_and_deterministic(sampler, tokenizer, tiny):
  problems = generated_math.ArithmeticTask(difficulty=2).problems("train", limit=3)
  task = FixedAttempt(MATH, lambda p: f"Final answer: {int(p.answer) + 7}")
  runner, convs = _run(sampler, tokenizer, tiny[1], task, problems)
  teacher_turns = [(c, t) for c in convs for t in c.turns if t.role == "teacher"]
  assert len(teacher_turns) == 2 * 2 * 3 and runner.stats["teacher_turns"] == len(teacher_turns)
  for c, t in teacher_turns:
    assert not MATH.leaked(c.problem, t.text)
    assert "too high" in t.text or "too large" in t.text or "more than" in t.text, t.text
  _check_flags(convs)
  _, again = _run(sampler, tokenizer, tiny[1], task, problems)
  assert [c.to_json() for c in again] == [c.to_json() for c in convs]


def test_hint_teacher_in_an_mbpp_run_names_the_failing_test(sampler, tokenizer, tiny):
  mbpp = code.MBPPTask(timeout=10.0)
  problems = [q for q in mbpp.all_problems() if q.id in ("mbpp/2", "mbpp/3")]
  buggy = lambda p: f"```python\ndef {p.entry_point}(*args):\n    return None\n```"
  _, convs = _run(sampler, tokenizer, tiny[1], FixedAttempt(mbpp, buggy), problems, max_turns=2)
  for c in convs:
    (reply,) = [t for t in c.turns if t.role == "teacher"]
    assert c.problem.tests[0] in reply.text and "None" in reply.text, reply.text
    assert not mbpp.leaked(c.problem, reply.text)
  _check_flags(convs)


def test_hint_teacher_in_a_sharded_run_reveals_the_shards(sampler, tokenizer, tiny):
  task = FixedAttempt(MATH, lambda p: "Final answer: 3")
  _, convs = _run(sampler, tokenizer, tiny[1], task, [SHARDED], max_turns=5)
  for c in convs:
    teacher = [t for t in c.turns if t.role == "teacher"]
    assert [t.flags["shard"] for t in teacher] == [True, True, True, False]
    assert all(SHARDED.shards[k + 1] in teacher[k].text for k in range(3))
    last = teacher[3].text  # every fact shown: now a hint on the wrong answer
    assert any(w in last for w in ("low", "small", "less")) and not MATH.leaked(SHARDED, last)
    assert ([t.flags["premature"] for t in c.turns if t.role == "student"]
            == [True, True, True, False, False])
    assert c.shown_shards == [0, 1, 2, 3]
  _check_flags(convs)
