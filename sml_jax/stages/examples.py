"""Conversations -> training examples: the per-token weights that make a stage SFT or RL.

Every stage feeds the same train step; only the weights on the student's tokens differ:

  rl           weight = GRPO advantage of the conversation, A = (r - mean_g r) / (std_g r + eps)
               over its group of g conversations of the same problem (groups are consecutive),
               on the student tokens the model sampled; 0 on student tokens it did not sample
               (an <end_of_turn> appended after a cut, a Q-priming question): their log-prob is
               not the policy's, so no policy gradient acts on them.
               Groups whose rewards are all equal carry no signal (A = 0) and are dropped.
               With `format_penalty` p > 0 the reward r is the conversation's (gamma^(t-1) if
               solved at turn t, else 0) minus p x the share of its student turns that are not
               well-formed (`quality.well_formed`: no answer anchor and not a question, mixed
               script, an echo): see `shaped_rewards`.
  offline_sml  weight = 1 on every student turn of *successful* conversations (rejection sampling).
  sft          weight = 1 on a reference solution written as the student's first turn (no rollout):
               plain supervised finetuning, the baseline SML is compared with.
  qprime_sft   weight = 1 on the student turns worth imitating: model-written questions that
               replaced failed attempts (Q-priming), plain questions, and correct answers; failed
               attempts get 0. All conversations are kept: the questions are the point.

Pure numpy; the conversations come from `sml_jax.dialogue.episode.EpisodeRunner.run`. (It sits
above `dialogue/`: it reads conversations; the train step below it sees only `Example`s.)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sml_jax.dialogue import chat_format as cf
from sml_jax.dialogue import prompts
from sml_jax.dialogue.chat_format import Role
from sml_jax.dialogue.conversation import Conversation
from sml_jax.tasks.base import Problem
from sml_jax.training.advantages import grpo_advantages
from sml_jax.training.batching import Example


def student_turn_spans(roles: np.ndarray) -> list[tuple[int, int]]:
  """[start, end) of each maximal run of Role.MODEL tokens (one per student turn), in order."""
  is_model = np.concatenate([[False], np.asarray(roles) == Role.MODEL, [False]])
  edges = np.flatnonzero(np.diff(is_model.astype(np.int8)))
  return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def malformed_share(conv: Conversation) -> float:
  """The share of `conv`'s student turns not flagged `well_formed` (0 without student turns)."""
  flags = [t.flags.get("well_formed", True) for t in conv.turns if t.role == "student"]
  return sum(not f for f in flags) / len(flags) if flags else 0.0


def shaped_rewards(convs: Sequence[Conversation], format_penalty: float = 0.0) -> np.ndarray:
  """[N] the rewards GRPO sees: `conv.reward - format_penalty * malformed_share(conv)`.

  Why: with a conversation-level reward, every turn of a failed conversation gets its negative
  advantage, and a failure that kept trying has the most turns, each with its answer anchor
  ("Final answer:"). The policy gradient then pushes the anchor itself down, and the student
  drifts to writing no answer (echoing the teacher's hint, mixed-script text). The penalty makes a
  well-formed wrong attempt better than a malformed one within a group. Keep it below gamma^(T-1)
  (T = max_turns) so a solved conversation always beats an unsolved one. Advantages divide by the
  group's std, so in a group where every dialogue failed any p > 0 gives full-size advantages
  (their sign is what p sets); its size matters in groups that mix solved and unsolved dialogues.
  """
  rewards = np.asarray([c.reward for c in convs], np.float32)
  if format_penalty:
    rewards = rewards - np.float32(format_penalty) * np.asarray(
        [malformed_share(c) for c in convs], np.float32)
  return rewards


def rl_examples(convs: Sequence[Conversation], group_size: int, eps: float = 1e-6,
                with_logprobs: bool = True, format_penalty: float = 0.0
                ) -> tuple[list[Example], np.ndarray]:
  """GRPO examples (zero-advantage groups dropped) and the advantages of all conversations."""
  rewards = shaped_rewards(convs, format_penalty)
  adv = np.asarray(grpo_advantages(rewards, group_size, eps), np.float32)
  out = []
  for c, a in zip(convs, adv):
    if a == 0.0:
      continue
    ids, roles, logp = c.training_arrays()
    w = np.where(c.student.sampled_mask(), np.float32(a), np.float32(0.0)).astype(np.float32)
    out.append(Example(ids, roles, weight=float(a), token_weights=w,
                       old_logprobs=logp if with_logprobs else None))
  return out, adv


def offline_sml_examples(convs: Sequence[Conversation]) -> list[Example]:
  """SFT on the student turns of successful conversations."""
  return [Example(*c.training_arrays()[:2], weight=1.0) for c in convs if c.solved_turn is not None]


def qprime_examples(convs: Sequence[Conversation]) -> list[Example]:
  """SFT on questions (Q-primed or the student's own) and correct answers; not on failed attempts."""
  out = []
  for c in convs:
    ids, roles, _ = c.training_arrays()
    student_turns = [t for t in c.turns if t.role == "student"]
    spans = student_turn_spans(roles)
    if len(spans) != len(student_turns):
      raise AssertionError(f"{c.problem.id}: {len(spans)} student token spans for "
                           f"{len(student_turns)} student turns.")
    w = np.zeros(len(ids), np.float32)
    for (s, e), turn in zip(spans, student_turns):
      if turn.flags.get("question") or turn.flags.get("correct"):
        w[s:e] = 1.0
    if w.any():
      out.append(Example(ids, roles, weight=1.0, token_weights=w))
  return out


def reference_turn(problem: Problem) -> str:
  """The privileged reference solution as a student turn (math: worked solution ending in
  "Final answer: N"; code: the reference program in a python block)."""
  if problem.domain == "code":
    return f"```python\n{problem.privileged.strip()}\n```"
  return problem.privileged.strip()


def reference_examples(problems: Sequence[Problem], tokenizer, fewshot: bool = True,
                       teacher: str = "scripted") -> list[Example]:
  """SFT examples: the same opening (and in-context demos, those of a dialogue with a `teacher`
  of that kind) as a dialogue, then the reference solution as the student's turn; loss on that
  turn only."""
  out = []
  for p in problems:
    demos = prompts.student_demos(p, fewshot, teacher)
    ids, roles = cf.encode_dialogue(
        tokenizer, [*demos, ("user", prompts.student_opening(p)), ("model", reference_turn(p))],
        num_demo_turns=len(demos))
    out.append(Example(ids, roles, weight=1.0))
  return out
