"""Teachers: who answers a student turn, by kind (`dialogue.teacher`).

    scripted  feedback from the verifier's verdict alone (cheap, never leaks)
    llm       a language model briefed with the privileged information + the verifier's note,
              with a leak policy for replies that state the answer:
                count     keep the reply, flag and count the leak
                redact    ... and cut the answer / code out of it
                resample  draw the reply once more (sampled), then redact if it still leaks

A teacher is built per run (`make_teacher`) from a `TeacherSetup`, and per turn gets the
conversations that go on with their verdicts; it returns a typed `Reply` per conversation it
answered (a conversation without one ran out of context). For underspecified problems every
teacher reveals the next shard of the problem (`reveal_shard`).

A new kind is one class with `kind`, `reply` and `release`, and one entry in `TEACHERS`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Protocol, Sequence

from sml_jax import rng
from sml_jax.dialogue import chat_format as cf
from sml_jax.dialogue import prompts
from sml_jax.dialogue import turn_end
from sml_jax.dialogue.conversation import Conversation, opening_segment, reply_segment
from sml_jax.dialogue.party import Party, Sampled
from sml_jax.tasks.base import Problem, Task, Verdict

if TYPE_CHECKING:
  from sml_jax.dialogue.episode import DialogueConfig

LEAK_POLICIES = ("count", "redact", "resample")


@dataclasses.dataclass(frozen=True)
class Reply:
  """A teacher's public turn: its text (as the student sees it) and what happened to it."""
  text: str
  leak: bool = False    # the reply as drawn stated the answer (counted; maybe redacted)
  shard: bool = False   # it reveals the next shard of an underspecified problem

  @property
  def flags(self) -> dict[str, bool]:
    return {"leak": self.leak, "shard": self.shard}


@dataclasses.dataclass(frozen=True)
class TeacherSetup:
  """What a teacher gets at the start of a run."""
  cfg: DialogueConfig
  tokenizer: Any
  task_lookup: Callable[[str], Task]
  sampler: Any                           # the teacher's sampler (by default the student's)
  params: Any                            # the teacher's weights
  conversations: Sequence[Conversation]  # the run's batch; `reply` names them by index
  seed: int                              # the run's dialogue seed (rng streams by turn)
  first_row: int                         # global row id of conversation 0
  stats: dict[str, int]                  # counters to add to (teacher_turns, teacher_leaks, ...)


class Teacher(Protocol):
  kind: ClassVar[str]

  def reply(self, convs: Mapping[int, Conversation], verdicts: Mapping[int, Verdict],
            turn: int) -> dict[int, Reply]:
    """Replies to the latest student turn (`turn`) of `convs` ({batch index: conversation});
    `verdicts[i]` is the verifier's verdict on it. Conversations left without a reply are marked
    `out_of_context`."""

  def release(self, done: Sequence[int]) -> None:
    """The conversations `done` (batch indices) have ended: free what they hold."""


def redact(text: str, problem: Problem) -> str:
  """Removes the final answer (math) or code blocks (code) from a leaking teacher turn."""
  if problem.domain == "code":
    return re.sub(r"```.*?(```|$)", "[code removed]", text, flags=re.S)
  if problem.answer:
    text = re.sub(rf"(?<![\d.]){re.escape(problem.answer)}(?![\d])", "[redacted]", text)
  return text


def reveal_shard(c: Conversation) -> str | None:
  """The next shard of an underspecified problem as the teacher says it (counted as revealed),
  or None when there is none left to reveal."""
  if not (c.problem.underspecified and c.shards_revealed < len(c.problem.shards)):
    return None
  premature = c.turns[-1].flags.get("premature", False)
  shard = prompts.reveal_shard(c.problem.shards[c.shards_revealed], premature)
  c.shards_revealed += 1
  return shard


class ScriptedTeacher:
  """Feedback from the verdict alone; for an underspecified problem, the next shard instead."""
  kind = "scripted"

  def __init__(self, setup: TeacherSetup):
    del setup  # Needs nothing beyond the conversations and verdicts.

  def reply(self, convs, verdicts, turn):
    del turn
    replies = {}
    for i, c in convs.items():
      shard = reveal_shard(c)
      text = prompts.scripted_feedback(c.problem, verdicts[i]) if shard is None else shard
      replies[i] = Reply(text, shard=shard is not None)
    return replies

  def release(self, done):
    del done


class LLMTeacher:
  """A language model that sees the privileged briefing, the student's turns and the verifier's
  notes (its own context, `Conversation.teacher`, in its own cache), and answers in one line."""
  kind = "llm"

  def __init__(self, setup: TeacherSetup):
    self.cfg, self.tok, self.task_lookup = setup.cfg, setup.tokenizer, setup.task_lookup
    self.sampler, self.params, self.seed, self.stats = (setup.sampler, setup.params, setup.seed,
                                                        setup.stats)
    self.party = Party(setup.sampler, setup.params, [c.teacher for c in setup.conversations],
                       setup.first_row)
    self.closed: dict[int, bool] = {}  # whether the teacher's last turn ended on <end_of_turn>

  def reply(self, convs, verdicts, turn):
    cfg, party = self.cfg, self.party
    new = {i: self._student_segment(i, c, verdicts[i]) for i, c in convs.items()}
    fresh = not party.in_sync(new)   # first teacher turn, or the last reply was resampled
    drop = party.overflowing({i: len(ids) for i, (ids, _) in new.items()}, cfg.teacher_max_tokens,
                             fresh=fresh)
    if not fresh:
      party.evict(drop)
    for i, c in convs.items():
      if i in drop:
        c.out_of_context = True  # The student's turn + the verifier's note do not fit.
      else:
        c.teacher.extend(*new[i])
    rows = [i for i in convs if i not in drop]
    if not rows:
      return {}
    party.sync(rows)
    turns = party.sample(rows, seed=rng.stream(self.seed, "teacher", turn=turn),
                         max_new_tokens=cfg.teacher_max_tokens,
                         temperature=cfg.teacher_temperature, line_stop=self._line_stop())
    party.drop_tails(self._cut(turns))
    if cfg.leak_policy == "resample":
      self._resample_leaks(convs, turns, turn)
    replies = {}
    for i, s in turns.items():
      convs[i].teacher.extend(s.tokens, [cf.Role.MODEL] * len(s.tokens))
      self.closed[i] = s.stopped
    for i, s in turns.items():
      replies[i] = self._public(convs[i], cf.decode_turn(self.tok, s.tokens))
    return replies

  def release(self, done):
    self.party.release(done)

  def _student_segment(self, i, c, verdict):
    """What the teacher reads of the student's latest turn: with the briefing at the first turn."""
    student_text = c.turns[-1].text + prompts.verifier_note(verdict)
    if not c.teacher.ids:
      first = prompts.teacher_briefing(c.problem) + "\n\nThe student said:\n" + student_text
      return opening_segment(self.tok, first, prompts.teacher_demos(c.problem, self.cfg.fewshot))
    return reply_segment(self.tok, student_text, close_previous=not self.closed.get(i, True))

  def _line_stop(self):
    """Teacher turns are cut at their first line: stop decoding there (when cutting at all)."""
    return turn_end.line_stop(self.tok) if self.cfg.cut_turns else None

  def _cut(self, turns: Mapping[int, Sampled]) -> dict[int, int]:
    """Cuts sampled turns (in place) at their first paragraph (`turn_end.teacher_cut`). Returns
    {i: tokens removed}, the tails to drop from the cache."""
    removed = {i: 0 for i in turns}
    if not self.cfg.cut_turns:
      return removed
    for i, s in turns.items():
      body = cf.strip_stop(s.tokens)
      cut = turn_end.teacher_cut(self.tok.decode(body))
      if cut is not None:
        n = turn_end.tokens_within(self.tok, body, cut)
        removed[i] = len(s.tokens) - n
        # The next reply segment closes the turn with <end_of_turn>.
        s.tokens, s.logprobs, s.stopped = s.tokens[:n], s.logprobs[:n], False
    return removed

  def _leaked(self, c: Conversation, text: str) -> bool:
    return bool(self.task_lookup(c.problem.task).leaked(c.problem, text))

  def _resample_leaks(self, convs, turns: dict[int, Sampled], turn: int) -> None:
    """One fresh draw (sampled, not greedy) replaces each leaking reply in `turns`; `_public`
    still counts a leak and redacts if the retry leaks too."""
    leaked = [i for i, s in turns.items() if self._leaked(convs[i], cf.decode_turn(self.tok, s.tokens))]
    if not leaked:
      return
    self.stats["resampled"] += len(leaked)
    out = self.sampler.generate(
        self.params, [convs[i].teacher.ids for i in leaked], max_new_tokens=self.cfg.teacher_max_tokens,
        temperature=max(self.cfg.teacher_temperature, 0.7),
        seed=rng.stream(self.seed, "teacher_retry", turn=turn), line_stop=self._line_stop(),
        row_ids=self.party.row_ids(leaked))
    retry = {i: Sampled(out.tokens[k], out.logprobs[k], bool(out.stopped[k]))
             for k, i in enumerate(leaked)}
    self._cut(retry)
    turns.update(retry)
    self.party.stale = True  # The cache holds the leaked draw: rebuild it next turn.

  def _public(self, c: Conversation, text: str) -> Reply:
    """The reply the student sees: the leak policy applied, the next shard appended."""
    self.stats["teacher_turns"] += 1
    leak = self._leaked(c, text)
    if leak:
      self.stats["teacher_leaks"] += 1
      if self.cfg.leak_policy in ("redact", "resample"):
        text = redact(text, c.problem)
    shard = reveal_shard(c)
    if shard is not None:
      text = f"{text}\n\n{shard}"
    return Reply(text, leak=leak, shard=shard is not None)


TEACHERS: dict[str, type] = {"scripted": ScriptedTeacher, "llm": LLMTeacher}
TEACHER_KINDS = tuple(TEACHERS)


def make_teacher(setup: TeacherSetup) -> Teacher:
  """The teacher of kind `setup.cfg.teacher` for one run."""
  kind = setup.cfg.teacher
  if kind not in TEACHERS:
    raise ValueError(f"dialogue.teacher must be one of {tuple(TEACHERS)}, got {kind!r}.")
  return TEACHERS[kind](setup)
