"""A Gemma 3 text forward pass over `gm.nn.Transformer` params, written for fast decoding.

It follows the gemma library's math op for op (`gemma/gm/nn/_modules.py`: RMSNorm as
`x * rsqrt(mean(x^2) + 1e-6) * (1 + scale)`, RoPE, QK-norm, GQA, sliding windows, GELU-gated MLP)
so greedy tokens match `gm.text.Sampler`, but it owns the KV cache layout:

    cache = KVCache(layers=(LayerCache(keys, values), ...), pos, valid)   # see `KVCache`

One write pointer `index` (a scalar, shared by all rows) says where the next T tokens go; the
per-row `valid` mask says which slots hold real context (rows of different lengths leave padding
slots behind, which stay invalid). Positions are per row (RoPE positions ignore padding).
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

K_MASK = -2.3819763e38  # gemma's masked attention logit.


@dataclasses.dataclass(frozen=True)
class Arch:
  """The static facts of a Gemma 3 text config the forward pass needs (hashable, jit-static)."""
  num_layers: int
  embed_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  local: tuple[bool, ...]           # per layer: sliding-window (local) attention?
  rope_base: tuple[int, ...]        # per layer RoPE base frequency
  rope_scale: tuple[float, ...]     # per layer RoPE scale factor
  sliding_window: int | None
  query_scale: float
  attn_softcap: float | None
  final_softcap: float | None
  use_qk_norm: bool
  use_post_attn_norm: bool
  use_post_ffw_norm: bool
  transpose_gating: bool
  vocab_size: int

  @classmethod
  def from_model(cls, model) -> "Arch":
    from gemma.gm.nn import _modules  # pylint: disable=g-import-not-at-top
    model = getattr(model, "model", model)  # gm.nn.LoRA wraps the transformer.
    c = model.config
    types = tuple(c.attention_types)[: c.num_layers]
    local = tuple(t == _modules.AttentionType.LOCAL_SLIDING for t in types)
    return cls(
        num_layers=c.num_layers, embed_dim=c.embed_dim, num_heads=c.num_heads,
        num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, local=local,
        rope_base=tuple(c.local_base_frequency if l else c.global_base_frequency for l in local),
        rope_scale=tuple(float(c.local_scale_factor if l else c.global_scale_factor)
                         for l in local),
        sliding_window=c.sliding_window_size, query_scale=float(c.query_pre_attn_scalar()),
        attn_softcap=c.attn_logits_soft_cap, final_softcap=c.final_logit_softcap,
        use_qk_norm=c.use_qk_norm, use_post_attn_norm=c.use_post_attn_norm,
        use_post_ffw_norm=c.use_post_ffw_norm, transpose_gating=c.transpose_gating_einsum,
        vocab_size=c.num_embed)


def rms_norm(x, scale):
  var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
  normed = x * jax.lax.rsqrt(var + 1e-06)
  return normed * (1 + scale)


def apply_rope(x, positions, *, base_frequency: int, scale_factor: float = 1.0):
  """gemma's `apply_rope` (x: B T N H, positions: B T)."""
  head_dim = x.shape[-1]
  freq_exponents = (2.0 / head_dim) * jnp.arange(0, head_dim // 2, dtype=jnp.float32)
  timescale = base_frequency**freq_exponents
  sinusoid = positions[..., None] / timescale[None, None, :]
  sinusoid = sinusoid[..., None, :] / scale_factor
  sin, cos = jnp.sin(sinusoid), jnp.cos(sinusoid)
  first, second = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return out.astype(x.dtype)


@flax.struct.dataclass
class LayerCache:
  """One attention layer's K/V for B rows and C slots (K kv heads, D head dim).

  keys, values: (B*K, C, D) in the cache dtype, rows in `KVCache.groups` order (`rows_of`): one
  leading batch dim keeps both attention products plain batched matmuls, see `_attention`.
  """
  keys: jax.Array
  values: jax.Array


@flax.struct.dataclass
class KVCache:
  """The sampler's KV cache (a pytree: jit arguments, donation and sharding rules see its leaves
  as `layers/{i}/keys`, `layers/{i}/values`, `pos`, `valid`).

  layers: one `LayerCache` per layer, (B*K, C, D) each.
  pos:    (B, C) int32, the RoPE position of the token in each slot.
  valid:  (B, C) bool, the slot holds real context (padding slots and dropped tails are False).
  groups: G (static), how many blocks of batch rows the K/V rows are laid out in: row
          (g*K + k) * (B/G) + i holds kv head k of batch row g*(B/G) + i. The sampler sets G to
          the mesh's data-parallel size, so splitting the rows over (data, fsdp, tensor) gives
          each chip its batch block's share of the kv heads (`rules.cache_rules`); with one kv
          head, or G = B, rows are b*K + k.
  """
  layers: tuple[LayerCache, ...]
  pos: jax.Array
  valid: jax.Array
  groups: int = flax.struct.field(pytree_node=False, default=1)

  @property
  def capacity(self) -> int:
    """C, the slots per row."""
    return int(self.valid.shape[1])


def init_cache(arch: Arch, batch: int, capacity: int, dtype, groups: int = 1) -> KVCache:
  """An empty cache for `batch` rows of `capacity` slots (K/V in `dtype`), K/V rows in `groups`
  blocks of batch rows (see `KVCache`; `groups` must divide `batch`)."""
  if batch % groups:
    raise ValueError(f"groups={groups} must divide the batch ({batch}).")
  shape = (batch * arch.num_kv_heads, capacity, arch.head_dim)
  return KVCache(
      layers=tuple(LayerCache(keys=jnp.zeros(shape, dtype), values=jnp.zeros(shape, dtype))
                   for _ in range(arch.num_layers)),
      pos=jnp.zeros((batch, capacity), jnp.int32),
      valid=jnp.zeros((batch, capacity), jnp.bool_), groups=groups)


def rows_of(batch: int, kv_heads: int, groups: int):
  """(batch row, kv head) of every K/V cache row: two (B*K,) int numpy arrays (see `KVCache`)."""
  g, k, i = np.meshgrid(np.arange(groups), np.arange(kv_heads), np.arange(batch // groups),
                        indexing="ij")
  return (g * (batch // groups) + i).reshape(-1), k.reshape(-1)


def to_rows(x, groups: int):
  """(B, K, ...) -> (B*K, ...) in the cache's row order (`KVCache.groups`)."""
  b, k = x.shape[:2]
  if k == 1 or groups == b:   # rows b*K + k: a plain reshape (the program as before the groups)
    return x.reshape(b * k, *x.shape[2:])
  x = x.reshape(groups, b // groups, k, *x.shape[2:])
  return jnp.swapaxes(x, 1, 2).reshape(b * k, *x.shape[3:])


def from_rows(x, batch: int, groups: int):
  """(B*K, ...) in the cache's row order -> (B, K, ...); inverse of `to_rows`."""
  k = x.shape[0] // batch
  if k == 1 or groups == batch:
    return x.reshape(batch, k, *x.shape[1:])
  x = x.reshape(groups, k, batch // groups, *x.shape[1:])
  return jnp.swapaxes(x, 1, 2).reshape(batch, k, *x.shape[3:])


def decode_layout(arch: Arch, params):
  """gemma params -> the matmul layout the forward pass uses: every projection a 2-D matrix,
  used as `x @ w.T` ("t", (out, in)) or `x @ w` ("n", (in, out)).

  Only q and kv (small) are transposed; the MLP and output projections are free reshapes of
  gemma's arrays. Done once per call, outside the decode loop; values are unchanged.
  """
  n, k, h, e = arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.embed_dim
  out = {"embedder": params["embedder"], "final_norm": params["final_norm"]}
  for i in range(arch.num_layers):
    p = params[f"layer_{i}"]
    attn, mlp = p["attn"], p["mlp"]
    if arch.transpose_gating:                  # (2, F, E) -> (2F, E), used as x @ w.T
      gating = ("t", mlp["gating_einsum"].reshape(-1, e))
    else:                                       # (2, E, F) -> (E, 2F), used as x @ w
      gating = ("n", jnp.transpose(mlp["gating_einsum"], (1, 0, 2)).reshape(e, -1))
    layer = {
        "wq": jnp.transpose(attn["q_einsum"]["w"], (1, 0, 2)).reshape(e, n * h),      # n
        "wkv": jnp.transpose(attn["kv_einsum"]["w"], (2, 0, 1, 3)).reshape(e, -1),   # n
        "wo": attn["attn_vec_einsum"]["w"].reshape(n * h, e),                          # n
        "wg": gating[1],
        "wl": mlp["linear"],                                                           # n
    }
    for name in ("pre_attention_norm", "post_attention_norm", "pre_ffw_norm", "post_ffw_norm"):
      if name in p:
        layer[name] = p[name]["scale"]
    if arch.use_qk_norm:
      layer["q_norm"] = attn["_query_norm"]["scale"]
      layer["k_norm"] = attn["_key_norm"]["scale"]
    out[f"layer_{i}"] = layer
  return out


def project(x, w):
  """x @ w for a weight stored (in, out)."""
  return jnp.einsum("...i,io->...o", x, w)


def project_t(x, w):
  """x @ w.T for a weight stored (out, in)."""
  return jnp.einsum("...i,oi->...o", x, w)


def _attention(arch: Arch, i: int, p, x, positions, k_cache, v_cache, cache_pos, mask, index,
               groups: int = 1):
  """One attention layer: writes this step's K/V at slot `index`, attends over the cache.

  Cache (B*K, C, H): one leading batch dim (rows in `groups` order, see `KVCache`), so both
  attention products are plain batched matmuls over the cache as stored. (A 4-D (B, K, C, H)
  cache makes XLA:CPU copy every cache array several times per decode step; 3-D it is updated
  in place.) Only this step's q, k, v, logits and outputs are reordered, never the cache."""
  b, t, _ = x.shape
  nh, kh, hd = arch.num_heads, arch.num_kv_heads, arch.head_dim
  g = nh // kh
  q = project(x, p["wq"]).reshape(b, t, nh, hd)
  kv = project(x, p["wkv"]).reshape(b, t, 2, kh, hd)
  k, v = kv[:, :, 0], kv[:, :, 1]
  if arch.use_qk_norm:
    q = rms_norm(q, p["q_norm"])
    k = rms_norm(k, p["k_norm"])
  q = apply_rope(q, positions, base_frequency=arch.rope_base[i], scale_factor=arch.rope_scale[i])
  q = q * arch.query_scale
  k = apply_rope(k, positions, base_frequency=arch.rope_base[i], scale_factor=arch.rope_scale[i])
  k = to_rows(jnp.swapaxes(k, 1, 2), groups).astype(k_cache.dtype)   # (B*K, T, H)
  v = to_rows(jnp.swapaxes(v, 1, 2), groups).astype(v_cache.dtype)
  k_cache = jax.lax.dynamic_update_slice(k_cache, k, (0, index, 0))
  v_cache = jax.lax.dynamic_update_slice(v_cache, v, (0, index, 0))
  q = to_rows(q.reshape(b, t, kh, g, hd).transpose(0, 2, 1, 3, 4).reshape(b, kh, t * g, hd),
              groups)
  # A cache stored narrower than the compute dtype (bf16 under f32) is read back in it.
  logits = jnp.einsum("xqh,xsh->xqs", q, k_cache.astype(x.dtype))
  logits = from_rows(logits, b, groups).reshape(b, kh, t, g, -1)
  if arch.attn_softcap is not None:
    logits = jnp.tanh(logits / arch.attn_softcap) * arch.attn_softcap
  if arch.local[i]:
    w = arch.sliding_window
    qpos = positions[:, :, None]
    kpos = cache_pos[:, None, :]
    mask = mask & (kpos > qpos - w) & (kpos < qpos + w)
  logits = jnp.where(mask[:, None, :, None, :], logits, K_MASK)
  probs = to_rows(jax.nn.softmax(logits, axis=-1).astype(x.dtype).reshape(b, kh, t * g, -1),
                  groups)
  enc = jnp.einsum("xqs,xsh->xqh", probs, v_cache.astype(x.dtype))
  enc = from_rows(enc, b, groups).reshape(b, kh, t, g, hd)
  enc = enc.transpose(0, 2, 1, 3, 4).reshape(b, t, nh * hd)
  return project(enc, p["wo"]), k_cache, v_cache


def gate_projection(arch: Arch, p, x):
  """The MLP's fused gating matmul: (..., D) -> (..., 2F), in the layout `decode_layout` chose."""
  return project_t(x, p["wg"]) if arch.transpose_gating else project(x, p["wg"])


def _mlp(arch: Arch, p, x):
  gate = gate_projection(arch, p, x)
  gate = gate.reshape(gate.shape[:-1] + (2, -1))
  act = jax.nn.gelu(gate[..., 0, :]) * gate[..., 1, :]
  return project(act, p["wl"])


def forward(arch: Arch, params, tokens, positions, cache: KVCache, index, mask):
  """Runs T new tokens per row through the model, writing their K/V at slots [index, index+T).

  params: in `decode_layout`. tokens, positions: (B, T) int32; mask: (B, T, C) bool, which cache
  slots each query may see (already including the new slots). Returns (final-normed hidden
  states (B, T, D), new cache).
  """
  emb = params["embedder"]["input_embedding"]
  x = emb[(tokens,)]
  x = x * jnp.sqrt(arch.embed_dim).astype(x.dtype)
  cache_pos = jax.lax.dynamic_update_slice(cache.pos, positions.astype(jnp.int32), (0, index))
  layers = []
  for i in range(arch.num_layers):
    p = params[f"layer_{i}"]
    h = rms_norm(x, p["pre_attention_norm"])
    a, k_i, v_i = _attention(arch, i, p, h, positions, cache.layers[i].keys,
                             cache.layers[i].values, cache_pos, mask, index, cache.groups)
    layers.append(LayerCache(keys=k_i, values=v_i))
    if arch.use_post_attn_norm:
      a = rms_norm(a, p["post_attention_norm"])
    a = a + x
    h = rms_norm(a, p["pre_ffw_norm"])
    h = _mlp(arch, p, h)
    if arch.use_post_ffw_norm:
      h = rms_norm(h, p["post_ffw_norm"])
    x = h + a
  x = rms_norm(x, params["final_norm"]["scale"])
  return x, cache.replace(layers=tuple(layers), pos=cache_pos)


def logits_from_hidden(arch: Arch, params, h):
  """Unembedding in float32 accumulation: (..., D) -> (..., V) float32."""
  emb = params["embedder"]["input_embedding"]
  logits = jnp.einsum("...d,vd->...v", h, emb, preferred_element_type=jnp.float32)
  if arch.final_softcap is not None:
    logits = jnp.tanh(logits / arch.final_softcap) * arch.final_softcap
  return logits


# The einsum each gemma weight is used in (to fold LoRA factors back into it).
_EINSUMS = {
    "q_einsum": "BTD,NDH->BTNH", "kv_einsum": "BSD,CKDH->CBSKH",
    "attn_vec_einsum": "BTNH,NHD->BTD", "linear": "...H,HF->...F",
}


def merge_lora(arch: Arch, params):
  """`gm.nn.LoRA` params -> plain transformer params with `w + a @ b` folded in (jit-friendly).

  Plain params pass through unchanged.
  """
  from gemma.peft import _einsum_utils  # pylint: disable=g-import-not-at-top

  def fold(name, w, lora):
    if name == "gating_einsum":
      eq = "...F,NHF->...NH" if arch.transpose_gating else "...F,NFH->...NH"
    else:
      eq = _EINSUMS[name]
    a, b = lora["a"], lora["b"]
    lora_eq, _, _ = _einsum_utils.get_lora_einsum_str_and_shapes(
        einsum_str=eq, weights_shape=w.shape, rank=a.shape[-1])
    _, a_str, rest = lora_eq.split(",")
    b_str, _ = rest.split("->")
    weights = eq.split(",")[1].split("->")[0]
    delta = jnp.einsum(f"{a_str},{b_str}->{weights}", a.astype(jnp.float32),
                       b.astype(jnp.float32))
    return (w.astype(jnp.float32) + delta).astype(w.dtype)

  def walk(tree, name=None):
    if not isinstance(tree, dict):
      return tree
    out = {k: walk(v, k) for k, v in tree.items() if not k.startswith("_LoRAEinsum")}
    for key, value in tree.items():
      if key == "_LoRAEinsum_0":              # attention: the module's own `w`
        out["w"] = fold(name, tree["w"], value["lora"])
      elif key.startswith("_LoRAEinsum_"):    # mlp: weights stored beside the adapter
        weight = key[len("_LoRAEinsum_"):]
        out[weight] = fold(weight, tree[weight], value["lora"])
    return out

  return walk(params) if _has_lora(params) else params


def _has_lora(tree) -> bool:
  if isinstance(tree, dict):
    return any(k.startswith("_LoRAEinsum") or _has_lora(v) for k, v in tree.items())
  return False
