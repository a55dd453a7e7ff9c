"""The batched multi-turn sampler: host-side bookkeeping around the jitted `decode` / `append`.

    sampler = Sampler(model, cache_length=1024, mesh=None, dtype=jnp.bfloat16)  # stop: <eot>, <eos>
    out = sampler.generate(params, prompts, max_new_tokens=64, temperature=0.0)   # one turn
    state = sampler.start(params, prompts)                          # prefill B conversations
    state, out = sampler.sample(params, state, max_new_tokens=64, temperature=0.7, seed=1,
                                active=np.array([True, False, ...]))
    state = sampler.append(params, state, segments)                 # e.g. the teacher's reply

Context layout. Every row's context is `history[b]`; all of it but its last token (`pending`) is
in the KV cache. Decoding feeds `pending` first, so each token goes through the model exactly
once (prefill never recomputes history). All rows write at one shared slot pointer; rows of
different lengths leave invalid padding slots behind (masked out). When the pointer runs out of
capacity, the cache is compacted (valid slots moved to the front of each row) if that keeps a
smaller capacity than growing would, and always before the pointer would pass `cache_length`.

The cache is allocated at the smallest capacity bucket (128, 256, 512, ... up to `cache_length`)
that fits, and grows as conversations do: attention reads only the capacity, so short dialogues
do not pay for a long maximum.

A `ChatState` is consumed by `sample` / `append` (its cache is donated); use the returned one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sml_jax.models import tokens as token_ids
from sml_jax.parallel import rules
from sml_jax.parallel.mesh import BATCH_AXES
from sml_jax.sampling import decode
from sml_jax.sampling import forward as fwd
from sml_jax.sampling.forward import KVCache

MIN_CAPACITY = 128
MIN_CHUNK = 16
MIN_BUFFER = 16


def _bucket(n: int, minimum: int) -> int:
  """Smallest power of two >= max(n, minimum)."""
  b = minimum
  while b < n:
    b *= 2
  return b


def _chunk_bucket(n: int) -> int:
  """Prefill chunk lengths: 16, 32, 64, then steps of x1.5 / x1.33 (96, 128, 192, 256, ...),
  so a padded chunk wastes at most a third of its compute, with few distinct shapes."""
  b = _bucket(n, MIN_CHUNK)
  return b * 3 // 4 if b >= 128 and b * 3 // 4 >= n else b


@dataclasses.dataclass
class TurnOutput:
  """What one `sample` / `generate` call produced, per row (inactive rows: empty arrays).

  tokens: generated ids, including the stop token when one was hit.
  logprobs: float32 log-prob of each generated token under the sampling distribution (after
    temperature / top-k / top-p; greedy: under the model's temperature-1 distribution).
  stopped: the row ended on a stop token (rather than on its budget).
  """
  tokens: list[np.ndarray]
  logprobs: list[np.ndarray]
  stopped: np.ndarray


@dataclasses.dataclass
class ChatState:
  """A batch of conversations: their KV cache and token histories."""
  cache: KVCache | None
  history: list[list[int]]            # full context ids per real row
  pointer: int                        # next free cache slot (shared by all rows)
  padded_batch: int                   # rows in the cache (batch padded to the mesh)

  @property
  def batch_size(self) -> int:
    return len(self.history)

  @property
  def lengths(self) -> np.ndarray:
    """Tokens in context per row."""
    return np.asarray([len(h) for h in self.history], np.int64)

  @property
  def capacity(self) -> int:
    return 0 if self.cache is None else self.cache.capacity

  def tokens(self, i: int) -> np.ndarray:
    """Row i's full context ids (prompt, generated and appended tokens)."""
    return np.asarray(self.history[i], np.int32)

  def _take(self) -> KVCache:
    if self.cache is None:
      raise ValueError("This ChatState was already consumed by a sample/append call (its cache "
                       "is donated); use the state that call returned.")
    cache, self.cache = self.cache, None
    return cache


class Sampler:
  """Batched, sharded, multi-turn sampler for `gm.nn` Gemma 3 text models (plain or LoRA)."""

  def __init__(self, model, cache_length: int = 1024, mesh=None, dtype=jnp.bfloat16,
               stop_tokens: Sequence[int] = token_ids.STOP_TOKENS, min_shared_prefix: int = 32,
               cache_dtype=None, live_rows_min_batch: int = 16):
    """`dtype`: the compute dtype. `cache_dtype`: the KV cache's (None: `dtype`); e.g.
    bfloat16 under float32 compute halves the cache (keys and values are rounded once when
    written, attention still computes in `dtype`).
    `stop_tokens`: a row's turn ends when it writes one (default <end_of_turn>, <eos>).
    `min_shared_prefix`: when all prompts of `start` begin with the same tokens (e.g. the
    instructions and in-context demos of a dialogue), a common prefix at least this long is
    prefilled once and copied to every row (0 disables).
    `live_rows_min_batch`: on a CPU, with the batch on one device, a turn of at least this
    many rows goes on with the rows still running alone once half of them (then three
    quarters, ...) have stopped (`decode.live_row_buckets`; 0 disables). A smaller batch
    may round a row's matmuls differently: the same tokens on the 270M turns measured, but a
    near-tie could flip one. Not used on accelerators or split batches: not measured there,
    and the gather would cross devices."""
    if cache_length < 2:
      raise ValueError(f"cache_length must be >= 2, got {cache_length}.")
    self.model = model
    self.arch = fwd.Arch.from_model(model)
    self.cache_length = int(cache_length)
    self.mesh = mesh
    self.dtype = jnp.dtype(dtype)
    self.cache_dtype = jnp.dtype(cache_dtype or dtype)
    self.stop_tokens = tuple(int(t) for t in stop_tokens)
    self._stop_array = np.asarray(self.stop_tokens or (-1,), np.int32)
    self.min_shared_prefix = int(min_shared_prefix)
    devices = jax.devices() if mesh is None else list(mesh.devices.flat)
    split = mesh is not None and int(np.prod([mesh.shape[a] for a in BATCH_AXES])) > 1
    self.live_rows_min_batch = (int(live_rows_min_batch)
                                if devices[0].platform == "cpu" and not split else 0)

  # ---------------------------------------------------------------- public API

  def generate(self, params, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64,
               temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
               seed: int = 0, line_stop: decode.LineStop | None = None,
               row_ids: Sequence[int] | None = None) -> TurnOutput:
    """One turn from fresh prompts (lists of ids, any lengths); `row_ids` as in `sample`."""
    self._check_budget(max_new_tokens)
    prompts = self._check_prompts(prompts)
    if max_new_tokens == 0:
      return _empty_output(len(prompts))
    for i, p in enumerate(prompts):
      if len(p) + max_new_tokens > self.cache_length:
        raise ValueError(f"Prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} "
                         f"it exceeds cache_length={self.cache_length}.")
    reserve = max(len(p) for p in prompts) - 1 + max_new_tokens
    state = self.start(params, prompts, _reserve=reserve)
    _, out = self.sample(params, state, max_new_tokens=max_new_tokens, temperature=temperature,
                         top_k=top_k, top_p=top_p, seed=seed, line_stop=line_stop,
                         row_ids=row_ids)
    return out

  def start(self, params, prompts: Sequence[Sequence[int]], *, _reserve: int = 0) -> ChatState:
    """Prefills a batch of fresh conversations (`prompts`: lists of ids, any lengths)."""
    prompts = self._check_prompts(prompts)
    padded = self._padded_batch(len(prompts))
    need = max(len(p) for p in prompts) - 1
    capacity = self._capacity_for(max(need + MIN_CHUNK, _reserve))
    shared = _common_prefix_length(prompts)
    if len(prompts) > 1 and self.min_shared_prefix and shared >= self.min_shared_prefix:
      # Prefill the shared prefix on one row (padded to the mesh), copy it to every row, then
      # append each row's own rest: the prefix costs one row's compute instead of B.
      one = self._padded_batch(1)
      cache = decode.init_cache(self.arch, one, capacity, self.cache_dtype, self.mesh)
      prefix = list(prompts[0][:shared])
      state = self._extend(params, ChatState(cache=cache, history=[[]], pointer=0,
                                             padded_batch=one), [prefix], fresh=True)
      cache = decode.broadcast_row(state._take(), batch=padded, mesh=self.mesh)
      state = ChatState(cache=cache, history=[list(prefix) for _ in prompts],
                        pointer=state.pointer, padded_batch=padded)
      return self._extend(params, state, [p[shared:] for p in prompts], fresh=False)
    cache = decode.init_cache(self.arch, padded, capacity, self.cache_dtype, self.mesh)
    state = ChatState(cache=cache, history=[[] for _ in prompts], pointer=0,
                      padded_batch=padded)
    return self._extend(params, state, prompts, fresh=True)

  def append(self, params, state: ChatState, segments: Sequence[Sequence[int]]) -> ChatState:
    """Extends row i by `segments[i]` (ids, may be empty) without re-prefilling its history."""
    if len(segments) != state.batch_size:
      raise ValueError(f"append got {len(segments)} segments for {state.batch_size} rows.")
    segments = [self._check_ids(s, f"segment {i}", allow_empty=True)
                for i, s in enumerate(segments)]
    for i, (h, s) in enumerate(zip(state.history, segments)):
      if len(h) + len(s) > self.cache_length:
        raise ValueError(f"Row {i}: appending {len(s)} tokens to its {len(h)} would overflow "
                         f"cache_length={self.cache_length}.")
    return self._extend(params, state, segments, fresh=False)

  def sample(self, params, state: ChatState, max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             active: np.ndarray | Sequence[bool] | None = None,
             line_stop: decode.LineStop | None = None,
             row_ids: Sequence[int] | None = None) -> tuple[ChatState, TurnOutput]:
    """Generates up to `max_new_tokens` per active row; they join the rows' contexts.
    `line_stop`: rows also end at their first line break after some text (`stopped` stays
    False for them: only stop tokens set it).
    `row_ids`: the id each row's random stream is folded from (default: its index). Giving a
    row the same id wherever it runs (e.g. its index in the global batch, when every host
    samples its own slice) gives it the same samples there."""
    self._check_budget(max_new_tokens)
    policy = dataclasses.replace(self._policy(temperature, top_k, top_p),
                                 line_stop=line_stop is not None)
    b = state.batch_size
    active = np.ones(b, bool) if active is None else np.asarray(active, bool).reshape(-1)
    if active.shape != (b,):
      raise ValueError(f"active has {active.shape[0]} entries for {b} rows.")
    if max_new_tokens == 0 or not active.any():
      return state, _empty_output(b)
    lengths = state.lengths
    for i in np.flatnonzero(active):
      if lengths[i] + max_new_tokens > self.cache_length:
        raise ValueError(f"Row {i} has {lengths[i]} tokens in context; max_new_tokens="
                         f"{max_new_tokens} would overflow cache_length={self.cache_length}.")
    cache = self._room(state, max_new_tokens)
    padded = state.padded_batch
    pending = np.zeros(padded, np.int32)
    positions = np.zeros(padded, np.int32)
    act = np.zeros(padded, bool)
    pending[:b] = [h[-1] for h in state.history]
    positions[:b] = lengths - 1
    act[:b] = active
    ids = np.arange(padded, dtype=np.uint32)
    if row_ids is not None:
      row_ids = np.asarray(row_ids, np.int64).reshape(-1)
      if row_ids.shape != (b,) or np.any(row_ids < 0):
        raise ValueError(f"row_ids must be {b} ids >= 0, got {row_ids.tolist()}.")
      ids[:b] = row_ids
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(seed), jnp.asarray(ids))
    out = decode.decode(
        self._place(params), cache, self._rows(pending), self._rows(positions), self._rows(act),
        jnp.int32(state.pointer), jnp.int32(max_new_tokens),
        jnp.float32(max(temperature, 1e-6)), jnp.float32(1.0 if top_p is None else top_p),
        self._rows(keys), jnp.asarray(self._stop_array),
        jnp.asarray(line_stop.line_end if line_stop else (-1,), jnp.int32),
        jnp.asarray(line_stop.blank if line_stop else (-1,), jnp.int32),
        arch=self.arch, dtype=self.dtype, policy=policy,
        buffer=_bucket(max_new_tokens, MIN_BUFFER), mesh=self.mesh,
        live_rows=decode.live_row_buckets(padded, self.live_rows_min_batch))
    tokens, logprobs, counts, stopped, steps = jax.device_get(
        (out.tokens, out.logprobs, out.counts, out.stopped, out.steps))
    history = [list(h) for h in state.history]
    result_tokens, result_lps = [], []
    for i in range(b):
      n = int(counts[i])
      result_tokens.append(np.asarray(tokens[i, :n], np.int32))
      result_lps.append(np.asarray(logprobs[i, :n], np.float32))
      history[i].extend(int(t) for t in tokens[i, :n])
    new_state = ChatState(cache=out.cache, history=history,
                          pointer=state.pointer + int(steps), padded_batch=padded)
    return new_state, TurnOutput(tokens=result_tokens, logprobs=result_lps,
                                 stopped=np.asarray(stopped[:b], bool) & active)

  def truncate(self, state: ChatState, lengths: Sequence[int]) -> ChatState:
    """Cuts row i back to its first `lengths[i]` tokens (>= 1), e.g. to end a turn where the
    text says it ended. Cheap: the dropped slots are only marked invalid (compaction reclaims
    them), nothing is recomputed."""
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    if lengths.shape != (state.batch_size,):
      raise ValueError(f"truncate got {lengths.shape[0]} lengths for {state.batch_size} rows.")
    current = state.lengths
    if np.any(lengths < 1) or np.any(lengths > current):
      raise ValueError(f"truncate lengths must be in [1, current length]; got {lengths.tolist()} "
                       f"for rows of {current.tolist()} tokens.")
    history = [h[:int(n)] for h, n in zip(state.history, lengths)]
    if np.array_equal(lengths, current):
      return ChatState(cache=state._take(), history=history, pointer=state.pointer,
                       padded_batch=state.padded_batch)
    keep = np.full(state.padded_batch, np.iinfo(np.int32).max, np.int32)
    keep[:state.batch_size] = lengths - 1   # The cache holds every token but the pending last one.
    cache = _drop_tail(state._take(), self._rows(keep))
    return ChatState(cache=cache, history=history, pointer=state.pointer,
                     padded_batch=state.padded_batch)

  # ---------------------------------------------------------------- internals

  def _extend(self, params, state: ChatState, segments, *, fresh: bool) -> ChatState:
    """Writes new context into the cache. Row b's chunk is its pending token (none for a fresh
    prompt) plus all of its segment but the last token, which becomes the new pending."""
    padded = state.padded_batch
    chunks = []
    for h, s in zip(state.history, segments):
      if not s:
        chunks.append([])
      elif fresh:
        chunks.append(list(s[:-1]))
      else:
        chunks.append([h[-1]] + list(s[:-1]))
    history = [list(h) + list(s) for h, s in zip(state.history, segments)]
    longest = max(len(c) for c in chunks)
    if longest == 0:
      return ChatState(cache=state._take(), history=history, pointer=state.pointer,
                       padded_batch=padded)
    chunk = _chunk_bucket(longest)
    if state.pointer + chunk > self.cache_length:
      chunk = max(longest, self.cache_length - state.pointer)
    cache = self._room(state, chunk)
    pointer = state.pointer
    if pointer + chunk > cache.capacity:   # compacted: pointer moved
      chunk = longest
    tokens = np.zeros((padded, chunk), np.int32)
    counts = np.zeros(padded, np.int32)
    start = np.zeros(padded, np.int32)
    for i, c in enumerate(chunks):
      tokens[i, :len(c)] = c
      counts[i] = len(c)
      start[i] = 0 if fresh else len(state.history[i]) - 1
    cache = decode.append(self._place(params), cache, self._rows(tokens), self._rows(counts),
                          self._rows(start), jnp.int32(pointer), arch=self.arch,
                          dtype=self.dtype, mesh=self.mesh)
    return ChatState(cache=cache, history=history, pointer=pointer + longest,
                     padded_batch=padded)

  def _room(self, state: ChatState, slots: int) -> KVCache:
    """Takes the state's cache, with room for `slots` after the pointer: compacted when that
    keeps a smaller capacity than growing would (every decode step attends over the whole
    capacity, so padding slots cost time on every later step), else grown. Updates
    `state.pointer` when compacting."""
    cache = state._take()
    capacity = cache.capacity
    if state.pointer + slots <= capacity:
      return cache
    resident = max(max(len(h) for h in state.history) - 1, 0)   # longest row's cached tokens
    if (state.pointer + slots > self.cache_length
        or self._capacity_for(resident + slots) < self._capacity_for(state.pointer + slots)):
      cache = decode.compact(cache, mesh=self.mesh)
      state.pointer = resident
      if state.pointer + slots > self.cache_length:
        raise ValueError(f"The batch needs {state.pointer + slots} cache slots (longest row "
                         f"{resident + 1} tokens + {slots} new), more than "
                         f"cache_length={self.cache_length}.")
    needed = self._capacity_for(state.pointer + slots)
    if needed != capacity:   # grows, or shrinks to what compaction left
      cache = decode.resize(cache, capacity=needed, mesh=self.mesh)
    return cache

  def _capacity_for(self, slots: int) -> int:
    return min(_bucket(slots, MIN_CAPACITY), self.cache_length)

  def _padded_batch(self, b: int) -> int:
    if self.mesh is None:
      return b
    n = int(np.prod([self.mesh.shape[a] for a in BATCH_AXES]))
    return -(-b // n) * n

  def _place(self, params):
    """With a mesh, params sharded by the rules table (`param_shardings`); device_put is a no-op
    for arrays already placed that way (e.g. by the trainer)."""
    if self.mesh is None:
      return params
    return jax.device_put(params, rules.param_shardings(params, self.mesh))

  def _rows(self, x):
    """Puts a batch-leading host array on device (sharded over the data axes with a mesh)."""
    if self.mesh is None:
      return jnp.asarray(x)
    return jax.device_put(x, rules.batch_sharding(self.mesh, np.ndim(x) or 1))

  def _policy(self, temperature, top_k, top_p) -> decode.Policy:
    if temperature is None or temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {temperature}.")
    if top_k is not None and not 0 < int(top_k) <= self.arch.vocab_size:
      raise ValueError(f"top_k must be in [1, {self.arch.vocab_size}], got {top_k}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    if temperature == 0:
      return decode.Policy(greedy=True)
    return decode.Policy(greedy=False, top_k=None if top_k is None else int(top_k),
                         top_p=top_p is not None and top_p < 1.0)

  @staticmethod
  def _check_budget(max_new_tokens):
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
      raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}.")

  def _check_ids(self, ids, what: str, allow_empty: bool = False) -> list[int]:
    ids = [int(t) for t in np.asarray(ids, np.int64).reshape(-1)]
    if not ids and not allow_empty:
      raise ValueError(f"{what} is empty: every prompt needs at least one token (e.g. <bos>).")
    if ids and not (0 <= min(ids) and max(ids) < self.arch.vocab_size):
      raise ValueError(f"{what} has token ids outside [0, {self.arch.vocab_size}).")
    return ids

  def _check_prompts(self, prompts) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or len(prompts) == 0:
      raise ValueError("prompts must be a non-empty list of token-id lists.")
    out = [self._check_ids(p, f"Prompt {i}") for i, p in enumerate(prompts)]
    for i, p in enumerate(out):
      if len(p) > self.cache_length:
        raise ValueError(f"Prompt {i} has {len(p)} tokens, more than cache_length="
                         f"{self.cache_length}.")
    return out


def _common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
  """Tokens every prompt starts with, leaving each at least one token of its own (the last
  token of a context stays pending until the next sample/append)."""
  limit = min(len(p) for p in prompts) - 1
  first = np.asarray(prompts[0][:limit])
  for p in prompts[1:]:
    same = first[:limit] == np.asarray(p[:limit])
    limit = int(np.argmin(same)) if not same.all() else limit
  return max(limit, 0)


@functools.partial(jax.jit, donate_argnums=0)
def _drop_tail(cache: KVCache, keep) -> KVCache:
  """Invalidates each row's cache slots at positions >= keep[row]."""
  return cache.replace(valid=cache.valid & (cache.pos < keep[:, None]))


def _empty_output(b: int) -> TurnOutput:
  return TurnOutput(tokens=[np.zeros(0, np.int32) for _ in range(b)],
                    logprobs=[np.zeros(0, np.float32) for _ in range(b)],
                    stopped=np.zeros(b, bool))
