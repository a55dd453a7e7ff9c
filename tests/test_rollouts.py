"""Conversations -> training examples (`sml_jax/stages/examples.py`): which tokens each stage
trains on, and with what weight."""

import numpy as np

from sml_jax.dialogue import chat_format as cf
from sml_jax.dialogue.conversation import Conversation, Turn
from sml_jax.tasks.base import Problem
from sml_jax.stages import examples as rollouts

MATH = Problem(id="m1", task="arithmetic", domain="math", statement="What is 2 + 3?",
               privileged="2 + 3 = 5\nFinal answer: 5", answer="5")
CODE = Problem(id="c1", task="mbpp", domain="code", statement="Write add(a, b).",
               privileged="def add(a, b):\n  return a + b", tests=("assert add(1, 2) == 3",),
               entry_point="add")


def _conversation(problem, student_turns, reward=0.0):
  """A hand-built conversation: token ids are just 1000 + position, roles by turn."""
  c = Conversation(problem, "scripted", max_turns=len(student_turns))
  c.student.extend([2, 10, 11], [cf.Role.TEMPLATE, cf.Role.USER, cf.Role.USER])
  c.turns.append(Turn("user", problem.statement))
  for k, (n, flags) in enumerate(student_turns):
    start = len(c.student.ids)
    c.student.extend(range(1000 + start, 1000 + start + n), [cf.Role.MODEL] * n, [-0.5] * n)
    c.turns.append(Turn("student", f"turn {k}", flags))
    if k + 1 < len(student_turns):
      c.student.extend([20, 21], [cf.Role.USER, cf.Role.USER])
      c.turns.append(Turn("teacher", "hint"))
  c.reward = reward
  c.solved_turn = len(student_turns) if reward else None
  return c


def test_rl_examples_weight_every_student_token_by_the_group_advantage():
  group = [_conversation(MATH, [(3, {})], reward=1.0), _conversation(MATH, [(3, {}), (2, {})]),
           _conversation(MATH, [(4, {})]), _conversation(MATH, [(1, {})])]
  flat = [_conversation(MATH, [(3, {})]) for _ in range(4)]  # all-equal rewards: no signal
  examples, adv = rollouts.rl_examples(group + flat, group_size=4)
  # rewards [1, 0, 0, 0]: mean 0.25, sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5.
  std = 0.5
  np.testing.assert_allclose(adv[:4], [0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std], rtol=1e-5)
  np.testing.assert_array_equal(adv[4:], 0.0)
  assert len(examples) == 4
  np.testing.assert_allclose([e.weight for e in examples], adv[:4], rtol=1e-6)
  for e, c in zip(examples, group):
    np.testing.assert_array_equal(e.ids, c.student.ids)
    np.testing.assert_array_equal(e.old_logprobs, c.student.logprobs)


def test_format_penalty_ranks_a_well_formed_failure_above_a_malformed_one():
  """A group none of whose conversations solved carries no signal on the success reward alone;
  with rl.format_penalty the malformed ones (no anchor, mixed script) rank below the well-formed
  ones, and a solved conversation with a malformed turn still ranks above every failure."""
  good, bad = {"well_formed": True}, {"well_formed": False}
  failed = [_conversation(MATH, [(3, good), (3, good)]), _conversation(MATH, [(3, bad), (3, good)]),
            _conversation(MATH, [(3, bad), (3, bad)]), _conversation(MATH, [(3, good)])]
  assert rollouts.rl_examples(failed, group_size=4)[0] == []       # the paper's reward: no signal
  np.testing.assert_allclose(rollouts.shaped_rewards(failed, 0.3), [0.0, -0.15, -0.3, 0.0])
  examples, adv = rollouts.rl_examples(failed, group_size=4, format_penalty=0.3)
  assert len(examples) == 4 and adv[0] == adv[3] > 0 > adv[1] > adv[2]
  # gamma = 0.7, 4 turns: the worst solved dialogue (turn 4, all 4 turns malformed: a correct
  # answer may be in mixed script) gets 0.343 - 0.3 > 0, above every failure.
  late = _conversation(MATH, [(2, bad)] * 4, reward=0.7 ** 3)
  rewards = rollouts.shaped_rewards([late, *failed], 0.3)
  assert rewards[0] > 0 and rewards[0] > rewards[1:].max()
  # A turn without the flag (a transcript from before the flag existed) is not penalised.
  assert rollouts.shaped_rewards([_conversation(MATH, [(3, {})])], 0.3).tolist() == [0.0]


def test_offline_sml_keeps_only_successful_conversations():
  won, lost = _conversation(MATH, [(3, {})], reward=1.0), _conversation(MATH, [(3, {})])
  examples = rollouts.offline_sml_examples([won, lost, won])
  assert len(examples) == 2 and all(e.weight == 1.0 for e in examples)


def test_qprime_examples_train_questions_and_correct_answers_not_failed_attempts():
  c = _conversation(MATH, [(3, {"question": True, "qprime": True}), (2, {"attempt": True}),
                           (4, {"correct": True})], reward=0.49)
  (example,) = rollouts.qprime_examples([c])
  spans = rollouts.student_turn_spans(example.roles)
  assert [e - s for s, e in spans] == [3, 2, 4]
  w = example.token_weights
  assert w[spans[0][0]:spans[0][1]].tolist() == [1.0] * 3
  assert w[spans[1][0]:spans[1][1]].tolist() == [0.0] * 2
  assert w[spans[2][0]:spans[2][1]].tolist() == [1.0] * 4
  assert w.sum() == 7  # Nothing outside the student's turns.
  # A conversation with nothing worth imitating gives no example.
  assert rollouts.qprime_examples([_conversation(MATH, [(3, {"attempt": True})])]) == []


def test_reference_examples_train_exactly_the_reference_solution(tokenizer):
  math_ex, code_ex = rollouts.reference_examples([MATH, CODE], tokenizer)
  for ex, problem, expected in [(math_ex, MATH, MATH.privileged),
                                (code_ex, CODE, f"```python\n{CODE.privileged}\n```")]:
    trained = ex.ids[cf.loss_mask(ex.roles) > 0].tolist()
    assert trained[-1] == cf.END_OF_TURN_ID
    assert tokenizer.decode(trained[:-1]) == expected
    # The opening (with the problem statement) is context, not target.
    assert problem.statement in tokenizer.decode(ex.ids.tolist())
    assert (ex.roles == cf.Role.DEMO).any()  # The in-context demos are there, never trained.
  no_demos = rollouts.reference_examples([MATH], tokenizer, fewshot=False)[0]
  assert not (no_demos.roles == cf.Role.DEMO).any() and len(no_demos.ids) < len(math_ex.ids)
