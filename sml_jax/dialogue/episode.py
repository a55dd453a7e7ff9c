"""The batched episode loop: student turn, verify, teacher turn, ... until correct or `max_turns`.

Many conversations advance together, one student turn at a time:

    student turn  sample turn t for every conversation still going, cut at its natural end
    verify        the task's verifiers, batched per task
    score         flags (attempt / question / premature, and for dialogue-quality metrics
                  format_failure / well_formed / demo_copy), solved -> reward gamma ** (t - 1);
                  Q-priming: some failed attempts become a checked question (`questions`), which
                  the teacher answers as a question (its verdict replaces the attempt's)
    teacher turn  a reply per conversation that goes on (`teachers`: scripted, hint, llm)
    append        the reply joins the student's context (and KV cache: no re-prefill)

The KV-cache rows of both parties are kept in `party.Party`; randomness comes from named streams
(`sml_jax.rng`) keyed by the run's seed, the turn and each conversation's global row.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np

from sml_jax import rng
from sml_jax.dialogue import chat_format as cf
from sml_jax.dialogue import quality
from sml_jax.dialogue import prompts
from sml_jax.dialogue import turn_end
from sml_jax.dialogue.conversation import Conversation, Turn, opening_segment, reply_segment, turn_reward
from sml_jax.dialogue.party import Party, Sampled, reply_template_tokens
from sml_jax.dialogue.questions import WRITERS as QPRIME_WRITERS
from sml_jax.dialogue.questions import write_questions
from sml_jax.dialogue.teachers import LEAK_POLICIES, TEACHER_KINDS, TeacherSetup, make_teacher
from sml_jax.tasks.base import Problem, Task, Verdict
from sml_jax.tasks.turns import classify_turn as default_classify_turn

__all__ = ["DialogueConfig", "EpisodeRunner", "LEAK_POLICIES", "QPRIME_WRITERS", "TEACHER_KINDS"]

# The verdict a Q-priming question gets in place of the attempt it replaced: no answer to judge.
QUESTION_VERDICT = Verdict(attempted=False, correct=False)
# The verdict of a turn that ran out of budget inside its answer's number (`turn_end.
# answer_may_continue`): "Final answer: 210" may be the first digits of 2100, so nothing is read.
UNFINISHED_VERDICT = Verdict(attempted=False, correct=False, format_failure=True,
                             feedback=turn_end.UNFINISHED_NOTE)


@dataclasses.dataclass(frozen=True)
class DialogueConfig:
  max_turns: int = 4               # student turns per conversation
  gamma: float = 0.7               # turn discount of the reward
  teacher: str = "scripted"        # a kind of `teachers.TEACHERS`: "scripted" | "hint" | "llm"
  student_max_tokens: int = 256
  teacher_max_tokens: int = 96
  temperature: float = 1.0         # student sampling temperature (0 = greedy)
  top_p: float | None = None
  top_k: int | None = None
  teacher_temperature: float = 0.0
  teacher_top_k: int | None = None  # the LLM teacher samples from its top k tokens (None: all)
  leak_policy: str = "redact"      # what to do with a teacher turn that states the answer
  qprime_q: float = 0.0            # Q-priming: replace a failed attempt at turn t w.p. q ** t
  qprime_max_tokens: int = 64
  qprime_writer: str = "model"     # who writes Q-priming questions: "model" | "template"
  fewshot: bool = True             # in-context demonstrations of the dialogue format (Role.DEMO)
  cut_turns: bool = True           # end turns where their text ends (see turn_end.py)
  # Student turns end at their first line break (one-line answer formats, e.g. arithmetic): a
  # base model that has not answered by then drifts into unrelated, often mixed-script, lines.
  student_line_stop: bool = False

  def __post_init__(self):
    if self.max_turns < 1:
      raise ValueError(f"dialogue.max_turns must be >= 1, got {self.max_turns}.")
    if not 0.0 < self.gamma <= 1.0:
      raise ValueError(f"dialogue.gamma must be in (0, 1], got {self.gamma}.")
    if self.teacher not in TEACHER_KINDS:
      raise ValueError(f"dialogue.teacher must be one of {TEACHER_KINDS}, got {self.teacher!r}.")
    if self.leak_policy not in LEAK_POLICIES:
      raise ValueError(f"dialogue.leak_policy must be one of {LEAK_POLICIES}, got {self.leak_policy!r}.")
    if self.qprime_writer not in QPRIME_WRITERS:
      raise ValueError(f"dialogue.qprime_writer must be one of {QPRIME_WRITERS}, "
                       f"got {self.qprime_writer!r}.")
    if not 0.0 <= self.qprime_q <= 1.0:
      raise ValueError(f"dialogue.qprime_q must be in [0, 1], got {self.qprime_q}.")


class EpisodeRunner:
  """Runs batched SML dialogues; one sampler may serve student, LLM teacher and questions.

  `run` is reentrant: each call keeps its state in an `_Episode`. `stats` (teacher turns, leaks,
  resampled replies, Q-primed turns) and `seconds` (wall time of the student / verify / qprime /
  teacher parts; a prefill lands in the next sampling call of its party) add up over runs.
  """

  def __init__(self, sampler, tokenizer, task_lookup: Callable[[str], Task], cfg: DialogueConfig,
               classify_turn: Callable[[str, bool], str] | None = None, teacher_sampler=None):
    """`teacher_sampler` serves the LLM teacher and Q-priming questions when the teacher is a
    different model; by default the student's sampler (one compiled program for both)."""
    self.sampler, self.tok, self.task_lookup, self.cfg = sampler, tokenizer, task_lookup, cfg
    self.teacher_sampler = teacher_sampler or sampler
    self.classify_turn = classify_turn or default_classify_turn
    # Template tokens a Q-priming rewrite may add beyond its question's budget.
    self.template_tokens = reply_template_tokens(tokenizer)
    # leak_fallbacks: teacher replies replaced by a safe line (they would still have leaked);
    # qprime_rewritten: model-written questions rejected and rewritten by the template writer.
    self.stats = {"teacher_leaks": 0, "teacher_turns": 0, "resampled": 0, "qprimed": 0,
                  "leak_fallbacks": 0, "qprime_rewritten": 0}
    self.seconds = {"student": 0.0, "verify": 0.0, "qprime": 0.0, "teacher": 0.0}

  def run(self, problems: Sequence[Problem], student_params, teacher_params=None, *, seed: int = 0,
          repeats: int = 1, on_turn: Callable[[], None] | None = None,
          first_row: int = 0) -> list[Conversation]:
    """Rolls out `repeats` conversations per problem (GRPO groups are consecutive rows).
    `on_turn` is called after every turn (e.g. to advance a progress bar).

    Randomness is per conversation: conversation j draws from streams keyed by (seed, turn,
    `first_row + j`), so a host that runs rows [first_row, first_row + n) of a global batch
    produces exactly those rows of a single-process run. The teacher and the question writer
    use `teacher_params`, by default the student's own weights (the caller passes a frozen copy
    when the student is being trained)."""
    episode = _Episode(self, problems, student_params,
                       student_params if teacher_params is None else teacher_params,
                       seed=seed, repeats=repeats, first_row=first_row)
    try:
      return episode.run(on_turn)
    finally:
      for k, v in episode.stats.items():
        self.stats[k] = self.stats.get(k, 0) + v
      for k, v in episode.seconds.items():
        self.seconds[k] = self.seconds.get(k, 0.0) + v


class _Laps:
  """Adds the wall time since the previous lap to `seconds[part]`."""

  def __init__(self, seconds: dict[str, float]):
    self.seconds, self.since = seconds, time.perf_counter()

  def start(self) -> None:
    self.since = time.perf_counter()

  def lap(self, part: str) -> None:
    now = time.perf_counter()
    self.seconds[part] += now - self.since
    self.since = now


class _Episode:
  """One `run`: its conversations, the student's cache rows, the teacher, seeds and counters."""

  def __init__(self, runner: EpisodeRunner, problems, student_params, teacher_params, *,
               seed: int, repeats: int, first_row: int):
    self.r, self.cfg, self.tok = runner, runner.cfg, runner.tok
    self.seed, self.teacher_params = seed, teacher_params
    self.stats = dict.fromkeys(runner.stats, 0)
    self.seconds = dict.fromkeys(runner.seconds, 0.0)
    self.convs = [Conversation(p, self.cfg.teacher, self.cfg.max_turns, repeat=k)
                  for p in problems for k in range(repeats)]
    self.student = Party(runner.sampler, student_params, [c.student for c in self.convs], first_row)
    self.teacher = make_teacher(TeacherSetup(
        self.cfg, self.tok, runner.task_lookup, runner.teacher_sampler, teacher_params,
        self.convs, seed, first_row, self.stats))

  def run(self, on_turn) -> list[Conversation]:
    cfg, convs = self.cfg, self.convs
    everyone = range(len(convs))
    self.demo_lines = []  # per conversation: the demonstration lines in the student's prompt
    for c in convs:
      text = prompts.student_opening(c.problem)
      demos = prompts.student_demos(c.problem, cfg.fewshot, c.teacher_kind)
      c.student.extend(*opening_segment(self.tok, text, demos))
      c.turns.append(Turn("user", text, {}))
      self.demo_lines.append(prompts.demo_lines(demos, prompt=text))
    self.student.rebuild(everyone)
    laps = _Laps(self.seconds)
    for t in range(1, cfg.max_turns + 1):
      if t > 1:
        self._end_where_no_room(t)
      rows = [i for i in everyone if not convs[i].done]
      if not rows:
        break
      self._release_finished()
      laps.start()
      self._student_turn(rows, t)
      laps.lap("student")
      verdicts = self._verify(rows)
      laps.lap("verify")
      self._score(rows, verdicts, t)
      laps.lap("qprime")
      go_on = [i for i in rows if not convs[i].done]
      self._release_finished()
      replies = self.teacher.reply({i: convs[i] for i in go_on}, verdicts, t) if go_on else {}
      for i, reply in replies.items():
        convs[i].turns.append(Turn("teacher", reply.text, reply.flags))
      laps.lap("teacher")
      self._release_finished()
      self._append_replies({i: reply.text for i, reply in replies.items()})
      self._release_finished()
      if go_on:
        self.student.sync(everyone)  # Catch up with the replies (rebuild after Q-priming).
      if on_turn is not None:
        on_turn()
    for c in convs:
      c.reward = turn_reward(c.solved_turn, cfg.gamma)
    return convs

  def _end_where_no_room(self, t: int) -> None:
    """Ends unsolved the conversations whose student turn `t` (or its Q-priming rewrite; none at
    the last turn) would overflow the student's cache. Replies are checked when they exist."""
    cfg = self.cfg
    rewrite = cfg.qprime_q and t < cfg.max_turns
    turn = max(cfg.student_max_tokens,
               cfg.qprime_max_tokens + self.r.template_tokens if rewrite else 0)
    for i, c in enumerate(self.convs):
      if not c.done and not self.student.has_room(i, turn):
        c.out_of_context = True

  def _release_finished(self) -> None:
    done = [i for i, c in enumerate(self.convs) if c.done]
    self.student.release(done)
    self.teacher.release(done)

  # --- student side ----------------------------------------------------------------------------

  def _student_turn(self, rows: list[int], t: int) -> None:
    cfg = self.cfg
    sampled = self.student.sample(
        rows, seed=rng.stream(self.seed, "student", turn=t), max_new_tokens=cfg.student_max_tokens,
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
        line_stop=turn_end.line_stop(self.tok) if cfg.student_line_stop else None)
    self.student.drop_tails({i: self._add_student_turn(self.convs[i], s)
                             for i, s in sampled.items()})

  def _add_student_turn(self, c: Conversation, s: Sampled) -> int:
    """Adds a sampled student turn to `c`, cut at its natural end (`turn_end`) and closed with
    <end_of_turn>: trained (Role.MODEL) when the model emitted it or the text ended the turn,
    TEMPLATE when the turn only ran out of budget (also inside its answer's number: flagged
    `unfinished`, `turn_end.answer_may_continue`). Returns the number of sampled tokens cut."""
    toks, lps = np.asarray(s.tokens), np.asarray(s.logprobs)
    close_role = None if s.stopped else cf.Role.TEMPLATE
    body = cf.strip_stop(toks)
    raw = self.tok.decode(body)
    if self.cfg.cut_turns:
      cut = turn_end.student_cut(raw, c.problem.domain)
      if cut is not None:
        k = turn_end.tokens_within(self.tok, body, cut)
        if k < len(body) or not s.stopped:
          toks, lps, close_role = toks[:k], lps[:k], cf.Role.MODEL
    text = cf.decode_turn(self.tok, toks)
    # Judged on the turn as sampled: the cut drops the "." of "Final answer: 2." (from 2.5).
    unfinished = not s.stopped and turn_end.answer_may_continue(raw, c.problem.domain)
    if unfinished:
      close_role = cf.Role.TEMPLATE   # The model did not end its turn there: nothing to teach.
    c.student.extend(toks, [cf.Role.MODEL] * len(toks), lps, sampled=True)
    if close_role is not None or (len(toks) and toks[-1] != cf.END_OF_TURN_ID):
      # Not sampled: SFT may train it (where the turn ends), the policy gradient must not.
      c.student.extend([cf.END_OF_TURN_ID], [close_role or cf.Role.TEMPLATE], [0.0], sampled=False)
    # `sampled_end`: the turn's last characters as sampled, before the cut (why it is unfinished).
    c.turns.append(Turn("student", text,
                        {"unfinished": True, "sampled_end": raw[-24:]} if unfinished else {}))
    return len(s.tokens) - len(toks)

  def _verify(self, rows: list[int]) -> dict[int, Verdict]:
    """The verifiers' verdicts on the latest student turn of `rows`, batched per task."""
    by_task: dict[str, list[int]] = {}
    for i in rows:
      by_task.setdefault(self.convs[i].problem.task, []).append(i)
    verdicts = {}
    for name, idx in by_task.items():
      got = self.r.task_lookup(name).verify_batch([self.convs[i].problem for i in idx],
                                                  [self.convs[i].turns[-1].text for i in idx])
      verdicts.update(zip(idx, got))
    return {i: UNFINISHED_VERDICT if self.convs[i].turns[-1].flags.get("unfinished")
            else verdicts[i] for i in rows}

  def _quality_flags(self, i: int, text: str, verdict: Verdict,
                     extra_demo_lines: tuple[str, ...] = ()) -> dict[str, bool]:
    """The dialogue-quality flags of a student turn of conversation i (metrics aggregate them)."""
    problem = self.convs[i].problem
    return {"format_failure": bool(verdict.format_failure),
            "well_formed": quality.well_formed(text, problem.domain, problem.statement),
            "demo_copy": quality.is_demo_copy(text, self.demo_lines[i] + extra_demo_lines,
                                              statement=problem.statement)}

  def _score(self, rows: list[int], verdicts: dict[int, Verdict], t: int) -> None:
    """Flags each student turn and marks solved conversations; Q-priming replaces a failed
    attempt at turn t < max_turns with probability qprime_q ** t (a coin per row and turn), and
    its verdict in `verdicts` by `QUESTION_VERDICT`."""
    cfg, qprime = self.cfg, []
    for i in rows:
      c, v = self.convs[i], verdicts[i]
      turn = c.turns[-1]
      kind = self.r.classify_turn(turn.text, v.attempted)
      if kind == "question" and quality.is_echo(turn.text, c.problem.statement):
        kind = "other"   # a restated problem asks the teacher nothing (question_rate, claim e)
      unfinished = {k: turn.flags[k] for k in ("unfinished", "sampled_end") if k in turn.flags}
      if unfinished:
        kind = "other"   # an answer cut off, even after a "?": the teachers say it was cut off
      premature = bool(v.attempted and c.problem.underspecified
                       and c.shards_revealed < len(c.problem.shards))
      turn.flags = {"attempt": kind == "attempt", "question": kind == "question",
                    "correct": bool(v.correct), "premature": premature, "qprime": False,
                    **self._quality_flags(i, turn.text, v)}
      if unfinished:   # (the key only where true: transcripts of other turns are unchanged)
        turn.flags.update(well_formed=False, **unfinished)
      if v.correct:
        c.solved_turn = t
      elif (v.attempted and cfg.qprime_q > 0 and t < cfg.max_turns
            and rng.coin(self.seed, int(self.student.row_ids([i])[0]), t) < cfg.qprime_q ** t):
        qprime.append(i)
    if qprime:
      self._ask_instead(qprime, t, verdicts)

  def _ask_instead(self, rows: list[int], t: int, verdicts: dict[int, Verdict]) -> None:
    """Q-priming: the failed attempts of `rows` become checked questions about the problem
    (`questions.write_questions`), in the public turns and in the student's context (trained by
    SFT, never by the policy gradient: the student did not sample them). The teacher gets the
    question verdict, so it answers a question, not the attempt that was replaced."""
    cfg = self.cfg
    convs = [self.convs[i] for i in rows]
    questions = write_questions(
        convs, writer=cfg.qprime_writer, task_lookup=self.r.task_lookup, tokenizer=self.tok,
        max_tokens=cfg.qprime_max_tokens, fewshot=cfg.fewshot,
        seed=rng.stream(self.seed, "qprime", turn=t), row_ids=self.student.row_ids(rows),
        sampler=self.r.teacher_sampler, params=self.teacher_params,
        temperature=cfg.teacher_temperature)
    for i, q in zip(rows, questions):
      ids = list(self.tok.encode(q.text)) + [cf.END_OF_TURN_ID]
      self.student.rewrite_turn(i, ids, [cf.Role.MODEL] * len(ids))
      verdicts[i] = QUESTION_VERDICT
      writer_demos = prompts.demo_lines(prompts.qprime_demos(self.convs[i].problem, cfg.fewshot))
      self.convs[i].turns[-1] = Turn("student", q.text, {
          "attempt": False, "question": True, "correct": False, "premature": False,
          "qprime": True, "qprime_template": q.writer == "template",
          **self._quality_flags(i, q.text, QUESTION_VERDICT, writer_demos)})
      self.stats["qprimed"] += 1
      self.stats["qprime_rewritten"] += q.rejected is not None

  def _append_replies(self, replies: dict[int, str]) -> None:
    """Adds each teacher reply to its student context, unless it would not fit the cache with
    room for the next student turn (e.g. long test output): that conversation ends there."""
    segments = {i: reply_segment(self.tok, text) for i, text in replies.items()}
    # Checked as an append behind the shared pointer even when a Q-priming rewrite will rebuild
    # the cache: the conservative check, as before the split into parties (transcripts pinned).
    for i in self.student.overflowing({i: len(ids) for i, (ids, _) in segments.items()},
                                      self.cfg.student_max_tokens, fresh=False):
      self.convs[i].out_of_context = True
      del segments[i]
    for i, (ids, roles) in segments.items():
      self.convs[i].student.extend(ids, roles)
