"""The one table of sharding rules: gemma params, KV caches and batches -> PartitionSpecs.

Rules match a param path (joined with '/') by regex, first match wins; each gives one mesh axis
(or None, or a tuple of axes) per array dim. An axis that does not divide its dim is dropped
(replicated; of a tuple, the trailing axes until the rest divides), so the same table serves the
270M on 8 CPU devices and the 27B on a pod slice.
"""

from __future__ import annotations

import re
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sml_jax.parallel.mesh import BATCH_AXES

# (path regex, spec per dim). Shapes are gemma's (E embed, H heads, K kv heads, D head dim,
# F mlp hidden, V vocab).
PARAM_RULES: tuple[tuple[str, tuple[Any, ...]], ...] = (
    (r"embedder/input_embedding$", ("tensor", "fsdp")),           # (V, E)
    (r"attn/q_einsum/w$", ("tensor", "fsdp", None)),               # (H, E, D)
    (r"attn/kv_einsum/w$", (None, "tensor", "fsdp", None)),        # (2, K, E, D)
    (r"attn/attn_vec_einsum/w$", ("tensor", None, "fsdp")),        # (H, D, E)
    (r"mlp/gating_einsum$", (None, "tensor", "fsdp")),             # (2, F, E)
    (r"mlp/linear$", ("tensor", "fsdp")),                          # (F, E)
    (r"lora", ()),                                                 # LoRA factors: small, replicated
    (r".*", ()),                                                   # norms, scalars: replicated
)
# KV caches. gemma's layout per layer: layer_i/{k, v} (B, L, K, D), end_index (B,), positions
# (B, L); the sampler's (`sampling/forward.KVCache`): layers/i/{keys, values} (B*K, C, D), pos
# and valid (B, C).
_SAMPLER_KV = r"(^|/)(keys|values)$"
CACHE_RULES: tuple[tuple[str, tuple[Any, ...]], ...] = (
    (r"(^|/)(k|v)(/\d+)?$", (BATCH_AXES, None, "tensor", None)),
    # The sampler's (B*K, C, D): rows grouped by data-parallel shard, then kv head
    # (`forward.KVCache.groups`), so this split gives each chip its rows' share of the heads.
    # (`cache_rules` drops `tensor` when it does not divide the kv heads.)
    (_SAMPLER_KV, ((*BATCH_AXES, "tensor"), None, None)),
    (r".*", (BATCH_AXES,)),
)

# The loss head (`training/logprobs.py`, vocab-parallel): E re-split over its vocab by every
# axis that splits the params, each token chunk's h gathered over those axes, logits split over
# the vocab; dh returns split like the batch. Names: (V, D) embedding, (C, V) logits, (C, D)
# hidden (gathered) and tokens (as the batch).
LOSS_HEAD_RULES: tuple[tuple[str, tuple[Any, ...]], ...] = (
    (r"^embedding$", (("tensor", "fsdp"), None)),
    (r"^logits$", ("data", ("tensor", "fsdp"))),
    (r"^hidden$", ("data", None)),
    (r"^tokens$", (BATCH_AXES, None)),
)


def _axis_size(mesh: Mesh, axis) -> int:
  if axis is None:
    return 1
  axes = axis if isinstance(axis, tuple) else (axis,)
  size = 1
  for a in axes:
    size *= mesh.shape[a]
  return size


def _fit(axis, dim: int, mesh: Mesh):
  """`axis` if its size divides `dim`; for a tuple of axes, its longest prefix that divides
  (e.g. the cache rows keep their batch split when `tensor` does not divide them); else None."""
  axes = axis if isinstance(axis, tuple) else (axis,)
  for n in range(len(axes), 0, -1):
    if dim % _axis_size(mesh, axes[:n]) == 0:
      return axes[:n] if isinstance(axis, tuple) else axis
  return None


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh, rules) -> P:
  for pattern, spec in rules:
    if re.search(pattern, path):
      spec = tuple(spec)[: len(shape)] + (None,) * max(0, len(shape) - len(spec))
      return P(*(_fit(a, dim, mesh) if a is not None else None for a, dim in zip(spec, shape)))
  return P()


def _path_str(path) -> str:
  """A pytree path as "a/b/0/c": dict keys, sequence indices and dataclass field names."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def tree_shardings(tree, mesh: Mesh, rules=PARAM_RULES):
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: NamedSharding(mesh, spec_for(_path_str(p), tuple(x.shape), mesh, rules)), tree)


def param_shardings(params, mesh: Mesh):
  return tree_shardings(params, mesh, PARAM_RULES)


def gathered_shardings(params, mesh: Mesh):
  """The layout a layer's weights are used in: the rules table's spec less the data-parallel axes
  (fsdp gathers a layer's weights while it runs; `tensor` keeps splitting them)."""
  def gathered(path, x):
    spec = spec_for(_path_str(path), tuple(x.shape), mesh, PARAM_RULES)
    keep = lambda a: tuple(n for n in (a if isinstance(a, tuple) else (a,)) if n not in BATCH_AXES)
    return NamedSharding(mesh, P(*((keep(a) or None) if a is not None else None for a in spec)))
  return jax.tree_util.tree_map_with_path(gathered, params)


def cache_groups(mesh: Mesh | None, batch: int) -> int:
  """G of the sampler's K/V row layout (`forward.KVCache.groups`) for `batch` rows: the number
  of data-parallel shards, so that `CACHE_RULES` split each shard's rows over `tensor` by head."""
  if mesh is None:
    return 1
  n = _axis_size(mesh, BATCH_AXES)
  return n if batch % n == 0 else 1


def cache_rules(mesh: Mesh, kv_heads: int | None = None):
  """`CACHE_RULES`, less the sampler rows' `tensor` split when `tensor` is 1 (the same
  placement, annotated as before) or does not divide the kv heads (a 1-kv-head model's rows
  would then split its batch over `tensor` against the head-split queries, and XLA would
  regather the cache at every step)."""
  tp = mesh.shape["tensor"]
  if kv_heads is None or (tp > 1 and kv_heads % tp == 0):
    return CACHE_RULES
  return tuple((p, (BATCH_AXES, None, None)) if p == _SAMPLER_KV else (p, s)
               for p, s in CACHE_RULES)


def cache_shardings(cache, mesh: Mesh, kv_heads: int | None = None):
  """Shardings of a KV cache: gemma's, or the sampler's with its `kv_heads` (see `cache_rules`)."""
  return tree_shardings(cache, mesh, cache_rules(mesh, kv_heads))


def loss_head_shardings(mesh: Mesh, vocab: int, embed: int, chunk: int) -> dict[str, NamedSharding]:
  """name -> NamedSharding of the loss head's arrays (`LOSS_HEAD_RULES`) for a [V, D] embedding
  and chunks of `chunk` tokens."""
  shapes = {"embedding": (vocab, embed), "logits": (chunk, vocab), "hidden": (chunk, embed),
            "tokens": (chunk, embed)}
  return {k: NamedSharding(mesh, spec_for(k, s, mesh, LOSS_HEAD_RULES)) for k, s in shapes.items()}


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) dim split over the data-parallel axes; the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def shard_params(params, mesh: Mesh):
  return jax.device_put(params, param_shardings(params, mesh))
