"""`dialogue.party` bookkeeping and the teacher registry, on a pure-python fake sampler (no model)."""

import types

import numpy as np
import pytest

from sml_jax.dialogue import teachers
from sml_jax.dialogue import prompts
from sml_jax.dialogue.conversation import Context, Conversation, Turn, reply_segment
from sml_jax.dialogue.party import Party, reply_template_tokens
from sml_jax.tasks.base import Problem, Verdict


class FakeState:
  def __init__(self, history):
    self.history = [list(h) for h in history]

  @property
  def lengths(self):
    return np.asarray([len(h) for h in self.history], np.int64)


class FakeSampler:
  """Records its calls; a sampled turn is `max_new_tokens` copies of 9 (row ids recorded)."""
  cache_length = 40

  def __init__(self):
    self.calls = []

  def start(self, params, prompts):
    self.calls.append(("start", [list(p) for p in prompts]))
    return FakeState(prompts)

  def append(self, params, state, segments):
    self.calls.append(("append", [list(s) for s in segments]))
    return FakeState([h + list(s) for h, s in zip(state.history, segments)])

  def truncate(self, state, lengths):
    self.calls.append(("truncate", [int(n) for n in lengths]))
    return FakeState([h[:int(n)] for h, n in zip(state.history, lengths)])

  def sample(self, params, state, *, seed, active, row_ids, max_new_tokens, **policy):
    self.calls.append(("sample", list(map(bool, active)), [int(r) for r in row_ids]))
    tokens = [np.full(max_new_tokens if a else 0, 9, np.int32) for a in active]
    history = [h + t.tolist() for h, t in zip(state.history, tokens)]
    return FakeState(history), types.SimpleNamespace(
        tokens=tokens, logprobs=[np.zeros(len(t), np.float32) for t in tokens],
        stopped=np.zeros(len(tokens), bool))


def _party(lengths, first_row=0):
  contexts = [Context(list(range(1, n + 1)), [1] * n) for n in lengths]
  party = Party(FakeSampler(), None, contexts, first_row=first_row)
  party.rebuild(range(len(contexts)))
  return party


def test_release_cuts_finished_rows_to_one_token_once():
  party = _party([5, 8, 3])
  party.release([1])
  party.release([1])   # Already released: no second truncate.
  assert party.state.lengths.tolist() == [5, 1, 3]
  assert [c[0] for c in party.sampler.calls] == ["start", "truncate"]
  # A rebuild keeps a released row at its first token; a catch-up adds nothing to it.
  party.contexts[0].extend([50, 51], [1, 1])
  party.contexts[1].extend([60], [1])
  party.sync(range(3))
  assert party.sampler.calls[-1] == ("append", [[50, 51], [], []])
  # A sampled turn rewritten (Q-priming): the cache is stale, the next sync rebuilds it.
  turn = party.sample([2], seed=0, max_new_tokens=2)[2]
  party.contexts[2].extend(turn.tokens, [3] * len(turn.tokens))
  party.rewrite_turn(2, [70], [1])
  assert party.stale and party.contexts[2].ids == [1, 2, 3, 70]
  party.sync(range(3))
  assert party.sampler.calls[-1] == ("start", [[1, 2, 3, 4, 5, 50, 51], [1], [1, 2, 3, 70]])
  assert not party.stale


def test_sample_records_turn_start_and_keys_rows_globally():
  party = _party([4, 6], first_row=10)
  turns = party.sample([1], seed=0, max_new_tokens=3)
  assert list(turns) == [1] and turns[1].tokens.tolist() == [9, 9, 9]
  assert party.sampler.calls[-1] == ("sample", [False, True], [10, 11])
  assert party.turn_start == {1: 6}
  party.drop_tails({1: 2})
  assert party.state.lengths.tolist() == [4, 7]
  party.drop_tails({1: 0})   # Nothing cut: no truncate call.
  assert party.sampler.calls[-1][0] == "truncate" and len(party.sampler.calls) == 3


def test_room_checks_shared_pointer_and_fresh_prefill():
  party = _party([30, 5])
  assert party.has_room(1, 35) and not party.has_room(1, 36)
  # Appended behind the shared pointer (at row 0's 30), 11 more tokens for row 1 overflow ...
  assert party.overflowing({1: 11}, then=5, fresh=False) == [1]
  # ... prefilled on its own, row 1 takes them and its next turn (5 + 11 + 5 <= 40).
  assert party.overflowing({1: 11}, then=5, fresh=True) == []
  # What a context holds beyond the cache counts as growth.
  party.contexts[0].extend([0] * 6, [1] * 6)
  assert party.overflowing({0: 0}, then=5, fresh=False) == [0]
  party.evict([0])
  assert party.state.lengths.tolist() == [1, 5]


def test_reply_template_tokens_is_the_reply_segment_around_no_text(tokenizer):
  n = reply_template_tokens(tokenizer)
  ids, _ = reply_segment(tokenizer, "Try again.", close_previous=True)
  assert n == len(ids) - len(tokenizer.encode("Try again."))


def _setup(kind, convs=()):
  cfg = types.SimpleNamespace(teacher=kind)
  return teachers.TeacherSetup(cfg, None, None, None, None, list(convs), 0, 0, {})


def test_teacher_registry_names_the_field_for_an_unknown_kind():
  assert set(teachers.TEACHERS) == {"scripted", "hint", "llm"} == set(teachers.TEACHER_KINDS)
  with pytest.raises(ValueError, match=r"dialogue\.teacher.*'oracle'"):
    teachers.make_teacher(_setup("oracle"))
  assert isinstance(teachers.make_teacher(_setup("scripted")), teachers.ScriptedTeacher)


def test_scripted_teacher_replies_with_feedback_or_the_next_shard():
  plain = Problem(id="a", task="t", domain="math", statement="1 + 1?", privileged="", answer="2")
  sharded = Problem(id="b", task="t", domain="math", statement="", privileged="", answer="7",
                    shards=("How many?", "Ann has 3.", "Bob gives 4."))
  convs = {0: Conversation(plain, "scripted", 3), 1: Conversation(sharded, "scripted", 3)}
  for c in convs.values():
    c.turns.append(Turn("student", "5", {"premature": c.problem.underspecified}))
  verdict = Verdict(attempted=True, correct=False, extracted="5", feedback="wrong")
  teacher = teachers.make_teacher(_setup("scripted", convs.values()))
  replies = teacher.reply(convs, {0: verdict, 1: verdict}, turn=1)
  assert replies[0] == teachers.Reply(prompts.scripted_feedback(plain, verdict))
  assert replies[1].shard and not replies[1].leak and "Ann has 3." in replies[1].text
  assert replies[1].flags == {"leak": False, "shard": True, "demo_copy": False}
  assert convs[1].shards_revealed == 2
