"""One party of a batch of dialogues: its token contexts and the KV-cache rows that mirror them.

Each party (student, LLM teacher) samples its turns from one `Sampler` state covering many
conversations. The contexts (`Conversation.student` / `.teacher`, token ids + roles) are the
source of truth; the cache follows them in one of two ways:

  catch up  append whatever a context holds beyond its cached tokens (a reply, a closing
            <end_of_turn>): the common case, no re-prefill
  rebuild   prefill the contexts afresh, after a turn was rewritten (a Q-priming question, a
            resampled teacher reply) or when the rows of the batch change (the teacher's first
            turn)

All rows of a cache write at one shared slot pointer, so a row's room depends on the longest row
too. That is why finished conversations give their rows back (`release`: cut to one token) and
why growth is checked batch-wide (`rows_that_do_not_fit`). This module is the only place that
knows it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

from sml_jax.dialogue.conversation import Context, reply_segment

if TYPE_CHECKING:
  from sml_jax.sampling import ChatState, Sampler


def reply_template_tokens(tokenizer) -> int:
  """Template tokens around a reply besides its text:
  `<end_of_turn>\\n<start_of_turn>user\\n ... <end_of_turn>\\n<start_of_turn>model\\n`."""
  return len(reply_segment(tokenizer, "", close_previous=True)[0])


def rows_that_do_not_fit(lengths: Sequence[int], growth: Mapping[int, int], capacity: int,
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


@dataclasses.dataclass
class Sampled:
  """One row's sampled turn: ids int32 [n] (with the stop token when it stopped), logprobs
  float32 [n], and whether it ended on a stop token rather than on its budget."""
  tokens: np.ndarray
  logprobs: np.ndarray
  stopped: bool


class Party:
  """One party's cache rows over the conversations of a run.

  Conversations are named by their index `i` in the run's batch (the keys everywhere below);
  `index[i]` is the cache row that holds conversation i. Global row ids (`first_row + i`) key the
  sampler's random draws, so a slice of a batch run alone draws what the whole batch draws.
  """

  def __init__(self, sampler: Sampler, params, contexts: Sequence[Context], first_row: int = 0):
    self.sampler, self.params, self.contexts = sampler, params, contexts
    self.first_row = int(first_row)
    self.state: ChatState | None = None
    self.index: dict[int, int] = {}
    self.released: set[int] = set()   # rows given back (cut to one token)
    self.stale = False                # some cached row differs from its context: rebuild
    self.turn_start: dict[int, int] = {}   # where the latest sampled turn starts in a context

  @property
  def capacity(self) -> int:
    return self.sampler.cache_length

  def row_ids(self, rows: Iterable[int]) -> np.ndarray:
    """Batch indices -> global row ids int64 [len(rows)] (the keys of their random streams)."""
    return self.first_row + np.asarray(list(rows), np.int64)

  def in_sync(self, rows: Iterable[int]) -> bool:
    """Whether `rows` can go on from the cache by appending (else: rebuild)."""
    return self.state is not None and not self.stale and all(i in self.index for i in rows)

  def has_room(self, i: int, tokens: int) -> bool:
    """Whether context i can grow by `tokens` on its own (ignoring the other rows)."""
    return len(self.contexts[i].ids) + tokens <= self.capacity

  # --- cache <- contexts -------------------------------------------------------------------------

  def rebuild(self, rows: Iterable[int]) -> None:
    """Prefills the cache afresh with the contexts of `rows`, in that order (a released row
    keeps its first token only)."""
    rows = list(rows)
    self.state = self.sampler.start(
        self.params, [self.contexts[i].ids[:1] if i in self.released else self.contexts[i].ids
                      for i in rows])
    self.index = {i: k for k, i in enumerate(rows)}
    self.stale = False

  def catch_up(self, rows: Iterable[int]) -> None:
    """Appends what the contexts of `rows` hold beyond their cached tokens (other rows and
    released ones add nothing)."""
    lengths = self.state.lengths
    segments = [[] for _ in range(len(self.index))]
    for i in rows:
      if i in self.released:
        continue
      k = self.index[i]
      segments[k] = self.contexts[i].ids[lengths[k]:]
    self.state = self.sampler.append(self.params, self.state, segments)

  def sync(self, rows: Iterable[int]) -> None:
    """Brings the cache up to the contexts of `rows`: appends when it can, else rebuilds."""
    rows = list(rows)
    if self.in_sync(rows):
      self.catch_up(rows)
    else:
      self.rebuild(rows)

  def rewrite_turn(self, i: int, ids: Sequence[int], roles: Sequence[int]) -> None:
    """Replaces the latest sampled turn of context i (e.g. a failed attempt by a Q-priming
    question). The cache no longer matches: the next `sync` rebuilds it."""
    self.contexts[i].truncate(self.turn_start[i])
    self.contexts[i].extend(ids, roles)
    self.stale = True

  # --- sampling ----------------------------------------------------------------------------------

  def sample(self, rows: Sequence[int], *, seed: int, **policy) -> dict[int, Sampled]:
    """One turn for `rows` (all cached; the other rows idle). `policy`: the sampler's
    max_new_tokens / temperature / top_k / top_p / line_stop. Returns {i: Sampled}."""
    active = np.zeros(len(self.index), bool)
    active[[self.index[i] for i in rows]] = True
    for i in rows:
      self.turn_start[i] = len(self.contexts[i].ids)
    self.state, out = self.sampler.sample(
        self.params, self.state, seed=seed, active=active,
        row_ids=self.row_ids(sorted(self.index, key=self.index.get)), **policy)
    return {i: Sampled(out.tokens[k], out.logprobs[k], bool(out.stopped[k]))
            for i, k in ((i, self.index[i]) for i in rows)}

  def drop_tails(self, removed: Mapping[int, int]) -> None:
    """Removes the last `removed[i]` tokens of row i from the cache (a turn cut where its text
    ends)."""
    if not any(removed.values()):
      return
    keep = self.state.lengths.copy()
    for i, n in removed.items():
      keep[self.index[i]] -= n
    self.state = self.sampler.truncate(self.state, keep)

  # --- room --------------------------------------------------------------------------------------

  def overflowing(self, adds: Mapping[int, int], then: int, *, fresh: bool) -> list[int]:
    """Conversations among `adds` that cannot take `adds[i]` more tokens and then a turn of
    `then` sampled tokens.

    fresh=False: appended to the current cache, behind the shared slot pointer; what a context
    holds beyond its cached tokens counts as growth too (`rows_that_do_not_fit`).
    fresh=True: each context prefilled anew, on its own.
    """
    if fresh:
      return [i for i, n in adds.items() if len(self.contexts[i].ids) + n + then > self.capacity]
    lengths = self.state.lengths
    conv_of = {self.index[i]: i for i in adds}
    growth = {self.index[i]: len(self.contexts[i].ids) - lengths[self.index[i]] + n
              for i, n in adds.items()}
    return [conv_of[k] for k in rows_that_do_not_fit(lengths, growth, self.capacity, then=then)]

  def evict(self, rows: Sequence[int]) -> None:
    """Cuts `rows` to one token now (they leave, as `overflowing(fresh=False)` assumes)."""
    if rows:
      keep = self.state.lengths.copy()
      keep[[self.index[i] for i in rows]] = 1
      self.state = self.sampler.truncate(self.state, keep)

  def release(self, done: Iterable[int]) -> None:
    """Gives back the cache rows of finished conversations (cut to one token): a long finished
    row would otherwise hold the shared pointer up and cap what the others can add."""
    rows = [i for i in done if i in self.index and i not in self.released]
    if self.state is None or not rows:
      return
    self.released.update(rows)
    keep = self.state.lengths.copy()
    keep[[self.index[i] for i in rows]] = 1
    self.state = self.sampler.truncate(self.state, keep)
