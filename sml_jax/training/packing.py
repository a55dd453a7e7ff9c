"""Where the train step's work goes in a batch: which conversations share a row (packing) and
which positions need logits (the loss index). Pure numpy, on the host.

Packing: conversations are placed first-fit-decreasing into rows of T tokens, so a batch of
short and long dialogues is not padded up to its longest one in every row:

    pack_rows([300, 120, 200, 90], row_len=512)   -> [[0, 3], [2, 1]]   (example indices)

Inside a row each conversation is a segment (`segment_ids` 1, 2, ...; 0 on padding) with its own
positions 0..len-1, and attends only to itself (`train_step.attention_mask`), so a packed row
computes exactly what separate rows would.

Loss index: the unembedding (262,144 x 640 for Gemma 3 270M) is most of a step's FLOPs, but
only targets with a non-zero mask or weight (student tokens, 13-20% of an RL batch) enter the
loss. `loss_index(mask, weights)` lists, per row, the positions t whose hidden state h[t]
predicts such a target (target t + 1), padded to a bucketed count K with T - 1 (whose shifted
target has zero mask and weight, so padding adds nothing):

    mask row [0, 0, 1, 1, 0, 1, 0, 0]  ->  [1, 2, 4, 7, 7, 7, 7, 7]   (K = 8)

Shared prefix: every conversation of a batch starts with the same instructions and in-context
demonstrations (~350 tokens on the demo config). `shared_prefix_length` finds how many leading
tokens all examples share *and* no loss reads: the train step then forwards those once (their
keys / values feed every row's attention) and the rows hold only the suffixes:

    ids  [a b c d e f], [a b c d x], [a b c y]; targets needing a loss from position 3 on
    -> 2 (multiple=1): the suffix of every example starts at a position whose target is free

Group spans: in a GRPO group the conversations also share their problem statement (everything
up to the student's first sampled token). `group_spans` finds, after the batch's shared prefix,
the span each example shares with others and no loss reads; `pack_grouped_rows` stores that
span once per row that holds members of the group (its own segment, no loss), and the members'
segments hold the rest, attending to the span too (`parent_ids`, `train_step.attention_mask`):

    suffixes  [s s s a a], [s s s b], [s s s c c c]  (one group, span length 3)
    -> row    [s s s | a a | b | c c c]   segments 1 | 2 | 3 | 4, parents 0 | 1 | 1 | 1
"""

from __future__ import annotations

import collections
from typing import NamedTuple, Sequence

import numpy as np

MIN_INDEX_SIZE = 8
PREFIX_MULTIPLE = 16   # shared prefix lengths are rounded down to this (few shapes compile)
MIN_PREFIX = 32        # below this a shared prefix saves too little to be worth a second forward
MIN_SPAN = 8           # below this a group's span saves too little to be worth a segment


def bucket_count(n: int, cap: int | None = None) -> int:
  """The smallest of 8, 12, 16, 24, 32, 48, ... (powers of two and 1.5x them) >= n, at most
  `cap`: few distinct K values get compiled, and at most a third of the index is padding."""
  size = MIN_INDEX_SIZE
  while size < n:
    size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
  return min(size, cap) if cap else size


def pack_rows(lengths: Sequence[int], row_len: int) -> list[list[int]]:
  """First-fit-decreasing packing of sequences (each <= row_len) into rows of `row_len` tokens
  -> per row, the indices of its sequences in placement order. Deterministic."""
  if row_len < 1:
    raise ValueError(f"row_len must be >= 1, got {row_len}.")
  too_long = [n for n in lengths if n > row_len or n < 1]
  if too_long:
    raise ValueError(f"pack_rows: lengths must be in [1, row_len={row_len}], got {too_long[:4]}.")
  rows: list[list[int]] = []
  free: list[int] = []
  for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
    for r, space in enumerate(free):
      if lengths[i] <= space:
        rows[r].append(i)
        free[r] -= lengths[i]
        break
    else:
      rows.append([i])
      free.append(row_len - lengths[i])
  return rows


def loss_counts(mask: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """[B, T] -> [B] int: targets per row with a non-zero mask or weight."""
  return ((np.asarray(mask) != 0) | (np.asarray(weights) != 0)).sum(axis=1)


def loss_index(mask: np.ndarray, weights: np.ndarray, size: int | None = None) -> np.ndarray:
  """mask, weights [B, T] (as targets) -> int32 [B, K]: the positions t < T - 1 with a non-zero
  mask or weight at target t + 1, ascending, then T - 1. K = `size`, else the bucketed
  (`bucket_count`) largest row count, at most T."""
  mask, weights = np.asarray(mask), np.asarray(weights)
  b, t = mask.shape
  need = (mask != 0) | (weights != 0)
  if need[:, 0].any():
    raise ValueError("loss_index: the first token of a row cannot be a target (weights[:, 0] "
                     "must be 0).")
  counts = need.sum(axis=1)
  k = bucket_count(int(counts.max(initial=0)), cap=t) if size is None else size
  if counts.max(initial=0) > k:
    raise ValueError(f"loss_index: size {k} is smaller than a row's {counts.max()} targets.")
  out = np.full((b, k), t - 1, np.int32)
  for row in range(b):
    pos = np.flatnonzero(need[row]) - 1
    out[row, :len(pos)] = pos
  return out


def shared_prefix_length(ids: Sequence[np.ndarray], needs: Sequence[np.ndarray], *,
                         multiple: int = PREFIX_MULTIPLE, minimum: int = MIN_PREFIX) -> int:
  """The number P of leading tokens to forward once for all examples, or 0 (nothing shared).

  ids: per example int [L_i]; needs: per example bool [L_i], True where the token, as a target,
  has a non-zero mask or weight. P is the longest common prefix of all `ids`, cut so that no
  needed target lies at a position <= P (token P starts the suffix: nothing in the suffix
  predicts it, and the prefix's hidden states are never read) and every suffix is non-empty,
  rounded down to a multiple of `multiple`; 0 if that is below `minimum` or there is one
  example or none (nothing to share).
  """
  if multiple < 1 or minimum < 1:
    raise ValueError(f"multiple and minimum must be >= 1, got {multiple} and {minimum}.")
  _check_ids_needs("shared_prefix_length", ids, needs)
  if len(ids) < 2:
    return 0
  first = np.asarray(ids[0])
  p = len(first) - 1
  for row, need in zip(ids, needs):
    row, need = np.asarray(row), np.asarray(need, bool)
    n = min(len(row), len(first))
    differ = np.flatnonzero(row[:n] != first[:n])
    needed = np.flatnonzero(need)
    p = min(p, len(row) - 1, differ[0] if len(differ) else n,
            needed[0] - 1 if len(needed) else p)
  p = int(max(p, 0)) // multiple * multiple
  return p if p >= minimum else 0


class Item(NamedTuple):
  """One entry of a packed row: `kind` "example" (index = the example) or "span" (index = the
  group whose span it is)."""
  kind: str
  index: int


def _check_ids_needs(name: str, ids, needs) -> None:
  if len(ids) != len(needs):
    raise ValueError(f"{name}: {len(ids)} ids but {len(needs)} needs.")
  for row, need in zip(ids, needs):
    if len(row) != len(need):
      raise ValueError(f"{name}: ids of length {len(row)} but needs of length {len(need)}.")


def group_spans(ids: Sequence[np.ndarray], needs: Sequence[np.ndarray], prefix: int, *,
                minimum: int = MIN_SPAN) -> tuple[list[int], list[int]]:
  """-> (group, span) per example: the span is the L tokens after the shared `prefix` up to
  the position whose hidden state first predicts a needed target (so no loss reads the span's
  hidden states and the suffix after it is non-empty); examples whose spans are equal and at
  least `minimum` long form a group (ids 0, 1, ... in order of first appearance); others get
  group -1 and span 0. ids / needs as in `shared_prefix_length`."""
  _check_ids_needs("group_spans", ids, needs)
  heads = []
  for row, need in zip(ids, needs):
    row, need = np.asarray(row), np.asarray(need, bool)
    needed = np.flatnonzero(need[prefix + 1:])
    end = prefix + int(needed[0]) if len(needed) else len(row) - 1   # the suffix's first token
    heads.append(tuple(row[prefix:max(end, prefix)].tolist()))
  counts = collections.Counter(heads)
  index: dict[tuple, int] = {}
  groups, spans = [], []
  for head in heads:
    shared = counts[head] > 1 and len(head) >= minimum
    groups.append(index.setdefault(head, len(index)) if shared else -1)
    spans.append(len(head) if shared else 0)
  return groups, spans


def pack_grouped_rows(lengths: Sequence[int], groups: Sequence[int], spans: Sequence[int],
                      row_len: int) -> list[list[Item]]:
  """Rows of `row_len` tokens holding every example (length `lengths[i]`, its span included)
  once and, in a row with members of group g, g's span once before them -> per row its items
  in order: `Item("span", g)` or `Item("example", i)`. Groups go first, largest first, each
  member into the first row that already holds its group's span and has room for the rest of
  it, else the first with room for span + rest; then the ungrouped examples,
  first-fit-decreasing. Deterministic."""
  if row_len < 1:
    raise ValueError(f"row_len must be >= 1, got {row_len}.")
  if not len(lengths) == len(groups) == len(spans):
    raise ValueError("pack_grouped_rows: lengths, groups and spans differ in length.")
  too_long = [n for n in lengths if n > row_len or n < 1]
  if too_long:
    raise ValueError(f"pack_grouped_rows: lengths must be in [1, row_len={row_len}], got "
                     f"{too_long[:4]}.")
  rows: list[list[Item]] = []
  free: list[int] = []
  held: list[set[int]] = []    # per row, the groups whose span it holds

  def place(items, size) -> int:
    """items into the first row with `size` free tokens, else a new row -> the row."""
    r = next((r for r in range(len(rows)) if free[r] >= size), len(rows))
    if r == len(rows):
      rows.append([])
      free.append(row_len)
      held.append(set())
    rows[r].extend(items)
    free[r] -= size
    return r

  members = collections.defaultdict(list)
  for i, g in enumerate(groups):
    if g >= 0:
      members[g].append(i)
  for g in sorted(members, key=lambda g: (-sum(lengths[i] for i in members[g]), g)):
    for i in sorted(members[g], key=lambda i: (-lengths[i], i)):
      rest = lengths[i] - spans[i]
      if rest < 1:
        raise ValueError(f"pack_grouped_rows: example {i} has nothing after its span.")
      r = next((r for r in range(len(rows)) if g in held[r] and free[r] >= rest), None)
      if r is not None:   # A row holding the group's span: only the rest.
        rows[r].append(Item("example", i))
        free[r] -= rest
      else:
        held[place([Item("span", g), Item("example", i)], lengths[i])].add(g)
  for i in sorted((i for i, g in enumerate(groups) if g < 0), key=lambda i: (-lengths[i], i)):
    place([Item("example", i)], lengths[i])
  return rows
