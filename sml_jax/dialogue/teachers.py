"""Teachers: who answers a student turn, by kind (`dialogue.teacher`).

    scripted  feedback from the verifier's verdict alone (cheap, never leaks)
    hint      no LLM: informative hints built from the privileged information (`hints`): how far
              off a math answer is and the first step not reached, a code program's first
              failing test, the shard a question asks about; a question is answered from the
              reference solution. Deterministic given the run's seed, leak-free by construction
    llm       a language model briefed with the privileged information + the verifier's note,
              with a leak policy for replies that state the answer:
                count     keep the reply, flag and count the leak (for measuring leaks only)
                redact    ... and cut every flagged form of the answer / code out of it
                          (`Task.redact`); a reply that still leaks becomes a safe line
                resample  draw the reply once more (sampled), then redact if it still leaks
              The teacher's own context holds what the student saw (redacted, with the shard it
              revealed), not its raw draw.

A teacher is built per run (`make_teacher`) from a `TeacherSetup`, and per turn gets the
conversations that go on with their verdicts; it returns a typed `Reply` per conversation it
answered (a conversation without one ran out of context). For underspecified problems every
teacher reveals a shard of the problem (scripted / llm: the next one, `reveal_shard`; hint: the one
a question asks about). A student question (`turn.flags["question"]`, e.g. a Q-priming question)
comes with a question verdict: it is answered as a question, never judged as the attempt it
replaced.

A new kind is one class with `kind`, `reply` and `release`, and one entry in `TEACHERS`.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence

from sml_jax import rng
from sml_jax.dialogue import chat_format as cf
from sml_jax.dialogue import hints
from sml_jax.dialogue import quality
from sml_jax.dialogue import prompts
from sml_jax.dialogue import turn_end
from sml_jax.dialogue.conversation import Conversation, opening_segment, reply_segment
from sml_jax.dialogue.party import Party, Sampled
from sml_jax.tasks.base import Task, Verdict


LEAK_POLICIES = ("count", "redact", "resample")


@dataclasses.dataclass(frozen=True)
class Reply:
  """A teacher's public turn: its text (as the student sees it) and what happened to it."""
  text: str
  leak: bool = False    # the reply as drawn stated the answer (counted; maybe redacted)
  shard: bool = False   # it reveals a shard of an underspecified problem
  demo_copy: bool = False  # it reproduces a line of the teacher's in-context demonstrations

  @property
  def flags(self) -> dict[str, bool]:
    return {"leak": self.leak, "shard": self.shard, "demo_copy": self.demo_copy}


# What the student sees instead of a reply that would leak even after redaction.
SAFE_LINES = {"math": "Not quite. Check your steps again.",
              "code": "Your program does not pass the tests yet. Check it against the test in the "
                      "problem."}


@dataclasses.dataclass(frozen=True)
class TeacherSetup:
  """What a teacher gets at the start of a run."""
  cfg: Any                               # episode.DialogueConfig (episode imports this module)
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


def reveal_shard(c: Conversation) -> str | None:
  """The next shard of an underspecified problem as the teacher says it (counted as revealed),
  or None when there is none left to reveal."""
  index = c.next_hidden_shard() if c.problem.underspecified else None
  if index is None:
    return None
  premature = c.turns[-1].flags.get("premature", False)
  c.show_shard(index)
  return prompts.reveal_shard(c.problem.shards[index], premature)


def _count(stats: dict[str, int], key: str) -> None:
  stats[key] = stats.get(key, 0) + 1


def is_question(c: Conversation) -> bool:
  """Whether the latest student turn of `c` is a question (the student's own or Q-priming's)."""
  return bool(c.turns[-1].flags.get("question"))


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


class HintTeacher:
  """Hints from the privileged information, no LLM (see `hints` for what a hint may say).

    underspecified, a shard still hidden   the shard a question asks about, else the next one
    a question                             answered from the reference solution / tests
                                           (`hints.answer_question`), never the final answer
    math attempt / unanchored turn         `hints.math_hint`: too high / too low and roughly by
                                           how much, the first step not reached yet
    code attempt                           `hints.code_hint`: the first failing test and what the
                                           program returned or raised

  Each reply draws its wording from `random.Random` keyed by (the teacher stream of the run's
  seed and turn, the conversation's global row): deterministic, and a slice of a batch replies
  as the whole batch does. Steps already named in the conversation count as reached, so the
  hints move on through the solution. Every text is checked with `Task.leaked`; one that would
  leak (none should) is replaced by a safe line and counted (`leak_fallbacks`).
  """
  kind = "hint"

  def __init__(self, setup: TeacherSetup):
    self.task_lookup, self.seed, self.first_row, self.stats = (
        setup.task_lookup, setup.seed, setup.first_row, setup.stats)

  def reply(self, convs, verdicts, turn):
    stream = rng.stream(self.seed, "teacher", turn=turn)
    return {i: self._reply(c, verdicts[i], random.Random(f"hint:{stream}:{self.first_row + i}"))
            for i, c in convs.items()}

  def release(self, done):
    del done

  def _reply(self, c: Conversation, verdict: Verdict, draw: random.Random) -> Reply:
    p, last = c.problem, c.turns[-1]
    _count(self.stats, "teacher_turns")
    seen = "\n".join(t.text for t in c.turns[1:] if t.role in ("student", "teacher"))
    mine = "\n".join(t.text for t in c.turns[1:] if t.role == "student")
    shard = None
    if p.underspecified and c.next_hidden_shard() is not None:
      text, shard = hints.shard_reply(p, last.text if is_question(c) else "", c.shown_shards)
      text = prompts.reveal_shard(text, last.flags.get("premature", False))
    elif is_question(c):
      text = hints.answer_question(p, last.text, seen, draw, student_text=mine)
    elif p.domain == "code":
      text = hints.code_hint(p, verdict, draw)
    else:
      text = hints.math_hint(p, seen, verdict, draw, student_text=mine)
    if self.task_lookup(p.task).leaked(p, text):
      _count(self.stats, "leak_fallbacks")
      text = SAFE_LINES[p.domain]
    if shard is not None:
      c.show_shard(shard)
    return Reply(text, shard=shard is not None)


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
                         temperature=cfg.teacher_temperature, top_k=cfg.teacher_top_k,
                         line_stop=self._line_stop())
    party.drop_tails(self._cut(turns))
    if cfg.leak_policy == "resample":
      self._resample_leaks(convs, turns, turn)
    replies = {}
    for i, s in turns.items():
      raw = cf.decode_turn(self.tok, s.tokens)
      replies[i] = self._public(convs[i], raw)
      if replies[i].text == raw:
        convs[i].teacher.extend(s.tokens, [cf.Role.MODEL] * len(s.tokens))
        self.closed[i] = s.stopped
      else:
        # The teacher's context holds what the student saw (redacted, with the shard it revealed),
        # not its raw draw: the cache holds the draw, so it is rebuilt next turn.
        ids = list(self.tok.encode(replies[i].text)) + [cf.END_OF_TURN_ID]
        convs[i].teacher.extend(ids, [cf.Role.MODEL] * len(ids))
        self.closed[i] = True
        party.stale = True
    return replies

  def release(self, done):
    self.party.release(done)

  def _student_segment(self, i, c, verdict):
    """What the teacher reads of the student's latest turn: with the briefing at the first turn."""
    student_text = c.turns[-1].text + prompts.verifier_note(verdict, question=is_question(c))
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
        temperature=max(self.cfg.teacher_temperature, 0.7), top_k=self.cfg.teacher_top_k,
        seed=rng.stream(self.seed, "teacher_retry", turn=turn), line_stop=self._line_stop(),
        row_ids=self.party.row_ids(leaked))
    retry = {i: Sampled(out.tokens[k], out.logprobs[k], bool(out.stopped[k]))
             for k, i in enumerate(leaked)}
    self._cut(retry)
    turns.update(retry)
    self.party.stale = True  # The cache holds the leaked draw: rebuild it next turn.

  def _public(self, c: Conversation, text: str) -> Reply:
    """The reply the student sees: the leak policy applied (redact / resample: nothing the task
    flags gets through), the next shard appended."""
    self.stats["teacher_turns"] += 1
    leak = self._leaked(c, text)
    copy = quality.is_demo_copy(text, self._demo_lines(c))
    if leak:
      self.stats["teacher_leaks"] += 1
      if self.cfg.leak_policy in ("redact", "resample"):
        text = self.task_lookup(c.problem.task).redact(c.problem, text)
        if not text.strip() or self._leaked(c, text):
          _count(self.stats, "leak_fallbacks")
          text = SAFE_LINES[c.problem.domain]
    shard = reveal_shard(c)
    if shard is not None:
      text = f"{text}\n\n{shard}"
    return Reply(text, leak=leak, shard=shard is not None, demo_copy=copy)

  def _demo_lines(self, c: Conversation) -> tuple[str, ...]:
    """The lines of the demonstrations in this teacher's prompt (not those of its own briefing)."""
    return prompts.demo_lines(prompts.teacher_demos(c.problem, self.cfg.fewshot),
                              prompt=prompts.teacher_briefing(c.problem))


TEACHERS: dict[str, type] = {"scripted": ScriptedTeacher, "hint": HintTeacher, "llm": LLMTeacher}
TEACHER_KINDS = tuple(TEACHERS)


def make_teacher(setup: TeacherSetup) -> Teacher:
  """The teacher of kind `setup.cfg.teacher` for one run."""
  kind = setup.cfg.teacher
  if kind not in TEACHERS:
    raise ValueError(f"dialogue.teacher must be one of {tuple(TEACHERS)}, got {kind!r}.")
  return TEACHERS[kind](setup)
