"""The batched episode loop: student turn, verify, teacher turn, ... until correct or `max_turns`.

Many conversations advance together through one sampler (see `sml_jax.sampling.Sampler`):

    student: sample turn t for every active row -> verify (task verifiers, in parallel)
             -> flags (attempt / question / premature), reward gamma ** (t - 1) when correct
             -> [Q-priming: replace some failed attempts by a model-written question]
    teacher: scripted feedback from the verdict, or an LLM teacher that sees the privileged
             briefing + the verifier's note, with a leak guard (count / redact / resample)
             [+ the next shard, for underspecified problems]
    student: the teacher's reply is appended to each row's KV cache (no re-prefill)

Each party's token context is kept in numpy (`Conversation.student/.teacher`) as the source of
truth; the KV caches are rebuilt from it only when a turn is rewritten (Q-priming, resampling).
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable, Sequence

import numpy as np

from sml_jax.dialogue import chat_format as cf
from sml_jax.dialogue import prompts
from sml_jax.dialogue import turn_end
from sml_jax.dialogue.conversation import (Conversation, Turn, opening_segment, reply_segment,
                                           turn_reward)
from sml_jax.tasks.base import Problem, Task, Verdict

LEAK_POLICIES = ("count", "redact", "resample")
_TEMPLATE_TOKENS = 16  # <end_of_turn>\n<start_of_turn>user\n ... around a reply
TEACHER_KINDS = ("scripted", "llm")


@dataclasses.dataclass(frozen=True)
class DialogueConfig:
  max_turns: int = 4               # student turns per conversation
  gamma: float = 0.7               # turn discount of the reward
  teacher: str = "scripted"        # "scripted" (verifier only) | "llm"
  student_max_tokens: int = 256
  teacher_max_tokens: int = 96
  temperature: float = 1.0         # student sampling temperature (0 = greedy)
  top_p: float | None = None
  top_k: int | None = None
  teacher_temperature: float = 0.0
  leak_policy: str = "redact"      # what to do with a teacher turn that states the answer
  qprime_q: float = 0.0            # Q-priming: replace a failed attempt at turn t w.p. q ** t
  qprime_max_tokens: int = 64
  fewshot: bool = True             # in-context demonstrations of the dialogue format (Role.DEMO)
  cut_turns: bool = True           # end turns where their text ends (see turn_end.py)

  def __post_init__(self):
    if self.max_turns < 1:
      raise ValueError(f"dialogue.max_turns must be >= 1, got {self.max_turns}.")
    if not 0.0 < self.gamma <= 1.0:
      raise ValueError(f"dialogue.gamma must be in (0, 1], got {self.gamma}.")
    if self.teacher not in TEACHER_KINDS:
      raise ValueError(f"dialogue.teacher must be one of {TEACHER_KINDS}, got {self.teacher!r}.")
    if self.leak_policy not in LEAK_POLICIES:
      raise ValueError(f"dialogue.leak_policy must be one of {LEAK_POLICIES}, got {self.leak_policy!r}.")
    if not 0.0 <= self.qprime_q <= 1.0:
      raise ValueError(f"dialogue.qprime_q must be in [0, 1], got {self.qprime_q}.")


def rows_that_do_not_fit(lengths: Sequence[int], growth: dict[int, int], capacity: int,
                         then: int = 0) -> list[int]:
  """Rows to leave out so that appending `growth[row]` tokens fits a cache of `capacity` slots.

  All rows of a cache write at one shared slot pointer, so an append needs the longest row plus
  the longest segment, and each grown row must still leave `then` slots (the next sampled turn).
  Drops the rows closest to overflowing on their own first.
  """
  lengths = [int(n) for n in lengths]
  grow = dict(growth)
  drop = [i for i in grow if lengths[i] + grow[i] + then > capacity]
  for i in drop:
    del grow[i]
  while grow:
    resident = max(n for i, n in enumerate(lengths) if i not in drop)
    if resident + max(grow.values()) <= capacity:
      break
    worst = max(grow, key=lambda i: (lengths[i] + grow[i], i))
    del grow[worst]
    drop.append(worst)
  return drop


def _coin(seed: int, row: int, turn: int) -> float:
  """A uniform draw in [0, 1) that depends only on (seed, row, turn)."""
  return float(np.random.default_rng((seed, row, turn)).random())


def _strip_stop(ids: np.ndarray) -> list[int]:
  ids = [int(i) for i in ids]
  return ids[:-1] if ids and ids[-1] in (cf.END_OF_TURN_ID, cf.EOS_ID) else ids


def _decode(tokenizer, ids) -> str:
  return tokenizer.decode(_strip_stop(ids)).strip()


def redact(text: str, problem: Problem) -> str:
  """Removes the final answer (math) or code blocks (code) from a leaking teacher turn."""
  if problem.domain == "code":
    return re.sub(r"```.*?(```|$)", "[code removed]", text, flags=re.S)
  if problem.answer:
    text = re.sub(rf"(?<![\d.]){re.escape(problem.answer)}(?![\d])", "[redacted]", text)
  return text


class EpisodeRunner:
  """Runs batched SML dialogues with one sampler serving student and (LLM) teacher."""

  def __init__(self, sampler, tokenizer, task_lookup: Callable[[str], Task], cfg: DialogueConfig,
               classify_turn: Callable[[str, bool], str] | None = None, teacher_sampler=None):
    """`teacher_sampler` serves the LLM teacher and Q-priming questions when the teacher is a
    different model; by default the student's sampler (one compiled program for both)."""
    self.sampler, self.tok, self.task_lookup, self.cfg = sampler, tokenizer, task_lookup, cfg
    self.teacher_sampler = teacher_sampler or sampler
    if classify_turn is None:
      from sml_jax.tasks.turns import classify_turn  # pylint: disable=g-import-not-at-top
    self.classify_turn = classify_turn
    self.stats = {"teacher_leaks": 0, "teacher_turns": 0, "resampled": 0, "qprimed": 0}
    # Wall time per part of the loop (prefills land in the next sampling call of that party).
    self.seconds = {"student": 0.0, "verify": 0.0, "qprime": 0.0, "teacher": 0.0}
    self._teacher_index: dict[int, int] = {}
    self._teacher_rebuild = False
    self._first_row = 0

  # --- public API ------------------------------------------------------------------------------

  def run(self, problems: Sequence[Problem], student_params, teacher_params=None, *, seed: int = 0,
          repeats: int = 1, on_turn: Callable[[], None] | None = None,
          first_row: int = 0) -> list[Conversation]:
    """Rolls out `repeats` conversations per problem (GRPO groups are consecutive rows).
    `on_turn` is called after every turn (e.g. to advance a progress bar).

    Randomness is per conversation: conversation j draws from streams keyed by (seed, turn,
    `first_row + j`), so a host that runs rows [first_row, first_row + n) of a global batch
    produces exactly those rows of a single-process run."""
    cfg = self.cfg
    if teacher_params is None:
      # The LLM teacher / question writer defaults to the student's own weights (the caller
      # passes a frozen copy when the student is being trained).
      teacher_params = student_params
    self._first_row = int(first_row)
    convs = [Conversation(p, cfg.teacher, cfg.max_turns, repeat=r) for p in problems
             for r in range(repeats)]
    for c in convs:
      text = prompts.student_opening(c.problem)
      c.student.extend(*opening_segment(self.tok, text, prompts.student_demos(c.problem, cfg.fewshot)))
      c.turns.append(Turn("user", text, {}))
    s_state = self.sampler.start(student_params, [c.student.ids for c in convs])
    t_state = None
    self._teacher_rebuild = False
    released = np.zeros(len(convs), bool)   # Finished rows whose cache slots were given back.
    for t in range(1, cfg.max_turns + 1):
      for c in convs:
        if t > 1 and not c.done and not self._room_for_turn(c, t):
          c.out_of_context = True  # Ends unsolved instead of overflowing the KV cache.
      active = np.array([not c.done for c in convs])
      if not active.any():
        break
      s_state, t_state = self._release_finished(convs, released, s_state, t_state)
      clock = time.perf_counter()
      s_state, out = self.sampler.sample(
          student_params, s_state, max_new_tokens=cfg.student_max_tokens,
          temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
          seed=seed * 1000 + 2 * t, active=active, row_ids=self._row_ids(range(len(convs))))
      rows = np.flatnonzero(active)
      keep = s_state.lengths.copy()
      for i in rows:
        toks, lps = self._end_student_turn(convs[i], out.tokens[i], out.logprobs[i], out.stopped[i])
        keep[i] -= len(out.tokens[i]) - len(toks)
      if np.any(keep != s_state.lengths):
        s_state = self.sampler.truncate(s_state, keep)
      clock = self._lap("student", clock)
      verdicts = self._verify([convs[i] for i in rows])
      clock = self._lap("verify", clock)
      rewrite = self._score_student_turns([convs[i] for i in rows], rows, verdicts, t, seed,
                                          teacher_params)
      clock = self._lap("qprime", clock)
      # Teacher turn for every conversation that goes on.
      go_on = [i for i in rows if not convs[i].done]
      s_state, t_state = self._release_finished(convs, released, s_state, t_state)
      replies = self._teacher_replies([convs[i] for i in go_on], dict(zip(rows, verdicts)), go_on,
                                      teacher_params, t_state, seed * 1000 + 2 * t + 1)
      t_state = replies.pop("_state")
      self._lap("teacher", clock)
      s_state, t_state = self._release_finished(convs, released, s_state, t_state)
      segments = {i: reply_segment(self.tok, replies[i]) for i in go_on if i in replies}
      pending = {i: len(convs[i].student.ids) - s_state.lengths[i] for i in segments}
      for i in rows_that_do_not_fit(
          s_state.lengths, {i: pending[i] + len(ids) for i, (ids, _) in segments.items()},
          self.sampler.cache_length, then=cfg.student_max_tokens):
        convs[i].out_of_context = True  # A long reply (e.g. test output) would not fit.
        del segments[i]
      for i, (ids, roles) in segments.items():
        convs[i].student.extend(ids, roles)
      s_state, t_state = self._release_finished(convs, released, s_state, t_state)
      if rewrite:
        s_state = self.sampler.start(
            student_params, [c.student.ids[:1] if r else c.student.ids
                             for c, r in zip(convs, released)])
      elif go_on:
        # The sampler catches up with the token contexts (the closing <end_of_turn> + reply).
        s_state = self.sampler.append(
            student_params, s_state, [[] if r else c.student.ids[n:]
                                      for c, n, r in zip(convs, s_state.lengths, released)])
      if on_turn is not None:
        on_turn()
    for c in convs:
      c.reward = turn_reward(c.solved_turn, cfg.gamma)
    return convs

  def _row_ids(self, rows) -> np.ndarray:
    """Local conversation indices -> global row ids (the keys of their random streams)."""
    return self._first_row + np.asarray(list(rows), np.int64)

  def _lap(self, part: str, since: float) -> float:
    now = time.perf_counter()
    self.seconds[part] += now - since
    return now

  def _release_finished(self, convs, released, s_state, t_state):
    """Cuts finished conversations' rows of both caches to one token. All rows write at one
    shared slot pointer, so a long finished row would otherwise cap what the others can add."""
    done = [i for i, c in enumerate(convs) if c.done and not released[i]]
    if not done:
      return s_state, t_state
    released[done] = True
    keep = s_state.lengths.copy()
    keep[done] = 1
    s_state = self.sampler.truncate(s_state, keep)
    rows = [self._teacher_index[i] for i in done if i in self._teacher_index]
    if t_state is not None and rows:
      keep = t_state.lengths.copy()
      keep[rows] = 1
      t_state = self.teacher_sampler.truncate(t_state, keep)
    return s_state, t_state

  def _room_for_turn(self, c: Conversation, t: int) -> bool:
    """Whether student turn `t` (or its Q-priming rewrite; none at the last turn) still fits the
    student's KV cache. The replies that follow are checked when they exist
    (`rows_that_do_not_fit`)."""
    cfg = self.cfg
    rewrite = cfg.qprime_q and t < cfg.max_turns
    turn = max(cfg.student_max_tokens, cfg.qprime_max_tokens + _TEMPLATE_TOKENS if rewrite else 0)
    return len(c.student.ids) + turn <= self.sampler.cache_length

  # --- student side ----------------------------------------------------------------------------

  def _end_student_turn(self, c: Conversation, toks, lps, stopped: bool):
    """Adds a sampled student turn to `c`, cut at its natural end (`turn_end`) and closed with
    <end_of_turn>: trained (Role.MODEL) when the model emitted it or the text ended the turn,
    TEMPLATE when the turn only ran out of budget. Returns the kept (tokens, logprobs)."""
    toks, lps = np.asarray(toks), np.asarray(lps)
    close_role = None if stopped else cf.Role.TEMPLATE
    body = _strip_stop(toks)
    if self.cfg.cut_turns:
      cut = turn_end.student_cut(self.tok.decode(body), c.problem.domain)
      if cut is not None:
        k = turn_end.tokens_within(self.tok, body, cut)
        if k < len(body) or not stopped:
          toks, lps, close_role = toks[:k], lps[:k], cf.Role.MODEL
    c.student_turn_start = len(c.student.ids)
    c.student.extend(toks, [cf.Role.MODEL] * len(toks), lps)
    if close_role is not None or (len(toks) and toks[-1] != cf.END_OF_TURN_ID):
      c.student.extend([cf.END_OF_TURN_ID], [close_role or cf.Role.TEMPLATE], [0.0])
    c.turns.append(Turn("student", _decode(self.tok, toks), {}))
    return toks, lps

  def _verify(self, convs: list[Conversation]) -> list[Verdict]:
    verdicts: list[Verdict | None] = [None] * len(convs)
    by_task: dict[str, list[int]] = {}
    for j, c in enumerate(convs):
      by_task.setdefault(c.problem.task, []).append(j)
    for name, idx in by_task.items():
      task = self.task_lookup(name)
      got = task.verify_batch([convs[j].problem for j in idx], [convs[j].turns[-1].text for j in idx])
      for j, v in zip(idx, got):
        verdicts[j] = v
    return verdicts  # type: ignore[return-value]

  def _score_student_turns(self, convs, rows, verdicts, t, seed, teacher_params) -> bool:
    """Sets flags / solved_turn; applies Q-priming. Returns True if a student turn was rewritten.
    `rows`: the conversations' local indices (Q-priming's coin is drawn per row)."""
    qprime_rows = []
    for j, (c, v) in enumerate(zip(convs, verdicts)):
      turn = c.turns[-1]
      kind = self.classify_turn(turn.text, v.attempted)
      premature = bool(v.attempted and c.problem.underspecified
                       and c.shards_revealed < len(c.problem.shards))
      turn.flags = {"attempt": kind == "attempt", "question": kind == "question",
                    "correct": bool(v.correct), "premature": premature, "qprime": False}
      if v.correct:
        c.solved_turn = t
      elif (v.attempted and self.cfg.qprime_q > 0 and t < self.cfg.max_turns
            and _coin(seed, int(self._row_ids([rows[j]])[0]), t) < self.cfg.qprime_q ** t):
        qprime_rows.append(j)
    if not qprime_rows:
      return False
    self._qprime([convs[j] for j in qprime_rows], teacher_params, seed=seed * 1000 + 999 - t,
                 row_ids=self._row_ids([rows[j] for j in qprime_rows]))
    return True

  def _qprime(self, convs, teacher_params, seed, row_ids) -> None:
    """Replaces each failed attempt by a question the model writes from the privileged info."""
    demos = prompts.qprime_demos(self.cfg.fewshot)
    qprompts = [opening_segment(self.tok, prompts.qprime_prompt(c.problem, c.turns[-1].text), demos)[0].tolist()
                for c in convs]
    out = self.teacher_sampler.generate(teacher_params, qprompts, max_new_tokens=self.cfg.qprime_max_tokens,
                                temperature=self.cfg.teacher_temperature, seed=seed,
                                row_ids=row_ids)
    for c, toks in zip(convs, out.tokens):
      text = _decode(self.tok, toks)
      cut = turn_end.student_cut(text, "math") if "?" in text else None
      question = (text[:cut] if cut else text).split("\n")[0].strip() or "Could you give me a hint?"
      # Drop the failed attempt from the student's context and put the question in its place.
      k = c.student_turn_start
      del c.student.ids[k:], c.student.roles[k:], c.student.logprobs[k:]
      q_ids = list(self.tok.encode(question)) + [cf.END_OF_TURN_ID]
      c.student.extend(q_ids, [cf.Role.MODEL] * len(q_ids))
      c.turns[-1] = Turn("student", question, {"attempt": False, "question": True, "correct": False,
                                               "premature": False, "qprime": True})
      self.stats["qprimed"] += 1

  # --- teacher side ----------------------------------------------------------------------------

  def _teacher_replies(self, convs, verdict_of, rows, teacher_params, t_state, seed) -> dict:
    """Returns {row: public teacher text} plus "_state" (the teacher's sampler state)."""
    replies: dict = {"_state": t_state}
    if not convs:
      return replies
    texts = {}
    if self.cfg.teacher == "scripted":
      for i, c in zip(rows, convs):
        texts[i] = prompts.scripted_feedback(c.problem, verdict_of[i])
    else:
      texts, replies["_state"] = self._llm_teacher(convs, verdict_of, rows, teacher_params, t_state, seed)
    for i, c in zip(rows, convs):
      if i not in texts:
        continue  # The conversation ran out of context before the teacher's turn.
      text, flags = texts[i], {"leak": False, "shard": False}
      if self.cfg.teacher == "llm":
        self.stats["teacher_turns"] += 1
        if self.task_lookup(c.problem.task).leaked(c.problem, text):
          flags["leak"] = True
          self.stats["teacher_leaks"] += 1
          if self.cfg.leak_policy in ("redact", "resample"):
            text = redact(text, c.problem)
      if c.problem.underspecified and c.shards_revealed < len(c.problem.shards):
        premature = c.turns[-1].flags.get("premature", False)
        shard = prompts.reveal_shard(c.problem.shards[c.shards_revealed], premature)
        text = f"{text}\n\n{shard}" if self.cfg.teacher == "llm" else shard
        c.shards_revealed += 1
        flags["shard"] = True
      c.turns.append(Turn("teacher", text, flags))
      replies[i] = text
    return replies

  def _teacher_line_stop(self):
    """Teacher turns are cut at their first line: stop decoding there (when cutting at all)."""
    return turn_end.line_stop(self.tok) if self.cfg.cut_turns else None

  def _cut_teacher_turns(self, out, rows, index):
    """Cuts teacher turns (in place) at their first paragraph (`turn_end.teacher_cut`). Returns
    {row: sampled length} so the caller can drop the cut tails from the KV cache."""
    sampled = {i: len(out.tokens[index[i]]) for i in rows}
    if not self.cfg.cut_turns:
      return sampled
    for i in rows:
      k = index[i]
      body = _strip_stop(out.tokens[k])
      cut = turn_end.teacher_cut(self.tok.decode(body))
      if cut is not None:
        n = turn_end.tokens_within(self.tok, body, cut)
        out.tokens[k], out.logprobs[k] = out.tokens[k][:n], out.logprobs[k][:n]
        out.stopped[k] = False  # The next reply segment closes the turn with <end_of_turn>.
    return sampled

  def _llm_teacher(self, convs, verdict_of, rows, teacher_params, t_state, seed):
    """One LLM teacher turn for `rows`; the teacher's cache covers every conversation."""
    new = {}   # row -> (ids, roles) to add to its teacher context
    for i, c in zip(rows, convs):
      student_text = c.turns[-1].text + prompts.verifier_note(verdict_of[i])
      if not c.teacher.ids:
        first = (prompts.teacher_briefing(c.problem) + "\n\nThe student said:\n" + student_text)
        new[i] = opening_segment(self.tok, first, prompts.teacher_demos(c.problem, self.cfg.fewshot))
      else:
        new[i] = reply_segment(self.tok, student_text, close_previous=not c.teacher_stopped)
    incremental = t_state is not None and not self._teacher_rebuild and all(
        c.teacher.ids for c in convs)
    room, then = self.teacher_sampler.cache_length, self.cfg.teacher_max_tokens
    if incremental:
      index = self._teacher_index
      row_of = {index[i]: i for i in rows}
      drop = [row_of[k] for k in rows_that_do_not_fit(
          t_state.lengths, {index[i]: len(new[i][0]) for i in rows}, room, then=then)]
      if drop:  # Their rows leave the cache now, as `rows_that_do_not_fit` assumes.
        keep = t_state.lengths.copy()
        keep[[index[i] for i in drop]] = 1
        t_state = self.teacher_sampler.truncate(t_state, keep)
    else:
      drop = [i for i, c in zip(rows, convs) if len(c.teacher.ids) + len(new[i][0]) + then > room]
    for i, c in zip(rows, convs):
      if i in drop:
        c.out_of_context = True  # The student's turn + the verifier's note do not fit.
      else:
        c.teacher.extend(*new[i])
    kept = [(i, c) for i, c in zip(rows, convs) if i not in drop]
    rows, convs = [i for i, _ in kept], [c for _, c in kept]
    if not rows:
      return {}, t_state
    if not incremental:
      # (Re)prefill the teacher cache from the token contexts: first turn or after a resample.
      t_state = self.teacher_sampler.start(teacher_params, [c.teacher.ids for c in convs])
      index = {i: k for k, i in enumerate(rows)}
      self._teacher_rebuild = False
    else:
      index = self._teacher_index
      full = [[] for _ in range(len(index))]
      for i in rows:
        full[index[i]] = new[i][0].tolist()
      t_state = self.teacher_sampler.append(teacher_params, t_state, full)
    self._teacher_index = index
    active = np.zeros(len(index), bool)
    active[[index[i] for i in rows]] = True
    t_state, out = self.teacher_sampler.sample(
        teacher_params, t_state, max_new_tokens=self.cfg.teacher_max_tokens,
        temperature=self.cfg.teacher_temperature, seed=seed, active=active,
        line_stop=self._teacher_line_stop(), row_ids=self._row_ids(sorted(index, key=index.get)))
    sampled = self._cut_teacher_turns(out, rows, index)
    if any(len(out.tokens[index[i]]) < n for i, n in sampled.items()):
      keep = t_state.lengths.copy()
      for i, n in sampled.items():
        keep[index[i]] -= n - len(out.tokens[index[i]])
      t_state = self.teacher_sampler.truncate(t_state, keep)
    texts = {i: _decode(self.tok, out.tokens[index[i]]) for i in rows}
    if self.cfg.leak_policy == "resample":
      leaked = [(i, c) for i, c in zip(rows, convs)
                if self.task_lookup(c.problem.task).leaked(c.problem, texts[i])]
      if leaked:
        # One fresh draw for the leaking rows (a sampled, not greedy, retry); the caller still
        # counts a leak and redacts if the retry leaks too.
        self.stats["resampled"] += len(leaked)
        retry = self.teacher_sampler.generate(
            teacher_params, [c.teacher.ids for _, c in leaked],
            max_new_tokens=self.cfg.teacher_max_tokens, temperature=max(self.cfg.teacher_temperature, 0.7),
            seed=seed + 7919, line_stop=self._teacher_line_stop(),
            row_ids=self._row_ids([i for i, _ in leaked]))
        self._cut_teacher_turns(retry, [i for i, _ in leaked], {i: k for k, (i, _) in enumerate(leaked)})
        for k, (i, _) in enumerate(leaked):
          out.tokens[index[i]], out.stopped[index[i]] = retry.tokens[k], retry.stopped[k]
          texts[i] = _decode(self.tok, retry.tokens[k])
        self._teacher_rebuild = True  # The cache holds the leaked draw: rebuild it next turn.
    for i, c in zip(rows, convs):
      toks = out.tokens[index[i]]
      c.teacher.extend(toks, [cf.Role.MODEL] * len(toks))
      c.teacher_stopped = bool(out.stopped[index[i]])
    return texts, t_state
