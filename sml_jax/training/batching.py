"""Pack dialogues (ids, roles, per-token weights) into the padded [B, T] arrays of the train step.

    ex = Example(ids, roles, weight=advantage)          # one conversation, ids/roles from
                                                        # chat_format.encode_dialogue
    batch = make_batch([ex, ...], max_len=1024, batch_multiple=8)

Right padding: real tokens first, PAD after. Positions are 0..len-1 then 0 on padding; the step
builds the causal attention mask from `input_mask`, so padding is never attended to (and, being
last, never attends to anything that matters: its weight is 0).

Per-token arrays are aligned with the token they describe *as a target*: `weights[b, t]` is the
weight of predicting `tokens[b, t]` from `tokens[b, :t]`, so `weights[:, 0]` must be 0 (nothing
predicts the first token). Student tokens are `Role.MODEL` (`models.tokens.loss_mask`); their
weight is the example's `weight` (1 for SFT, the advantage for RL) unless `token_weights` is given.

The batch is a `Batch` (a pytree: its arrays are numpy on the host, jax.Arrays once placed);
fields and shapes are in its docstring.

T is the smallest of `buckets` holding the longest example (so few shapes get compiled), capped
at `max_len`; longer examples are truncated on the right (their tail loses its weight) and
counted in `batch_stats`.

What the train step computes (`packing.py`): `pack=True` puts several conversations in one row
(segments, first-fit-decreasing), so padding is small; `with_loss_index=True` adds per row the
positions whose target carries a mask or weight, so logits are computed only there;
`share_prefix=True` cuts off the leading tokens every example shares and no loss reads
(`packing.shared_prefix_length`): they are stored once (`prefix_tokens`), the rows hold the
suffixes (positions continuing at P), and the step forwards the prefix once per step
(`shared_prefix.py`, `train_step._accumulate`); with it, `share_groups=True` also stores the span
after the prefix that the conversations of one group share (the problem statement of a GRPO
group) once per row (`packing.group_spans`, `pack_grouped_rows`: its own segment, which the
group's segments attend to through `parent_ids`). All are exact: the loss, its gradient and
the log-probs of student tokens are those of the plain batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.struct
import numpy as np

from sml_jax.models.tokens import PAD_ID, loss_mask
from sml_jax.training import packing

DEFAULT_BUCKETS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
REQUIRED = ("tokens", "positions", "input_mask", "mask", "weights")
OPTIONAL = ("old_logprobs", "ref_logprobs")
# Optional, not per-example values.
LAYOUT = ("segment_ids", "parent_ids", "loss_index", "prefix_tokens")


@flax.struct.dataclass
class Batch:
  """One train batch of B rows x T tokens (numpy on the host, jax.Arrays on device).

  tokens        int32   [B, T]  ids, right-padded with PAD_ID
  positions     int32   [B, T]  each token's position in its conversation (0.. per segment; from
                                P after a shared prefix, past its span after a group span), 0 on
                                padding
  input_mask    bool    [B, T]  real (non-pad) tokens
  mask          float32 [B, T]  1 on student tokens, as targets (normaliser, KL, metrics)
  weights       float32 [B, T]  per-token loss weight (1 for SFT, the advantage for RL)
  old_logprobs  float32 [B, T]  sampler log-probs, for PPO; None when absent
  ref_logprobs  float32 [B, T]  reference log-probs, for the KL term; None when absent
  segment_ids   int32   [B, T]  packed rows: conversation 1, 2, ... of the row, 0 on padding;
                                None: one conversation per row
  parent_ids    int32   [B, T]  with group spans: per token of a conversation, the segment id of
                                the group span (in the same row, before it) it also attends to;
                                0 elsewhere (a span is a segment without loss); None: no spans
  loss_index    int32   [B, K]  positions t whose h[t] predicts a target with non-zero mask or
                                weight, then T - 1 (`packing.loss_index`); None: every position
  prefix_tokens int32   [B, P]  the P leading tokens every conversation shares (the same in every
                                row, so rows split and shard like the rest); the other fields
                                then hold each conversation's suffix: its tokens from P on, with
                                positions P, P + 1, ...; None: no shared prefix

  A pytree (None fields have no leaves): `jax.tree.map` places or splits every array at once;
  `batch.replace(ref_logprobs=...)` adds a field.
  """
  tokens: Any
  positions: Any
  input_mask: Any
  mask: Any
  weights: Any
  old_logprobs: Any = None
  ref_logprobs: Any = None
  segment_ids: Any = None
  parent_ids: Any = None
  loss_index: Any = None
  prefix_tokens: Any = None

  @property
  def shape(self) -> tuple[int, ...]:
    """(B, T)."""
    return tuple(self.tokens.shape)

  def arrays(self) -> dict[str, Any]:
    """{field: array} of the fields that are present (not None), in field order."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None}

  @property
  def prefix_length(self) -> int:
    """P, the shared prefix's length (0 without one)."""
    return 0 if self.prefix_tokens is None else int(self.prefix_tokens.shape[1])

  def padding_fraction(self, num_micro: int = 1) -> float:
    """Share of the [B, T] slots that hold no token (host arrays), over the micro-batches the
    step computes (of the strided split into `num_micro`, those holding a token: the step skips
    the others). The shared prefix is not counted: it is computed once, not per row."""
    computed = self._computed(num_micro)
    return float(1.0 - computed.mean()) if computed.size else 1.0

  def _computed(self, num_micro: int) -> np.ndarray:
    """input_mask [b, M', T] of the M' micro-batches (strided split) that hold a token."""
    mask = np.asarray(self.input_mask)
    groups = mask.reshape(mask.shape[0] // num_micro, num_micro, -1)   # [b, M, T]: row j*M + m
    return groups[:, groups.any(axis=(0, 2))]

  def computed_shape(self, num_micro: int = 1) -> tuple[int, int]:
    """(rows, T) the step computes (host arrays): the rows of the micro-batches holding a token
    (see `padding_fraction`)."""
    b, filled, t = self._computed(num_micro).shape
    return b * filled, t

  def num_sequences(self) -> int:
    """Conversations in the batch (host arrays): segments of packed rows that are not group
    spans, else non-empty rows."""
    if self.segment_ids is not None:
      spans = 0 if self.parent_ids is None else sum(
          len(set(row[row > 0].tolist())) for row in np.asarray(self.parent_ids))
      return int(np.asarray(self.segment_ids).max(axis=1, initial=0).sum()) - spans
    return int(np.asarray(self.input_mask).any(axis=1).sum())

  def span_tokens_saved(self) -> int:
    """Tokens the group spans spare (host arrays): each span's length times the number of its
    conversations in the row, minus one."""
    if self.parent_ids is None:
      return 0
    saved = 0
    for seg, parent in zip(np.asarray(self.segment_ids), np.asarray(self.parent_ids)):
      for span in set(parent[parent > 0].tolist()):
        saved += int((seg == span).sum()) * (len(set(seg[parent == span].tolist())) - 1)
    return saved

  def num_tokens(self) -> int:
    """The conversations' tokens (host arrays): the rows' real tokens plus, with a shared
    prefix, its P tokens once per conversation and, with group spans, each span once more per
    conversation beyond the first that reads it (what the plain batch of the same examples holds)."""
    return (int(np.asarray(self.input_mask).sum()) + self.prefix_length * self.num_sequences()
            + self.span_tokens_saved())


@dataclasses.dataclass(frozen=True)
class Example:
  """One conversation. ids int32 [L], roles int8 [L] (`Role`), optional per-token [L] arrays."""
  ids: np.ndarray
  roles: np.ndarray
  weight: float = 1.0
  token_weights: np.ndarray | None = None
  old_logprobs: np.ndarray | None = None
  ref_logprobs: np.ndarray | None = None

  def __post_init__(self):
    n = len(self.ids)
    for name in ("roles", "token_weights", "old_logprobs", "ref_logprobs"):
      value = getattr(self, name)
      if value is not None and len(value) != n:
        raise ValueError(f"Example.{name} has length {len(value)}, but ids has length {n}.")
    if n == 0:
      raise ValueError("Example.ids is empty.")
    if not np.isfinite(self.weight):
      raise ValueError(f"Example.weight must be finite, got {self.weight}.")


def bucket_length(length: int, buckets: Sequence[int] = DEFAULT_BUCKETS,
                  max_len: int | None = None) -> int:
  """The smallest bucket >= length (capped at max_len; beyond the last bucket: max_len or length)."""
  fits = [b for b in sorted(buckets) if b >= length]
  out = fits[0] if fits else (max_len or length)
  return min(out, max_len) if max_len else out


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def make_batch(examples: Sequence[Example], max_len: int | None = None, *,
               buckets: Sequence[int] = DEFAULT_BUCKETS, batch_multiple: int = 1,
               pad_batch_to: int | None = None, pack: bool = False,
               with_loss_index: bool = False, loss_index_size: int | None = None,
               share_prefix: bool = False, share_groups: bool = False) -> Batch:
  """Examples -> the padded `Batch` described in the module docstring (numpy arrays).

  batch_multiple: pad B with empty rows (all weights 0) up to a multiple of this (micro-batches
    x data-parallel devices). pad_batch_to: pad B to exactly this many rows (fixed shapes); with
    it, `examples` may be empty (an all-padding batch, e.g. a host whose rows carried no
    signal while another's did).
  pack: several examples per row (`segment_ids`); T is still the bucket of the longest example.
  with_loss_index: add `loss_index` [B, K]; K = loss_index_size (e.g. agreed across hosts), else
    bucketed from the largest row count.
  share_prefix: split off the longest prefix shared by all examples (after truncation to
    max_len) that no loss reads, rounded down to a multiple of `packing.PREFIX_MULTIPLE`
    (nothing below `packing.MIN_PREFIX`): `prefix_tokens` [B, P], rows hold the suffixes and T
    is the bucket of the longest suffix (capped at max_len - P).
  share_groups: with `pack`, store each group's span once per row (`packing.group_spans`,
    `pack_grouped_rows`; `parent_ids`) when that packs into fewer rows than without (T is the
    same, so the step costs the rows it computes; fewer tokens in as many rows save nothing).
  """
  if not examples and not pad_batch_to:
    raise ValueError("make_batch needs at least one example.")
  if max_len is not None and max_len < 2:
    raise ValueError(f"max_len must be >= 2, got {max_len}.")
  if batch_multiple < 1:
    raise ValueError(f"batch_multiple must be >= 1, got {batch_multiple}.")
  if share_groups and not pack:
    raise ValueError("make_batch: share_groups=True needs pack=True (spans are row segments).")
  lengths = [min(len(e.ids), max_len or len(e.ids)) for e in examples]   # after truncation
  targets = [_targets(e, n) for e, n in zip(examples, lengths)]           # (mask, weights)
  ids = [e.ids[:n] for e, n in zip(examples, lengths)]
  needs = [(m != 0) | (w != 0) for m, w in targets]
  prefix = packing.shared_prefix_length(ids, needs) if share_prefix else 0
  longest = max((n - prefix for n in lengths), default=1)
  t = bucket_length(longest, buckets, max_len - prefix if max_len else None)
  suffix_lengths = [min(n - prefix, t) for n in lengths]
  groups, spans = [-1] * len(examples), [0] * len(examples)
  rows = ([[packing.Item("example", i)] for i in range(len(examples))] if not pack else
          [[packing.Item("example", i) for i in row]
           for row in packing.pack_rows(suffix_lengths, t)])
  if share_groups and examples:
    grouped_by, span_of = packing.group_spans(ids, needs, prefix)
    if max(grouped_by) >= 0:
      grouped = packing.pack_grouped_rows(suffix_lengths, grouped_by, span_of, t)
      if len(grouped) < len(rows):
        rows, groups, spans = grouped, grouped_by, span_of
  b = round_up(max(len(rows), pad_batch_to or 0), batch_multiple)
  if pad_batch_to is not None and b != pad_batch_to:
    raise ValueError(f"pad_batch_to={pad_batch_to} is smaller than the {len(rows)} rows "
                     f"or not a multiple of batch_multiple={batch_multiple}.")

  out = {
      "tokens": np.full((b, t), PAD_ID, np.int32),
      "positions": np.zeros((b, t), np.int32),
      "input_mask": np.zeros((b, t), bool),
      "mask": np.zeros((b, t), np.float32),
      "weights": np.zeros((b, t), np.float32),
  }
  optional = [k for k in OPTIONAL if examples and all(getattr(e, k) is not None for e in examples)]
  with_spans = max(groups, default=-1) >= 0
  ids_layout = ["segment_ids"] * pack + ["parent_ids"] * with_spans
  for k in optional + ids_layout:
    out[k] = np.zeros((b, t), np.int32 if k in ids_layout else np.float32)

  first_member = {g: groups.index(g) for g in set(groups) if g >= 0}
  for r, items in enumerate(rows):
    start, span_segment = 0, {}
    for seg, (kind, i) in enumerate(items, 1):
      if kind == "span":   # A group's span: no loss.
        ex, cut = examples[first_member[i]], slice(prefix, prefix + spans[first_member[i]])
      else:                # An example's suffix (the whole row: prefix 0), after its group's span.
        ex, cut = examples[i], slice(prefix + spans[i], min(lengths[i], prefix + t))
      where = slice(start, start + cut.stop - cut.start)
      out["tokens"][r, where] = ex.ids[cut]
      out["positions"][r, where] = np.arange(cut.start, cut.stop)
      out["input_mask"][r, where] = True
      if pack:
        out["segment_ids"][r, where] = seg
      start = where.stop
      if kind == "span":
        span_segment[i] = seg
        continue
      out["mask"][r, where] = targets[i][0][cut]
      out["weights"][r, where] = targets[i][1][cut]
      for k in optional:
        out[k][r, where] = getattr(ex, k)[cut]
      if groups[i] >= 0:
        out["parent_ids"][r, where] = span_segment[groups[i]]
  if prefix:
    out["prefix_tokens"] = np.tile(np.asarray(examples[0].ids[:prefix], np.int32), (b, 1))
  if with_loss_index:
    out["loss_index"] = packing.loss_index(out["mask"], out["weights"], loss_index_size)
  return Batch(**out)


def _targets(ex: Example, n: int) -> tuple[np.ndarray, np.ndarray]:
  """(mask, weights) float32 [n] of the first n tokens of `ex`, as targets."""
  mask = loss_mask(ex.roles[:n])
  mask[0] = 0.0  # Nothing predicts the first token.
  tw = (np.asarray(ex.token_weights[:n], np.float32) if ex.token_weights is not None
        else np.float32(ex.weight))
  return mask, mask * tw


def batch_stats(examples: Sequence[Example], batch: Batch) -> dict[str, float]:
  """Host-side counts for metrics: sequences, real / student tokens, truncated examples, fill."""
  t = batch.prefix_length + batch.tokens.shape[1]
  return {
      "num_sequences": float(len(examples)),
      "num_tokens": float(batch.num_tokens()),
      "num_student_tokens": float(batch.mask.sum()),
      "num_truncated": float(sum(len(e.ids) > t for e in examples)),
      "padding_fraction": batch.padding_fraction(),
  }


def micro_batch_bucket(n: int) -> int:
  """The compiled step's micro-batch count for n filled ones: the smallest power of two >= n
  (the step skips the empty ones, so padding costs no compute, and at most log2 counts compile)."""
  if n < 1:
    raise ValueError(f"micro_batch_bucket needs n >= 1, got {n}.")
  return 1 << (n - 1).bit_length()


def spread_micro_batches(batch: Batch, num_micro: int, filled: int) -> Batch:
  """A batch of `filled` x b rows (host arrays; the train step's strided split puts row r in
  micro-batch r % filled) -> num_micro x b rows whose strided split over `num_micro` gives the
  same `filled` micro-batches, row for row, then num_micro - filled empty ones (no token, zero
  weight: `train_step` skips them). num_micro >= filled."""
  rows = batch.tokens.shape[0]
  if filled < 1 or rows % filled or num_micro < filled:
    raise ValueError(f"spread_micro_batches: {rows} rows do not split into filled={filled} "
                     f"micro-batches, or num_micro={num_micro} < filled.")
  if num_micro == filled:
    return batch
  b = rows // filled
  r = np.arange(rows)
  where = (r // filled) * num_micro + r % filled       # row r's index in the spread batch
  t = batch.tokens.shape[1]
  fill = {"tokens": PAD_ID, "loss_index": t - 1}       # an empty row; everything else 0

  def spread(name, x):
    x = np.asarray(x)
    if name == "prefix_tokens":                        # the same in every row
      return np.broadcast_to(x[:1], (num_micro * b,) + x.shape[1:]).copy()
    out = np.full((num_micro * b,) + x.shape[1:], fill.get(name, 0), x.dtype)
    out[where] = x
    return out
  return batch.replace(**{k: spread(k, v) for k, v in batch.arrays().items()})


def split_micro_batches(batch: Batch, num_micro: int) -> list[Batch]:
  """Host-side split into `num_micro` batches, strided the same way the train step splits them
  (row i goes to micro-batch i % num_micro); for tests and debugging."""
  b = batch.tokens.shape[0]
  if b % num_micro:
    raise ValueError(f"Batch size {b} is not a multiple of num_micro_batches={num_micro}.")
  return [batch.replace(**{k: v[m::num_micro] for k, v in batch.arrays().items()})
          for m in range(num_micro)]


def plain(batch: Batch) -> Batch:
  """The same batch without the loss index (logits at every position), e.g. for benchmarks."""
  return batch.replace(loss_index=None)


__all__ = ["Batch", "Example", "make_batch", "batch_stats", "bucket_length",
           "micro_batch_bucket", "spread_micro_batches", "split_micro_batches", "plain",
           "DEFAULT_BUCKETS"]
