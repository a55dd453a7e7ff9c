"""Episode-loop mechanics on the `tiny` model: contexts, masks, rewards, early stop, leaks, Q-priming.

The tiny model writes random text, so these tests use small test-only tasks whose verdicts are a
fixed function of the problem (the real verifiers have their own tests); everything else — the
sampler, its KV cache across turns, the chat template, the loop — is the real thing.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from sml_jax.dialogue import chat_format as cf
from sml_jax.dialogue import prompts
from sml_jax.dialogue.conversation import turn_reward
from sml_jax.dialogue import teachers
from sml_jax.dialogue.episode import DialogueConfig, EpisodeRunner
from sml_jax.dialogue.party import rows_that_do_not_fit
from sml_jax.sampling import Sampler
from sml_jax.tasks.base import Problem, Verdict

SECRET = "SECRET-REFERENCE-42"


@dataclasses.dataclass
class FixedVerdictTask:
  """Correct at student turn `problem.meta['solve_at']` (never if 0); every turn is an attempt."""
  name: str = "fixed"
  domain: str = "math"
  leak_all: bool = False

  def __post_init__(self):
    self.turn = {}

  def verify_batch(self, problems, texts):
    out = []
    for p, _ in zip(problems, texts):
      self.turn[p.id] = self.turn.get(p.id, 0) + 1
      solve_at = p.meta["solve_at"]
      out.append(Verdict(attempted=True, correct=self.turn[p.id] == solve_at, extracted="7",
                         feedback="wrong"))
    return out

  def verify(self, problem, text):
    return self.verify_batch([problem], [text])[0]

  def leaked(self, problem, text):
    return self.leak_all

  def redact(self, problem, text):
    return text.replace(SECRET, "[redacted]")


def _problem(i, solve_at):
  return Problem(id=f"p{i}", task="fixed", domain="math", statement=f"What is {i} + 3?",
                 privileged=f"{i} + 3 = {i + 3}. {SECRET}", answer=str(i + 3), meta={"solve_at": solve_at})


@pytest.fixture(scope="module")
def sampler(tiny):
  model, _ = tiny
  return Sampler(model, cache_length=512, dtype=jnp.float32)


def _runner(sampler, tokenizer, task, **cfg):
  base = dict(max_turns=3, student_max_tokens=6, teacher_max_tokens=6, temperature=0.0,
              teacher="scripted")
  base.update(cfg)
  return EpisodeRunner(sampler, tokenizer, lambda name: task, DialogueConfig(**base),
                       classify_turn=lambda text, attempted: "attempt" if attempted else "other")


def test_rewards_early_stop_and_contexts(sampler, tokenizer, tiny):
  _, params = tiny
  task = FixedVerdictTask()
  problems = [_problem(0, 1), _problem(1, 2), _problem(2, 0), _problem(3, 3)]
  convs = _runner(sampler, tokenizer, task).run(problems, params)
  solved = [c.solved_turn for c in convs]
  assert solved == [1, 2, None, 3]
  assert [c.num_student_turns for c in convs] == [1, 2, 3, 3]  # Early stop when correct.
  np.testing.assert_allclose([c.reward for c in convs], [1.0, 0.7, 0.0, 0.49])
  for c in convs:
    roles = [t.role for t in c.turns]
    assert roles[0] == "user" and roles[1::2] == ["student"] * c.num_student_turns
    assert all(r == "teacher" for r in roles[2::2])
    ids, r, logp = c.training_arrays()
    # The public (student) context never holds privileged text.
    assert SECRET not in tokenizer.decode(ids.tolist())
    # Student tokens = exactly the sampled turns, each closed by <end_of_turn>.
    student_ids = ids[r == cf.Role.MODEL].tolist()
    assert student_ids.count(cf.END_OF_TURN_ID) <= c.num_student_turns
    assert np.all(logp[r != cf.Role.MODEL] == 0.0)
    assert np.all(logp[r == cf.Role.MODEL] <= 0.0)


def test_conversation_that_outgrows_the_cache_ends_unsolved_instead_of_crashing(tokenizer, tiny):
  model, params = tiny
  task = FixedVerdictTask()
  runner = _runner(Sampler(model, cache_length=512, dtype=jnp.float32), tokenizer, task,
                   max_turns=50, student_max_tokens=24, teacher_max_tokens=24)
  convs = runner.run([_problem(0, 0), _problem(1, 2)], params)
  assert convs[0].out_of_context and convs[0].solved_turn is None
  assert 1 < convs[0].num_student_turns < 50
  assert len(convs[0].student.ids) <= 512
  assert convs[1].solved_turn == 2 and not convs[1].out_of_context
  assert convs[0].to_json()["out_of_context"] is True


def test_scripted_reply_too_long_for_the_cache_ends_the_conversation(tokenizer, tiny):
  """Scripted code feedback carries the failing tests' output (up to 600 characters): a reply
  that would not fit ends the conversation instead of overflowing the cache."""
  model, params = tiny

  class LongFeedback(FixedVerdictTask):
    def verify_batch(self, problems, texts):
      return [dataclasses.replace(v, feedback="E " * 300)
              for v in super().verify_batch(problems, texts)]

  problem = dataclasses.replace(_problem(0, 0), domain="code")
  sampler = Sampler(model, cache_length=1024, dtype=jnp.float32)
  runner = _runner(sampler, tokenizer, LongFeedback(domain="code"), max_turns=10,
                   student_max_tokens=16)
  (c,) = runner.run([problem], params)
  assert c.out_of_context and c.solved_turn is None and len(c.student.ids) <= 1024
  assert 1 < c.num_student_turns < 10


@dataclasses.dataclass
class FeedbackByProblem(FixedVerdictTask):
  """Code feedback of `lengths[problem.id]` words: conversations that grow at different rates."""
  lengths: dict = dataclasses.field(default_factory=dict)

  def verify_batch(self, problems, texts):
    return [dataclasses.replace(v, feedback="E " * self.lengths[p.id])
            for p, v in zip(problems, super().verify_batch(problems, texts))]


def _code_problems(n):
  return [dataclasses.replace(_problem(i, 0), domain="code") for i in range(n)]


def test_a_finished_long_conversation_does_not_crowd_out_the_others(tokenizer, tiny):
  """All rows of a KV cache write at one slot pointer: a long conversation that has ended must
  give its slots back, or a short one's next reply overflows the batch (a 16-problem MBPP eval
  with the LLM teacher crashed this way). The survivor's dialogue is the one it has alone."""
  model, params = tiny
  lengths = {"p0": 200, "p1": 20}
  run = lambda problems: _runner(
      Sampler(model, cache_length=512, dtype=jnp.float32), tokenizer,
      FeedbackByProblem(domain="code", lengths=lengths), max_turns=12,
      student_max_tokens=16).run(problems, params)
  long, short = run(_code_problems(2))
  assert long.out_of_context and long.num_student_turns == 2
  assert short.num_student_turns > long.num_student_turns
  (alone,) = run(_code_problems(2)[1:])
  assert [t.text for t in short.turns] == [t.text for t in alone.turns]
  assert short.student.ids == alone.student.ids


@pytest.mark.parametrize("teacher", ["scripted", "llm"])
def test_conversations_growing_at_different_rates_all_end_within_the_cache(tokenizer, tiny, teacher):
  model, params = tiny
  task = FeedbackByProblem(domain="code", lengths={"p0": 40, "p1": 5, "p2": 120, "p3": 250})
  runner = _runner(Sampler(model, cache_length=512, dtype=jnp.float32), tokenizer, task,
                   teacher=teacher, max_turns=12, student_max_tokens=16, teacher_max_tokens=24)
  convs = runner.run(_code_problems(4), params)
  assert all(c.out_of_context and c.solved_turn is None for c in convs)
  assert all(len(c.student.ids) <= 512 and len(c.teacher.ids) <= 512 for c in convs)
  turns = [c.num_student_turns for c in convs]
  assert turns[1] > turns[0] > turns[3] and turns[2] > turns[3]   # Shorter feedback, more turns.


@pytest.mark.parametrize("lengths, growth, then, expected", [
    ([100, 100], {0: 50, 1: 50}, 0, []),                 # 100 + 50 fits 200
    ([180, 20], {1: 50}, 0, [1]),                        # shared pointer: 180 + 50 > 200
    ([180, 20], {0: 10, 1: 50}, 0, [0]),                 # drop the row nearest to overflowing
    ([100, 100], {0: 50, 1: 50}, 60, [0, 1]),            # no room left for the next turn
])
def test_rows_that_do_not_fit(lengths, growth, then, expected):
  assert sorted(rows_that_do_not_fit(lengths, growth, 200, then=then)) == expected


def test_kv_cache_context_matches_history(sampler, tokenizer, tiny, monkeypatch):
  """The sampler's multi-turn context equals the loop's token history (no drift across turns):
  at every student turn, the tokens the cache was built from are the conversation's history so
  far, and what the model sampled from the cache (token and log-prob) is what a fresh forward
  pass over that history gives."""
  import jax
  model, params = tiny
  calls = []
  real_sample = sampler.sample

  def recording_sample(params_, state, **kw):  # The real sampler, its inputs and outputs kept.
    history = [list(h) for h in state.history]
    new_state, out = real_sample(params_, state, **kw)
    calls.append((history, np.asarray(kw["active"]), out))
    return new_state, out

  monkeypatch.setattr(sampler, "sample", recording_sample)
  task = FixedVerdictTask()
  runner = _runner(sampler, tokenizer, task, max_turns=2)
  convs = runner.run([_problem(0, 0), _problem(1, 0)], params)
  assert len(calls) == 2 and all(c.solved_turn is None for c in convs)  # Two student turns each.
  assert len(calls[1][0][0]) > len(calls[0][0][0]) + 1  # Turn 2 sees turn 1 and the feedback.
  for history, active, out in calls:
    assert active.tolist() == [True, True]
    for k, conv in enumerate(convs):
      ids = conv.student.ids
      assert history[k] == list(ids[:len(history[k])])  # The cached context is the history.
      generated = out.tokens[k].tolist()
      assert generated and ids[len(history[k]):len(history[k]) + len(generated)] == generated
      seq = jnp.asarray([history[k] + generated])
      logits = model.apply({"params": params}, tokens=seq).logits[0].astype(jnp.float32)
      logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))[
          np.arange(len(history[k]) - 1, len(history[k]) + len(generated) - 1), generated]
      np.testing.assert_allclose(out.logprobs[k], logp, atol=2e-3)
      # Greedy: each token is the fresh forward pass's argmax.
      positions = np.arange(len(history[k]) - 1, len(history[k]) + len(generated) - 1)
      assert np.asarray(jnp.argmax(logits, -1))[positions].tolist() == generated


def test_scripted_teacher_uses_verifier_only(sampler, tokenizer, tiny):
  _, params = tiny
  conv = _runner(sampler, tokenizer, FixedVerdictTask(), max_turns=2).run([_problem(5, 0)], params)[0]
  teacher_turns = [t.text for t in conv.turns if t.role == "teacher"]
  assert teacher_turns == [prompts.scripted_feedback(conv.problem, Verdict(True, False, "7", "wrong"))]


def test_llm_teacher_leaks_are_counted_and_redacted(sampler, tokenizer, tiny):
  _, params = tiny
  task = FixedVerdictTask(leak_all=True)
  runner = _runner(sampler, tokenizer, task, teacher="llm", leak_policy="redact", max_turns=2)
  convs = runner.run([_problem(0, 0), _problem(1, 0)], params)
  teacher_turns = [t for c in convs for t in c.turns if t.role == "teacher"]
  assert teacher_turns and all(t.flags["leak"] for t in teacher_turns)
  assert runner.stats["teacher_leaks"] == runner.stats["teacher_turns"] == len(teacher_turns)
  # Still flagged after `task.redact` (this task flags everything): a safe line reaches the
  # student, and the teacher's own context holds that line, not its draw.
  assert {t.text for t in teacher_turns} == {teachers.SAFE_LINES["math"]}
  assert runner.stats["leak_fallbacks"] == len(teacher_turns)
  for c in convs:
    assert teachers.SAFE_LINES["math"] in tokenizer.decode(c.teacher.ids)
  # The teacher's own context carries the briefing with the privileged text; the student's does not.
  for c in convs:
    assert SECRET in tokenizer.decode(c.teacher.ids)
    assert SECRET not in tokenizer.decode(c.student.ids)


def test_qpriming_replaces_failed_attempts_by_questions(sampler, tokenizer, tiny):
  _, params = tiny
  runner = _runner(sampler, tokenizer, FixedVerdictTask(), qprime_q=1.0, max_turns=3)
  convs = runner.run([_problem(0, 0), _problem(1, 0)], params)
  for c in convs:
    student = [t for t in c.turns if t.role == "student"]
    # q ** t = 1: every failed attempt but the last turn's becomes a question.
    assert [t.flags["qprime"] for t in student] == [True, True, False]
    assert all(t.flags["question"] and not t.flags["attempt"] for t in student[:2])
    ids, roles, _ = c.training_arrays()
    text = tokenizer.decode(ids.tolist())
    for t in student[:2]:
      assert t.text in text  # The question, not the failed attempt, is in the student's context.
    assert SECRET not in text
  assert runner.stats["qprimed"] == 4


def test_underspecified_reveals_shards_and_flags_premature(sampler, tokenizer, tiny):
  _, params = tiny
  p = dataclasses.replace(_problem(0, 0), shards=("How many apples?", "Ann has 3.", "Bob gives 4."))
  conv = _runner(sampler, tokenizer, FixedVerdictTask(), max_turns=3).run([p], params)[0]
  student = [t for t in conv.turns if t.role == "student"]
  assert [t.flags["premature"] for t in student] == [True, True, False]
  teacher = [t for t in conv.turns if t.role == "teacher"]
  assert [t.flags["shard"] for t in teacher] == [True, True]
  assert "Ann has 3." in teacher[0].text and "Bob gives 4." in teacher[1].text
  assert conv.to_json()["underspecified"] is True


def test_turn_reward():
  assert turn_reward(None, 0.7) == 0.0
  assert turn_reward(1, 0.7) == 1.0
  assert turn_reward(3, 0.5) == 0.25


def test_bad_dialogue_config_names_the_field():
  with pytest.raises(ValueError, match="dialogue.teacher"):
    DialogueConfig(teacher="oracle")
  with pytest.raises(ValueError, match="dialogue.gamma"):
    DialogueConfig(gamma=0.0)


@pytest.mark.slow
def test_teacher_line_stop_keeps_the_dialogue_and_saves_decode_steps(real_270m, tokenizer, monkeypatch):
  """The teacher's turns are cut at their first line; decoding stops there too (the base 270M
  writes "Not quite." and goes on for the whole budget). Same transcripts, fewer tokens."""
  from sml_jax.tasks import registry
  model, params = real_270m
  task = registry.get_task("gsm8k")
  problems = task.problems("eval", limit=3, seed=0)
  sampler = Sampler(model, cache_length=2048, dtype=jnp.float32)
  teacher_tokens = []
  real_sample = Sampler.sample

  def counting_sample(self, *args, **kwargs):
    state, out = real_sample(self, *args, **kwargs)
    if kwargs["max_new_tokens"] == 40:  # the teacher's budget
      teacher_tokens.append(sum(len(t) for t in out.tokens))
    return state, out

  monkeypatch.setattr(Sampler, "sample", counting_sample)
  run = lambda: EpisodeRunner(sampler, tokenizer, lambda name: task, DialogueConfig(
      max_turns=2, student_max_tokens=48, teacher_max_tokens=40, temperature=0.0,
      teacher="llm")).run(problems, params, seed=0)
  with_stop = run()
  sampled_with_stop, teacher_tokens[:] = sum(teacher_tokens), []
  monkeypatch.setattr(teachers.LLMTeacher, "_line_stop", lambda self: None)
  without = run()
  print(f"teacher tokens sampled: {sampled_with_stop} with the line stop, {sum(teacher_tokens)} without")
  assert sampled_with_stop < sum(teacher_tokens)
  assert [[t.text for t in c.turns] for c in with_stop] == [[t.text for t in c.turns] for c in without]
  assert [c.teacher.ids for c in with_stop] == [c.teacher.ids for c in without]
  assert [c.student.ids for c in with_stop] == [c.student.ids for c in without]
  teacher_turns = [t.text for c in with_stop for t in c.turns if t.role == "teacher"]
  assert teacher_turns and all(t.strip() for t in teacher_turns)


def test_teacher_demos_match_the_problem_domain():
  math, code = _problem(0, 0), dataclasses.replace(_problem(0, 0), domain="code")
  assert "6 + 7" in prompts.teacher_demos(math)[0][1]
  assert "def add" in prompts.teacher_demos(code)[0][1] and "6 + 7" not in prompts.teacher_demos(code)[0][1]
  assert prompts.teacher_demos(code, enabled=False) == ()


def test_a_slice_of_the_batch_run_alone_samples_the_same_conversations(sampler, tokenizer, tiny):
  """Multi-host rollouts: each host runs its own rows with `first_row` = their place in the
  global batch. Every random draw (student and teacher sampling, Q-priming's coin and question,
  a leak's resample) is keyed by that row, so the two halves equal the whole run. Both parties
  sample from their top 40 tokens: the halves' decode shapes differ from the whole's, which
  changes float summation order on some CPUs (Zen 1), and an inverse-CDF draw over the random
  model's nearly flat 262k-token distribution flips on such differences (as in the two-host
  test)."""
  _, params = tiny
  cfg = dict(temperature=1.0, top_k=40, teacher="llm", teacher_temperature=1.0, teacher_top_k=40,
             qprime_q=0.6, leak_policy="resample")
  problems = [_problem(i, 0) for i in range(4)]
  run = lambda ps, first_row: _runner(sampler, tokenizer, FixedVerdictTask(leak_all=True), **cfg).run(
      ps, params, seed=3, repeats=2, first_row=first_row)
  whole = run(problems, 0)
  halves = run(problems[:2], 0) + run(problems[2:], 4)
  key = lambda c: (c.to_json(), c.student.ids, c.teacher.ids)
  assert [key(c) for c in halves] == [key(c) for c in whole]
  # Not vacuous: rows draw different samples, and Q-priming fired on some rows but not all.
  assert len({c.turns[1].text for c in whole}) > 1
  qprimed = [t.flags["qprime"] for c in whole for t in c.turns if t.role == "student"]
  assert any(qprimed) and not all(qprimed)
  # Without the offset the second half draws the first half's streams: different conversations.
  shifted = run(problems[2:], 0)
  assert [key(c) for c in shifted] != [key(c) for c in whole[4:]]


def test_runs_are_independent_and_counters_add_up(sampler, tokenizer, tiny):
  """`run` keeps no state between calls: the same run twice gives the same conversations, while
  `stats` and `seconds` add up over runs (callers read them after each run)."""
  _, params = tiny
  runner = _runner(sampler, tokenizer, FixedVerdictTask(), qprime_q=1.0, max_turns=2,
                   temperature=1.0)
  first = runner.run([_problem(0, 0)], params, seed=1, first_row=3)
  assert runner.stats["qprimed"] == 1 and set(runner.seconds) == {"student", "verify", "qprime",
                                                                   "teacher"}
  student_seconds = runner.seconds["student"]
  second = runner.run([_problem(0, 0)], params, seed=1, first_row=3)
  assert [(c.to_json(), c.student.ids) for c in first] == [(c.to_json(), c.student.ids) for c in second]
  assert runner.stats["qprimed"] == 2 and runner.seconds["student"] > student_seconds > 0
