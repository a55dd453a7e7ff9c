"""Dialogue fidelity (issue 14): the Q-priming coin's frequency, student and teacher params kept
apart, Q-primed questions answered as questions, every written question leak-checked, and no
policy-gradient weight on tokens the model did not sample."""

import dataclasses
import math
import random
import types

import jax.numpy as jnp
import numpy as np
import pytest

from sml_jax import models
from sml_jax.dialogue import chat_format as cf
from sml_jax.dialogue import episode, hints, prompts, quality, question_templates, questions
from sml_jax.dialogue import turn_end
from sml_jax.dialogue.conversation import Conversation, Turn
from sml_jax.dialogue.episode import DialogueConfig, EpisodeRunner
from sml_jax.dialogue.party import Sampled
from sml_jax.sampling import Sampler
from sml_jax.stages import examples
from sml_jax.tasks import generated_math, gsm8k
from sml_jax.tasks.base import Problem, Verdict
from sml_jax.training.batching import make_batch

MATH = gsm8k.GSM8KTask()


@dataclasses.dataclass
class FixedAttempt:
  """A real math task whose verifier reads a fixed wrong anchored answer instead of the tiny
  model's noise: every turn is a failed attempt (so Q-priming's coin is tossed every turn)."""
  task: object = MATH

  def __getattr__(self, name):
    return getattr(self.task, name)

  def verify_batch(self, problems, texts):
    return self.task.verify_batch(problems, [f"Final answer: {int(p.answer) + 7}" for p in problems])


@pytest.fixture(scope="module")
def sampler(tiny):
  return Sampler(tiny[0], cache_length=1024, dtype=jnp.float32)


def _runner(sampler, tokenizer, task=None, teacher_sampler=None, **cfg):
  base = dict(max_turns=3, student_max_tokens=4, teacher_max_tokens=6, temperature=1.0,
              teacher="hint", qprime_writer="template")
  base.update(cfg)
  task = task or FixedAttempt()
  return EpisodeRunner(sampler, tokenizer, lambda name: task, DialogueConfig(**base),
                       teacher_sampler=teacher_sampler)


def _arithmetic(n, level=2):
  return generated_math.ArithmeticTask(difficulty=level).problems("train", limit=n)


def test_qpriming_coin_replaces_a_failed_attempt_at_turn_t_with_probability_q_to_the_t(
    sampler, tokenizer, tiny):
  q, max_turns = 0.8, 4
  runner = _runner(sampler, tokenizer, qprime_q=q, max_turns=max_turns, student_max_tokens=2)
  convs = runner.run(_arithmetic(75), tiny[1], seed=11, repeats=4)
  n = len(convs)
  for t in range(1, max_turns + 1):
    turns = [[s for s in c.turns if s.role == "student"][t - 1] for c in convs]
    assert len(turns) == n  # never solved: every row reaches every turn
    rate = np.mean([s.flags["qprime"] for s in turns])
    expected = q ** t if t < max_turns else 0.0  # no question at the last turn
    tolerance = 4 * math.sqrt(expected * (1 - expected) / n) + 1e-9
    assert abs(rate - expected) <= tolerance, (t, rate, expected)
  assert runner.stats["qprimed"] == sum(s.flags.get("qprime", False) for c in convs for s in c.turns)


class Recording:
  """A sampler that records which params each of its calls used, around a real one."""

  def __init__(self, inner, calls):
    self.inner, self.calls = inner, calls

  @property
  def cache_length(self):
    return self.inner.cache_length

  def __getattr__(self, name):
    method = getattr(self.inner, name)
    if name not in ("start", "append", "sample", "generate"):
      return method

    def call(params, *args, **kw):
      self.calls.append((name, params))
      return method(params, *args, **kw)
    return call


def test_student_and_teacher_keep_their_own_params(sampler, tokenizer, tiny):
  """The student samples with the student's params, the LLM teacher and the Q-priming writer
  with the teacher's: a `run` that swapped them fails here."""
  student_params = tiny[1]
  teacher_params = models.load_params("tiny", seed=1)
  student_calls, teacher_calls = [], []
  run = lambda tp: _runner(
      Recording(sampler, student_calls), tokenizer, teacher="llm", qprime_q=0.7,
      qprime_writer="model", teacher_sampler=Recording(sampler, teacher_calls)).run(
          _arithmetic(3), student_params, tp, seed=2, repeats=2)
  convs = run(teacher_params)
  assert {name for name, _ in student_calls} >= {"start", "sample"}
  assert {name for name, _ in teacher_calls} >= {"start", "sample", "generate"}  # teacher + writer
  assert all(p is student_params for _, p in student_calls)
  assert all(p is teacher_params for _, p in teacher_calls)
  # Not vacuous: the teacher's params decide what the teacher says.
  same = run(student_params)
  teacher_text = lambda cs: [t.text for c in cs for t in c.turns if t.role == "teacher"]
  assert teacher_text(convs) != teacher_text(same)


def test_a_qprimed_question_is_answered_as_a_question(sampler, tokenizer, tiny):
  """The replaced attempt's verdict is not reused: the LLM teacher reads the question note (no
  'is wrong'), the hint teacher answers from the solution (no 'too high')."""
  problems = _arithmetic(3, level=4)
  llm = _runner(sampler, tokenizer, teacher="llm", qprime_q=1.0).run(problems, tiny[1], repeats=1)
  for c in llm:
    assert [t.flags["qprime"] for t in c.turns if t.role == "student"] == [True, True, False]
    context = tokenizer.decode(c.teacher.ids)
    replaced = f"answer ({int(c.problem.answer) + 7}) is wrong"  # the replaced attempt's note
    assert context.count(prompts.QUESTION_NOTE) == 2 and replaced not in context
  hint = _runner(sampler, tokenizer, teacher="hint", qprime_q=1.0).run(problems, tiny[1])
  for c in hint:
    for t in [t for t in c.turns if t.role == "teacher"]:
      assert not any(w in t.text for w in ("high", "large", "low", "small", "more than",
                                           "less than")), t.text
      assert not MATH.leaked(c.problem, t.text)
    first = c.turns[1]
    assert first.flags["qprime"] and first.flags["qprime_template"] and first.flags["well_formed"]


ANSWER_42 = Problem(id="q", task="gsm8k", domain="math",
                    statement="Ann has 40 apples and finds 2 more. How many apples does she have?",
                    privileged="40 + 2 = 42\nFinal answer: 42", answer="42")


class FakeWriter:
  """`generate` returns `text` for every prompt (as a model-written question would come back)."""

  cache_length = 2048

  def __init__(self, tokenizer, text):
    self.tok, self.text = tokenizer, text

  def generate(self, params, prompts_, **kw):
    ids = list(self.tok.encode(self.text)) + [cf.END_OF_TURN_ID]
    return types.SimpleNamespace(tokens=[np.asarray(ids)] * len(prompts_))


def _write(tokenizer, writer, problem=ANSWER_42, text="Is the answer 42?"):
  c = Conversation(problem, "hint", 3)
  c.turns += [Turn("user", problem.statement), Turn("student", "Final answer: 41", {})]
  return questions.write_questions(
      [c], writer=writer, task_lookup=lambda name: MATH, tokenizer=tokenizer, max_tokens=64,
      fewshot=True, seed=0, row_ids=np.asarray([0]), sampler=FakeWriter(tokenizer, text))[0]


def test_written_questions_are_leak_and_demo_checked(tokenizer, monkeypatch):
  leak = _write(tokenizer, "model")
  assert leak.rejected == "leak" and leak.writer == "template"
  assert not MATH.leaked(ANSWER_42, leak.text) and leak.text.endswith("?")
  demo_question = prompts.QPRIME_DEMOS["math"][1][1]
  copy = _write(tokenizer, "model", text=f"{demo_question} Thanks.")
  assert copy.rejected == "demo_copy" and not quality.is_demo_copy(
      copy.text, questions.demo_lines(Conversation(ANSWER_42, "hint", 3), True))
  student_demo = "How many apples did Tom have at the start?"  # in the student's demonstrations
  assert _write(tokenizer, "model", text=student_demo).rejected == "demo_copy"
  good = _write(tokenizer, "model", text="Should I add the 2 apples Ann finds to her 40?")
  assert good == questions.Written("Should I add the 2 apples Ann finds to her 40?", "model")
  # The template writer's questions are checked too.
  monkeypatch.setattr(question_templates, "template_question", lambda *a, **k: "Is the answer 42?")
  assert _write(tokenizer, "template").text == questions.FALLBACK


def test_code_problems_get_code_question_demos():
  code = Problem(id="c", task="mbpp", domain="code", statement="", privileged="")
  assert "def " in prompts.qprime_demos(code)[0][1] and "cookies" not in str(prompts.qprime_demos(code))
  assert len(prompts.QPRIME_DEMOS["math"]) >= 4 and len(prompts.QPRIME_DEMOS["code"]) >= 4


def _cut_turn(tokenizer, text):
  """A student turn added the way the episode adds it: `text` sampled, then cut at its answer."""
  c = Conversation(ANSWER_42, "hint", 3)
  c.student.extend(*cf.encode_dialogue(tokenizer, [("user", "hi")], add_generation_prompt=True))
  ids = np.asarray(tokenizer.encode(text), np.int32)
  me = types.SimpleNamespace(cfg=DialogueConfig(), tok=tokenizer)
  episode._Episode._add_student_turn(me, c, Sampled(ids, np.full(len(ids), -0.5, np.float32), False))
  return c


def test_an_answer_cut_by_the_token_budget_inside_its_number_is_not_read(sampler, tokenizer, tiny):
  """Seen in a 40-token word-problem eval (Dec 6): `... 2730 - 15 = 2100. Final answer: 210`, the
  budget ending inside 2100, was read as the answer 210 (and `Final answer: 4` could be the 4 of
  42, rewarded). Such a turn is a format failure: no attempt, not a question, not well-formed,
  its answer not read, its closing <end_of_turn> untrained (the model did not end it there), and
  the teachers say it was cut off. Each case goes through the episode's own add / verify / score."""
  right = "40 + 2 = 42. Final answer: 42"
  cases = {  # (text as sampled, the model stopped it, cut_turns) -> unfinished
      ("40 + 2 = 42. Final answer: 4", False, True): True,
      (right, False, True): True,                   # may be 420: not read, though 42 is right
      ("40 + 2 = 42. Final answer: 2.", False, True): True,    # of 2.5; the cut drops the "."
      ("40 + 2 = 42. Final answer: 1,2", False, True): True,   # of 1,200
      ("Final answer: 40 + 2", False, True): True,             # of 40 + 2 = 42
      ("Final answer: 42 = 42 = 4", False, True): True,        # a chain run on to the budget
      (right + " - that is all", False, True): False,          # words after it: it ended
      ("Is it 40 + 2? 40 + 2 = 42. Final answer: 4", False, True): True,   # not a question
      (right, True, True): False,                   # the model ended its turn after 42
      (right + " apples. Then", False, True): False,   # a word after the answer ended it
      (right + "\n", False, False): False,             # a line stop ended it (not cut)
  }
  for (text, stopped, cut_turns), unfinished in cases.items():
    runner = _runner(sampler, tokenizer, task=MATH, cut_turns=cut_turns)
    ep = episode._Episode(runner, [ANSWER_42], tiny[1], None, seed=0, repeats=1, first_row=0)
    ep.demo_lines = [()]
    c = ep.convs[0]
    ids = np.asarray(tokenizer.encode(text) + ([cf.END_OF_TURN_ID] if stopped else []), np.int32)
    ep._add_student_turn(c, Sampled(ids, np.full(len(ids), -0.5, np.float32), stopped))
    verdicts = ep._verify([0])
    ep._score([0], verdicts, 1)
    flags, verdict = c.turns[-1].flags, verdicts[0]
    assert flags.get("unfinished", False) == unfinished, text
    if unfinished:
      assert verdict == episode.UNFINISHED_VERDICT and verdict.format_failure
      assert flags["sampled_end"] == text[-24:]   # as sampled: "2." keeps its "."
      assert not (flags["attempt"] or flags["question"] or flags["well_formed"] or flags["correct"])
      assert c.student.roles[-1] == cf.Role.TEMPLATE and c.student.ids[-1] == cf.END_OF_TURN_ID
      assert "cut off" in hints.math_hint(ANSWER_42, c.turns[-1].text, verdict, random.Random(0))
      assert "ran out of tokens" in prompts.verifier_note(verdict)
      assert "cut off" in prompts.scripted_feedback(ANSWER_42, verdict)
    else:
      assert flags["attempt"] and verdict.attempted and flags["correct"] == text.startswith(right)
  assert not turn_end.answer_may_continue("```python\nx = 1\n```", "code")
  assert not turn_end.answer_may_continue("Final answer:", "math")
  for ended in ("Final answer: 3 apples and 3", "Final answer: 42 is 42", "**Final answer: 42**",
                "Final answer: **42**"):   # a word, or a closing bold, after the answer
    assert not turn_end.answer_may_continue(ended, "math"), ended
  assert turn_end.answer_may_continue("Final answer: 42 ** 2", "math")


def test_rl_gives_no_weight_to_the_end_of_turn_appended_after_a_cut(tokenizer):
  convs = [_cut_turn(tokenizer, "40 + 2 = 42. Final answer: 42 and then some junk"),
           _cut_turn(tokenizer, "40 + 2 = 41. Final answer: 41 and more")]
  convs[0].reward, convs[0].solved_turn = 1.0, 1
  for c in convs:
    ids, roles, _ = c.training_arrays()
    # The cut turn ends on a trained <end_of_turn> the model never sampled.
    assert ids[-1] == cf.END_OF_TURN_ID and roles[-1] == cf.Role.MODEL
    assert not c.student.sampled[-1]
    assert all(c.student.sampled[k] for k in np.flatnonzero(roles == cf.Role.MODEL)[:-1])
  rl, adv = examples.rl_examples(convs, group_size=2)
  batch = make_batch(rl)
  for b, (c, a) in enumerate(zip(convs, adv)):
    n = len(c.student.ids)
    model = np.flatnonzero(np.asarray(c.student.roles) == cf.Role.MODEL)
    assert batch.weights[b, n - 1] == 0.0   # the appended <end_of_turn>
    np.testing.assert_allclose(batch.weights[b, model[:-1]], a)  # sampled tokens: advantage
  # SFT stages may still teach where the turn ends.
  sft = make_batch(examples.offline_sml_examples(convs))
  assert sft.weights[0, len(convs[0].student.ids) - 1] == 1.0


def test_qprimed_questions_carry_no_policy_gradient(sampler, tokenizer, tiny):
  convs = _runner(sampler, tokenizer, qprime_q=1.0, max_turns=2).run(_arithmetic(2), tiny[1],
                                                                     repeats=2)
  convs[0].reward = 1.0
  rl, _ = examples.rl_examples(convs, group_size=2)
  for ex, c in zip(rl, convs):
    question = c.turns[1].text
    q_ids = list(tokenizer.encode(question))
    ids = list(c.student.ids)
    start = next(k for k in range(len(ids)) if ids[k:k + len(q_ids)] == q_ids)
    assert not ex.token_weights[start:start + len(q_ids)].any()
    sampled = c.student.sampled_mask() & (np.asarray(c.student.roles) == cf.Role.MODEL)
    assert sampled.any() and np.all(ex.token_weights[sampled] == ex.weight)
