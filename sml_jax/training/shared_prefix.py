"""The trunk forward of a batch whose conversations share a prefix (`Batch.prefix_tokens`).

    h = shared_prefix.hidden_states(model, params, batch, suffix_mask, remat_policy, mesh)

Every conversation of an RL batch starts with the same instructions and demonstrations; the
loss reads none of their hidden states (`packing.shared_prefix_length`), only their keys and
values. So the P prefix tokens are forwarded once, at batch 1, through gemma's KV cache:

    prefix  tokens [1, P], positions 0..P-1, causal mask [1, P, P]  -> cache k, v [1, P, K, H]
    rows    cache k, v broadcast to [b, P + T, K, H] (slots P.. free, end_index P)
            suffix tokens [b, T] (positions P, P + 1, ... per segment), attention mask
            [b, T, P + T] = every prefix slot (for real tokens) | the suffix's own causal /
            segment mask  ->  h [b, T, D]

gemma writes the suffix's keys / values into slots P..P+T-1 and attends over all P + T; the
cache keeps each slot's position, so the sliding-window (local) layers mask by true positions
(a suffix token at position p sees prefix slots > p - window). The result equals the plain
forward of the whole conversations up to float reordering, and so do the gradients: the
broadcast's transpose sums the rows' cotangents of the prefix keys / values, which flow back
through the prefix forward into the params (full or LoRA). Per-layer remat wraps gemma's
`Block`, which passes the cache through; with a mesh the rows stay split over the batch axes
and the batch-1 prefix forward is replicated (it cannot be split over rows).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from sml_jax.parallel import rules
from sml_jax.training import remat


def _cache_dtype(params) -> jnp.dtype:
  """The dtype of the keys / values the trunk computes: that of its (compute-dtype) params."""
  return params["embedder"]["input_embedding"].dtype


def prefix_cache(model, params, prefix: jax.Array, remat_policy: str = "none", mesh=None):
  """prefix int32 [1, P] -> gemma's cache of its forward (per layer k, v [1, P, K, H],
  positions [1, P], end_index [1] = P)."""
  if prefix.ndim != 2 or prefix.shape[0] != 1:
    raise ValueError(f"prefix_cache: expected prefix tokens [1, P], got {prefix.shape}.")
  p = prefix.shape[1]
  activations = None
  if mesh is not None:   # Batch 1: replicated; each layer's weights are gathered as for rows.
    activations = NamedSharding(mesh, PartitionSpec())
    prefix = jax.lax.with_sharding_constraint(prefix, activations)
  cache = model.config.init_cache(batch_size=1, dtype=_cache_dtype(params), cache_length=p)
  out = remat.apply(model, remat_policy, {"params": params}, prefix,
                    positions=jnp.arange(p, dtype=jnp.int32)[None],
                    attention_mask=jnp.tril(jnp.ones((p, p), bool))[None], cache=cache,
                    activations=activations)
  return out.cache


def extend_cache(cache, rows: int, suffix_len: int, mesh=None):
  """The prefix's cache (batch 1, P slots; only its "k" and "v" are read) -> [rows,
  P + suffix_len] slots, the prefix's keys, values and positions in the first P of every row,
  the rest free (end_index P)."""
  out = {}
  for name, layer in cache.items():
    _, p, kv_heads, head_dim = layer["k"].shape
    free = jnp.zeros((rows, suffix_len, kv_heads, head_dim), layer["k"].dtype)
    out[name] = {
        "k": jnp.concatenate([jnp.broadcast_to(layer["k"], (rows,) + layer["k"].shape[1:]),
                              free], axis=1),
        "v": jnp.concatenate([jnp.broadcast_to(layer["v"], (rows,) + layer["v"].shape[1:]),
                              free], axis=1),
        "positions": jnp.concatenate(
            [jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (rows, p)),
             jnp.zeros((rows, suffix_len), jnp.int32)], axis=1),
        "end_index": jnp.full((rows,), p, jnp.int32),
    }
  if mesh is not None:
    out = jax.lax.with_sharding_constraint(out, rules.cache_shardings(out, mesh))
  return out


def suffix_attention_mask(input_mask: jax.Array, suffix_mask: jax.Array,
                          prefix_len: int) -> jax.Array:
  """input_mask bool [b, T], the suffix's own mask bool [b, T, T] -> [b, T, P + T]: real tokens
  see every prefix slot, then what the suffix mask allows."""
  b, t = input_mask.shape
  return jnp.concatenate([jnp.broadcast_to(input_mask[:, :, None], (b, t, prefix_len)),
                          suffix_mask], axis=2)


def prefix_kv(model, params, prefix: jax.Array, remat_policy: str = "none", mesh=None):
  """prefix int32 [1, P] -> its keys and values only, {layer: {"k", "v": [1, P, K, H]}}: the
  differentiable part of `prefix_cache` (`extend_cache` rebuilds positions and end index). The
  train step computes it once for all its micro-batches and back-propagates the micro-batches'
  summed cotangents through it once (`train_step._accumulate`)."""
  cache = prefix_cache(model, params, prefix, remat_policy, mesh)
  return {name: {"k": layer["k"], "v": layer["v"]} for name, layer in cache.items()}


def hidden_states(model, params, batch, suffix_mask: jax.Array, remat_policy: str = "none",
                  mesh=None, kv=None) -> jax.Array:
  """The trunk's final-norm output at the suffix tokens, h [b, T, D] (params in the compute
  dtype; batch: a `Batch` with `prefix_tokens` [b, P], the same in every row; suffix_mask
  bool [b, T, T] the rows' own causal / segment mask). kv: the prefix's `prefix_kv`, when the
  caller computed it already (else it is forwarded here)."""
  b, t = batch.tokens.shape
  p = batch.prefix_tokens.shape[1]
  if kv is None:
    kv = prefix_kv(model, params, batch.prefix_tokens[:1], remat_policy, mesh)
  cache = extend_cache(kv, b, t, mesh)
  activations = None if mesh is None else rules.batch_sharding(mesh, 3)
  out = remat.apply(model, remat_policy, {"params": params}, batch.tokens,
                    positions=batch.positions, cache=cache,
                    attention_mask=suffix_attention_mask(batch.input_mask, suffix_mask, p),
                    return_hidden_states=True, activations=activations)
  return out.hidden_states
