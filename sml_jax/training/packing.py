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
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MIN_INDEX_SIZE = 8


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
