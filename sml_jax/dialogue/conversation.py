"""One student–teacher conversation: its public turns, both parties' token contexts, its reward.

Two contexts are kept as token ids with per-token roles (the source of truth; a sampler's KV cache
mirrors them):
  student context:  <bos> user[opening] model[student] user[teacher] model[student] ...
  teacher context:  <bos> user[briefing + opening] model[ack] user[student + verifier note]
                    model[teacher] ...
In the teacher's context the roles are flipped: the teacher is the `model`, the student a `user`.
The student's tokens (Role.MODEL in the student context) are the only ones trained on.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from sml_jax.dialogue import chat_format as cf
from sml_jax.tasks.base import Problem


@dataclasses.dataclass
class Turn:
  role: str                      # "user" (opening / shard) | "student" | "teacher"
  text: str
  flags: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Context:
  """A growing token context with per-token roles, per-token sampler log-probs, and whether each
  token was sampled by the party's model (`sampled`): only sampled tokens have a meaningful
  log-prob, so only they carry policy-gradient weight. Not sampled: prompts, replies, template
  tokens, an `<end_of_turn>` appended after a cut, a Q-priming question written for the student."""
  ids: list[int] = dataclasses.field(default_factory=list)
  roles: list[int] = dataclasses.field(default_factory=list)
  logprobs: list[float] = dataclasses.field(default_factory=list)
  sampled: list[bool] = dataclasses.field(default_factory=list)

  def extend(self, ids, roles, logprobs=None, sampled: bool | None = None) -> None:
    """Appends tokens; `sampled` defaults to whether sampler `logprobs` are given."""
    ids, roles = list(map(int, ids)), list(map(int, roles))
    assert len(ids) == len(roles), (len(ids), len(roles))
    self.ids += ids
    self.roles += roles
    self.logprobs += list(map(float, logprobs)) if logprobs is not None else [0.0] * len(ids)
    self.sampled += [logprobs is not None if sampled is None else bool(sampled)] * len(ids)

  def truncate(self, n: int) -> None:
    """Keeps the first `n` tokens (e.g. to replace the latest turn)."""
    del self.ids[n:], self.roles[n:], self.logprobs[n:], self.sampled[n:]

  def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids int32 [T], roles int8 [T], logprobs float32 [T])."""
    return (np.asarray(self.ids, np.int32), np.asarray(self.roles, np.int8),
            np.asarray(self.logprobs, np.float32))

  def sampled_mask(self) -> np.ndarray:
    """bool [T]: the tokens the party's model sampled (see the class docstring)."""
    return np.asarray(self.sampled, bool)


@dataclasses.dataclass
class Conversation:
  problem: Problem
  teacher_kind: str              # a kind of `teachers.TEACHERS`: "scripted" | "llm" | "hint"
  max_turns: int
  repeat: int = 0
  turns: list[Turn] = dataclasses.field(default_factory=list)
  student: Context = dataclasses.field(default_factory=Context)
  teacher: Context = dataclasses.field(default_factory=Context)
  solved_turn: int | None = None  # 1-based student turn that was correct
  shards_revealed: int = 1       # underspecified: shards shown so far (shard 0 is in the opening)
  shown_shards: list[int] = dataclasses.field(default_factory=lambda: [0])  # ... which, in order
  reward: float = 0.0
  out_of_context: bool = False   # ended early: another turn would not fit the KV cache

  def show_shard(self, index: int) -> None:
    """Counts shard `index` as revealed to the student."""
    assert index not in self.shown_shards, (index, self.shown_shards)
    self.shown_shards.append(index)
    self.shards_revealed = len(self.shown_shards)

  def next_hidden_shard(self) -> int | None:
    """The first shard not yet revealed, or None."""
    return next((k for k in range(len(self.problem.shards)) if k not in self.shown_shards), None)

  @property
  def num_student_turns(self) -> int:
    return sum(t.role == "student" for t in self.turns)

  @property
  def done(self) -> bool:
    return (self.solved_turn is not None or self.num_student_turns >= self.max_turns
            or self.out_of_context)

  def to_json(self) -> dict[str, Any]:
    """The transcript format read by `sml_jax.evaluation` (one JSON object per line)."""
    return {
        "problem_id": self.problem.id, "task": self.problem.task, "domain": self.problem.domain,
        "teacher": self.teacher_kind, "max_turns": self.max_turns, "repeat": self.repeat,
        "underspecified": self.problem.underspecified,
        "turns": [{"role": t.role, "text": t.text, "flags": t.flags} for t in self.turns],
        "solved": self.solved_turn is not None, "solved_turn": self.solved_turn,
        "num_student_turns": self.num_student_turns, "reward": self.reward,
        "out_of_context": self.out_of_context,
    }

  def training_arrays(self):
    """(ids [T], roles [T], sampler logprobs [T]) of the student's context: train on Role.MODEL."""
    return self.student.arrays()


def write_transcripts(path, conversations) -> None:
  """One JSON line per conversation, to a local path or a gs:// URL."""
  from sml_jax import paths  # pylint: disable=g-import-not-at-top
  paths.write_text_atomic(path, "".join(json.dumps(c.to_json()) + "\n" for c in conversations))


def turn_reward(solved_turn: int | None, gamma: float) -> float:
  """Binary conversation reward with turn discount: gamma ** (t - 1) if solved at student turn t."""
  return 0.0 if solved_turn is None else float(gamma ** (solved_turn - 1))


def opening_segment(tokenizer, text: str, demos=()) -> tuple[np.ndarray, np.ndarray]:
  """<bos> [demonstration turns] user[text] <start_of_turn>model\\n: the first prompt of a context."""
  return cf.encode_dialogue(tokenizer, [*demos, ("user", text)], add_generation_prompt=True,
                            num_demo_turns=len(demos))


def reply_segment(tokenizer, text: str | None = None, text_ids=None, close_previous: bool = False):
  """What goes after a party's sampled turn: [<end_of_turn> if it ran out of budget] "\\n"
  user[text] <start_of_turn>model\\n. Returns (ids, roles)."""
  ids, roles = [], []
  if close_previous:
    ids, roles = [cf.END_OF_TURN_ID], [cf.Role.TEMPLATE]
  nl = list(tokenizer.encode("\n"))
  u_ids, u_roles = cf.encode_turn(tokenizer, "user", text, text_ids=text_ids)
  header = cf.turn_header(tokenizer, "model")
  ids = ids + nl + list(u_ids) + header
  roles = roles + [cf.Role.TEMPLATE] * len(nl) + list(u_roles) + [cf.Role.TEMPLATE] * len(header)
  return np.asarray(ids, np.int32), np.asarray(roles, np.int8)
