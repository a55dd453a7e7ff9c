"""The jitted pieces of the sampler: append (prefill) tokens to a cache, and the decode loop.

Both are module-level `jax.jit` functions whose static arguments are small hashable values
(`Arch`, `Policy`, mesh, sizes), so every `Sampler` over the same model shares one compiled
program per shape: student and teacher, and every RL step (params are a traced argument).

The cache is always donated, so it is updated in place. Shapes that vary are bucketed by the
caller (`sampler.py`): batch (padded to the data-parallel size), cache capacity C, prompt chunk
length P, output buffer N.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sml_jax.parallel import rules
from sml_jax.sampling import forward as fwd
from sml_jax.sampling.forward import KVCache


@dataclasses.dataclass(frozen=True)
class Policy:
  """Static sampling choices (one compiled loop each). Temperature and top-p values are traced.
  `line_stop`: a row also stops at its first line-break token after some text (see `LineStop`)."""
  greedy: bool
  top_k: int | None = None
  top_p: bool = False
  line_stop: bool = False


@dataclasses.dataclass(frozen=True)
class LineStop:
  """Token ids for ending a turn at its first line: a `line_end` token (a line break) stops a
  row once it has written a token not in `blank` (whitespace). For a party whose turn is cut
  at its first line anyway (the teacher, `turn_end.teacher_cut`), decoding past it is waste."""
  line_end: tuple[int, ...]
  blank: tuple[int, ...]


def prepare_params(arch: fwd.Arch, params, dtype):
  """LoRA folded in, cast to the compute dtype (a no-op when already so), decode layout."""
  params = fwd.merge_lora(arch, params)
  params = jax.tree.map(lambda x: x.astype(dtype), params)
  return fwd.decode_layout(arch, params)


def _constrain(tree, mesh, rules_fn):
  if mesh is None:
    return tree
  return jax.lax.with_sharding_constraint(tree, rules_fn(tree, mesh))


def _kv_heads(cache: KVCache) -> int:
  return cache.layers[0].keys.shape[0] // cache.valid.shape[0]


def _cache_shardings(cache: KVCache, mesh):
  return rules.cache_shardings(cache, mesh, _kv_heads(cache))


def _cache_constraint(cache: KVCache, mesh) -> KVCache:
  return _constrain(cache, mesh, _cache_shardings)


@flax.struct.dataclass
class DecodeState:
  """The carry of `decode`'s while loop (B rows, N = buffer tokens).

  step:       () int32, decode steps taken (the next writes at cache slot index + step).
  cache:      the `KVCache`.
  pending:    (B,) int32, each row's last token, not yet in the cache (fed at the next step).
  positions:  (B,) int32, the RoPE position of `pending`.
  running:    (B,) bool, the row is still decoding.
  stopped:    (B,) bool, the row ended on a stop token.
  wrote_text: (B,) bool, the row wrote a token that is not blank (for `LineStop`).
  counts:     (B,) int32, tokens generated per row.
  tokens:     (B, N) int32, generated tokens (0 after a row's count).
  logprobs:   (B, N) float32, their log-probs under the sampling distribution (0 likewise).
  """
  step: jax.Array
  cache: KVCache
  pending: jax.Array
  positions: jax.Array
  running: jax.Array
  stopped: jax.Array
  wrote_text: jax.Array
  counts: jax.Array
  tokens: jax.Array
  logprobs: jax.Array


@flax.struct.dataclass
class DecodeOutput:
  """What `decode` returns: the updated `cache`, tokens (B, N) int32, logprobs (B, N) float32,
  counts (B,) int32, stopped (B,) bool (as in `DecodeState`), and steps () int32 (cache slots
  used from `index`)."""
  cache: KVCache
  tokens: jax.Array
  logprobs: jax.Array
  counts: jax.Array
  stopped: jax.Array
  steps: jax.Array


def choose_tokens(policy: Policy, logits, temperature, top_p, keys, round_dtype):
  """Picks one token per row from float32 logits (B, V); returns (tokens, log-probs).

  The log-prob is that of the chosen token under the distribution sampled from: logits /
  temperature, restricted to the top-k and to the top-p nucleus. Greedy decoding reports the
  log-prob under the model's own (temperature 1) distribution. Greedy ties are broken like
  `gm.text.Sampler` does: argmax of the logits rounded to the model's compute dtype.
  """
  if policy.greedy:
    tokens = jnp.argmax(round_to(logits, round_dtype), axis=-1).astype(jnp.int32)
    z = logits
    top = jnp.max(z, axis=-1, keepdims=True)
    total = jnp.sum(jnp.exp(z - top), axis=-1)
  elif policy.top_k is not None:
    return _choose_within_top_k(policy, logits / temperature, top_p, keys)
  else:
    z = logits / temperature
    if policy.top_p:
      z = jnp.where(z < nucleus_threshold(z, top_p)[:, None], -jnp.inf, z)
    top = jnp.max(z, axis=-1, keepdims=True)
    weights = jnp.exp(z - top)                       # unnormalised probabilities
    total = jnp.sum(weights, axis=-1)
    tokens = inverse_cdf_sample(weights, jax.vmap(jax.random.uniform)(keys))
  # log p(token) = z[token] - logsumexp(z), without materialising log_softmax over V.
  chosen = jnp.take_along_axis(z, tokens[:, None], axis=-1)[:, 0]
  return tokens, chosen - top[:, 0] - jnp.log(total)


def _choose_within_top_k(policy: Policy, z, top_p, keys):
  """`choose_tokens` restricted to the k largest of z (B, V): one `top_k`, then everything else
  (the top-p nucleus, the draw, the log-prob) on (B, k) instead of V = 262k columns (at
  32 x 262k on a 2-core CPU: 45 ms instead of 80 ms per decode step). The k candidates are put
  back in vocabulary order, so a uniform picks the token the whole-vocabulary inverse CDF would
  (up to float summation order); ties at the k-th value keep the lower token ids (`lax.top_k`),
  exactly k tokens."""
  vals, ids = jax.lax.top_k(z, policy.top_k)                     # (B, k), descending
  if policy.top_p:
    vals = jnp.where(vals < nucleus_threshold(vals, top_p)[:, None], -jnp.inf, vals)
  ids, vals = jax.lax.sort((ids, vals), num_keys=1)              # vocabulary order
  top = jnp.max(vals, axis=-1, keepdims=True)
  weights = jnp.exp(vals - top)
  total = jnp.sum(weights, axis=-1)
  pick = inverse_cdf_sample(weights, jax.vmap(jax.random.uniform)(keys))
  tokens = jnp.take_along_axis(ids, pick[:, None], axis=-1)[:, 0].astype(jnp.int32)
  chosen = jnp.take_along_axis(vals, pick[:, None], axis=-1)[:, 0]
  return tokens, chosen - top[:, 0] - jnp.log(total)


def round_to(x, dtype):
  """float32 `x` rounded to `dtype`'s precision, kept in float32. bfloat16 by bit arithmetic
  (round to nearest even, as a convert does): on CPUs without native bf16 the convert costs
  4x as much, ~15 ms of each batch-32 decode step of the 270M."""
  if jnp.dtype(dtype) == jnp.float32:
    return x
  if jnp.dtype(dtype) != jnp.bfloat16:
    return x.astype(dtype).astype(jnp.float32)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  bits = (bits + jnp.uint32(0x7FFF) + ((bits >> 16) & jnp.uint32(1))) & jnp.uint32(0xFFFF0000)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def nucleus_threshold(z, top_p, iterations: int = 32):
  """Per row, the largest t such that the tokens with z >= t carry at least `top_p` of the
  probability: keeping them is top-p (nucleus) filtering. Bisection over t (a few dozen masked
  sums) instead of sorting the vocabulary, which costs seconds per step on CPU."""
  top = jnp.max(z, axis=-1)
  weights = jnp.exp(z - top[:, None])
  need = top_p * jnp.sum(weights, axis=-1)
  lo = jnp.min(jnp.where(jnp.isfinite(z), z, top[:, None]), axis=-1)   # mass(lo) = all
  hi = top

  def step(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    ok = jnp.sum(jnp.where(z >= mid[:, None], weights, 0.0), axis=-1) >= need
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)
  lo, _ = jax.lax.fori_loop(0, iterations, step, (lo, hi))
  return lo


def inverse_cdf_sample(weights, u, block: int = 512):
  """One draw per row from the distribution proportional to `weights` (B, V) >= 0, given
  uniforms u (B,) in [0, 1).

  Two-level inverse CDF (block sums, then within the chosen block): one uniform per row and a
  few cheap passes, instead of V Gumbel draws per row (which cost more than the whole
  unembedding on CPU)."""
  b, v = weights.shape
  nb = -(-v // block)
  probs = jnp.pad(weights, ((0, 0), (0, nb * block - v))).reshape(b, nb, block)
  mass = probs.sum(-1)                                           # (B, nb)
  cum = jnp.cumsum(mass, axis=-1)
  target = u * cum[:, -1]
  # First block whose cumulative mass exceeds the target (it has mass); rounding past the end
  # falls back to the last block with mass, and likewise within the block.
  chosen = jnp.sum(cum <= target[:, None], axis=-1)   # cum is non-decreasing
  last_nonempty = nb - 1 - jnp.argmax((mass > 0)[:, ::-1], axis=-1)
  chosen = jnp.minimum(chosen, last_nonempty)
  inner = jnp.take_along_axis(probs, chosen[:, None, None], axis=1)[:, 0]   # (B, block)
  before = jnp.take_along_axis(cum - mass, chosen[:, None], axis=1)[:, 0]
  inner_cum = before[:, None] + jnp.cumsum(inner, axis=-1)
  within = jnp.sum(inner_cum <= target[:, None], axis=-1)
  last_positive = block - 1 - jnp.argmax((inner > 0)[:, ::-1], axis=-1)
  within = jnp.minimum(within, last_positive)
  return (chosen * block + within).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("arch", "dtype", "mesh"), donate_argnames=("cache",))
def append(params, cache: KVCache, tokens, counts, start_pos, index, *, arch: fwd.Arch, dtype,
           mesh=None) -> KVCache:
  """Writes `counts[b]` tokens of row b (tokens (B, P), right-padded) into cache slots from
  `index`, at RoPE positions start_pos[b] + 0, 1, ...; marks them valid. Returns the cache."""
  params = prepare_params(arch, params, dtype)
  cache = _cache_constraint(cache, mesh)
  p = tokens.shape[1]
  capacity = cache.capacity
  rel = jnp.arange(capacity)[None, :] - index                       # (1, C)
  new = (rel >= 0) & (rel < counts[:, None])                         # (B, C)
  causal = rel[:, None, :] <= jnp.arange(p)[None, :, None]           # (1, P, C)
  mask = cache.valid[:, None, :] | (new[:, None, :] & causal)       # (B, P, C)
  positions = start_pos[:, None] + jnp.arange(p, dtype=jnp.int32)[None, :]
  _, cache = fwd.forward(arch, params, tokens, positions, cache, index, mask)
  return _cache_constraint(cache.replace(valid=cache.valid | new), mesh)


def live_row_buckets(batch: int, minimum: int) -> tuple[int, ...]:
  """The batch sizes `decode` goes down to as rows stop, smallest first: halves of `batch`
  (rounded up) down to 8 rows; () when `batch` < `minimum` (or `minimum` is 0).

  Why: a turn runs until its longest row stops, and a row that stopped costs as much as one
  that runs (its whole forward, the unembedding, its cache reads). In the demo's greedy eval
  (48 rows, 40-token budget) the median turn stops after ~20 tokens, so for the second half of
  the steps a handful of rows run. Levels stop at 8 rows: each level adds a copy of the loop
  to the compiled program, and at a few rows a CPU step is mostly reading the weights (not
  measured below 8)."""
  if not minimum or batch < minimum:
    return ()
  sizes, m = [], -(-batch // 2)
  while m >= 8:
    sizes.append(m)
    m = -(-m // 2)
  return tuple(reversed(sizes))


def _kv_rows(s: DecodeState, idx):
  """The K/V cache rows of batch rows `idx` (m,), kv head by kv head: row k * B + i in the plain
  layout (`KVCache.groups` 1, which is what an unsplit batch has)."""
  batch = s.running.shape[0]
  return (jnp.arange(_kv_heads(s.cache))[:, None] * batch + idx[None, :]).reshape(-1)


def _take_rows(s: DecodeState, idx, keys):
  """Rows `idx` (m,) of a decode state and its per-row keys: a state of m rows."""
  batch, kv = s.running.shape[0], _kv_rows(s, idx)
  take = lambda x: x if x.ndim == 0 else x[idx] if x.shape[0] == batch else x[kv]
  return jax.tree.map(take, s), keys[idx]


def _put_rows(s: DecodeState, sub: DecodeState, idx) -> DecodeState:
  """`s` with rows `idx` replaced by `sub`'s (`_take_rows`'s inverse), and sub's step."""
  batch, kv = s.running.shape[0], _kv_rows(s, idx)
  put = lambda x, y: (y if x.ndim == 0 else x.at[idx].set(y) if x.shape[0] == batch
                      else x.at[kv].set(y))
  return jax.tree.map(put, s, sub)


@functools.partial(
    jax.jit, static_argnames=("arch", "dtype", "policy", "buffer", "mesh", "live_rows"),
    donate_argnames=("cache",))
def decode(params, cache: KVCache, pending, positions, active, index, max_new, temperature, top_p,
           row_keys, stop_tokens, line_end, blank, *, arch: fwd.Arch, dtype, policy: Policy,
           buffer: int, mesh=None, live_rows: tuple[int, ...] = ()) -> DecodeOutput:
  """Autoregressive decoding until every active row hit a stop token or `max_new` tokens (or,
  with `policy.line_stop`, a `line_end` token after a token not in `blank`).

  pending (B,): each row's last context token, not yet in the cache (fed first); positions (B,):
  its RoPE position. Step s writes at slot index + s for every row (rows that are not running
  write a masked, invalid slot). Returns a `DecodeOutput` (the new cache, tokens and logprobs
  (B, buffer), counts and stopped (B,), steps: slots used).

  `live_rows` (`live_row_buckets`, ascending; K/V rows in the plain layout): once at most m of
  them are still running, the loop goes on with those rows alone, gathered into a batch of m
  (cache rows included; rows that stopped are not computed again), and puts them back at the
  end. A row's computation does not involve the others, but a smaller batch may round its
  matmuls differently (the 270M's 48-row turns: same tokens, log-probs within 3e-5).
  """
  if live_rows and cache.groups != 1:
    raise ValueError(f"live_rows needs the plain K/V row layout (groups 1), got {cache.groups}.")
  params = prepare_params(arch, params, dtype)
  batch = pending.shape[0]
  state = DecodeState(
      step=jnp.zeros((), jnp.int32),
      cache=_cache_constraint(cache, mesh),
      pending=pending, positions=positions, running=active,
      stopped=jnp.zeros((batch,), jnp.bool_),
      wrote_text=jnp.zeros((batch,), jnp.bool_),
      counts=jnp.zeros((batch,), jnp.int32),
      tokens=jnp.zeros((batch, buffer), jnp.int32),
      logprobs=jnp.zeros((batch, buffer), jnp.float32),
  )

  def cond(more_than):
    return lambda s: (s.step < max_new) & (jnp.sum(s.running, dtype=jnp.int32) > more_than)

  def make_body(row_keys):
    return lambda s: body(s, row_keys)

  def body(s: DecodeState, row_keys) -> DecodeState:
    step, running = s.step, s.running
    slot = index + step
    cache = s.cache.replace(
        valid=jax.lax.dynamic_update_slice(s.cache.valid, running[:, None], (0, slot)))
    hidden, cache = fwd.forward(arch, params, s.pending[:, None], s.positions[:, None],
                                cache, slot, cache.valid[:, None, :])
    logits = fwd.logits_from_hidden(arch, params, hidden[:, 0])
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)
    tokens, logprobs = choose_tokens(policy, logits, temperature, top_p, keys, dtype)
    is_stop = jnp.isin(tokens, stop_tokens)
    ends = is_stop
    if policy.line_stop:
      ends = ends | (jnp.isin(tokens, line_end) & s.wrote_text)
    wrote_text = s.wrote_text | (running & ~jnp.isin(tokens, blank))
    column = lambda buf, val: jax.lax.dynamic_update_slice(buf, val[:, None], (0, step))
    return DecodeState(
        step=step + 1,
        cache=_cache_constraint(cache, mesh),
        pending=jnp.where(running, tokens, s.pending),
        positions=s.positions + running,
        running=running & ~ends,
        stopped=s.stopped | (running & is_stop),
        wrote_text=wrote_text,
        counts=s.counts + running,
        tokens=column(s.tokens, jnp.where(running, tokens, 0)),
        logprobs=column(s.logprobs, jnp.where(running, logprobs, 0.0)),
    )

  levels = tuple(sorted(live_rows, reverse=True)) + (0,)
  s = jax.lax.while_loop(cond(levels[0]), make_body(row_keys), state)
  for m, below in zip(levels, levels[1:]):   # the running rows first, in row order
    idx = jnp.argsort(~s.running, stable=True)[:m]
    sub, keys = _take_rows(s, idx, row_keys)
    sub = jax.lax.while_loop(cond(below), make_body(keys), sub)
    s = _put_rows(s, sub, idx)
  return DecodeOutput(cache=s.cache, tokens=s.tokens, logprobs=s.logprobs, counts=s.counts,
                      stopped=s.stopped, steps=s.step)


@functools.partial(jax.jit, static_argnames=("capacity", "mesh"))
def resize(cache: KVCache, *, capacity: int, mesh=None) -> KVCache:
  """Grows (zero-pads) or shrinks the slot axis of a cache to `capacity` (a new buffer: shapes
  differ, so donating the old one would not help)."""
  def fit(x):
    c = x.shape[1]
    if capacity >= c:
      return jnp.pad(x, [(0, 0), (0, capacity - c)] + [(0, 0)] * (x.ndim - 2))
    return x[:, :capacity]
  return _cache_constraint(jax.tree.map(fit, cache), mesh)


@functools.partial(jax.jit, static_argnames=("batch", "mesh"))
def broadcast_row(cache: KVCache, *, batch: int, mesh=None) -> KVCache:
  """Row 0 of a cache repeated for `batch` rows (K/V rows in the mesh's `cache_groups` order):
  a prompt prefix shared by every row is prefilled once, then copied."""
  rows, groups, kv_heads = cache.valid.shape[0], rules.cache_groups(mesh, batch), _kv_heads(cache)
  b_src, k_src = fwd.rows_of(rows, kv_heads, cache.groups)
  row0 = np.nonzero(b_src == 0)[0]
  row0 = row0[np.argsort(k_src[row0])]                         # K/V rows of batch row 0, by head
  _, k_dst = fwd.rows_of(batch, kv_heads, groups)

  def tile(x):
    if x.shape[0] == rows:   # pos, valid: (B, C)
      return jnp.tile(x[:1], (batch,) + (1,) * (x.ndim - 1))
    return x[row0[k_dst]]
  return _cache_constraint(jax.tree.map(tile, cache).replace(groups=groups), mesh)


@functools.partial(jax.jit, static_argnames=("mesh",), donate_argnames=("cache",))
def compact(cache: KVCache, *, mesh=None) -> KVCache:
  """Moves each row's valid slots to the front (order kept): frees the padding slots that rows
  of different lengths leave behind. K/V carry their RoPE already, so slots can move."""
  order = jnp.argsort(~cache.valid, axis=1, stable=True)          # valid slots first
  rows = cache.valid.shape[0]
  batch_of_row, _ = fwd.rows_of(rows, _kv_heads(cache), cache.groups)

  def gather(x):
    idx = order if x.shape[0] == rows else order[batch_of_row]      # K/V: each row's batch row
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)
  return _cache_constraint(jax.tree.map(gather, cache), mesh)


def init_cache(arch: fwd.Arch, batch: int, capacity: int, dtype, mesh=None) -> KVCache:
  cache = fwd.init_cache(arch, batch, capacity, dtype, groups=rules.cache_groups(mesh, batch))
  if mesh is not None:
    cache = jax.device_put(cache, _cache_shardings(cache, mesh))
  return cache
