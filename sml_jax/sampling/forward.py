"""A Gemma 3 text forward pass over `gm.nn.Transformer` params, written for fast decoding.

It follows the gemma library's math op for op (`gemma/gm/nn/_modules.py`: RMSNorm as
`x * rsqrt(mean(x^2) + 1e-6) * (1 + scale)`, RoPE, QK-norm, GQA, sliding windows, GELU-gated MLP)
so greedy tokens match `gm.text.Sampler`, but it owns the KV cache layout:

    cache = {"layer_i": {"k": (B, C, K, D), "v": (B, C, K, D)} for each layer i,
             "pos": (B, C) int32 RoPE position of each slot, "valid": (B, C) bool}

One write pointer `index` (a scalar, shared by all rows) says where the next T tokens go; the
per-row `valid` mask says which slots hold real context (rows of different lengths leave padding
slots behind, which stay invalid). Positions are per row (RoPE positions ignore padding).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

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


def init_cache(arch: Arch, batch: int, capacity: int, dtype) -> dict[str, Any]:
  shape = (batch, capacity, arch.num_kv_heads, arch.head_dim)
  cache = {f"layer_{i}": {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
           for i in range(arch.num_layers)}
  return {
      **cache,
      "pos": jnp.zeros((batch, capacity), jnp.int32),
      "valid": jnp.zeros((batch, capacity), jnp.bool_),
  }


def _attention(arch: Arch, i: int, p, x, positions, k_cache, v_cache, cache_pos, mask, index):
  """One attention layer: writes this step's K/V at `index`, attends over the cache."""
  b, t, _ = x.shape
  q = jnp.einsum("BTD,NDH->BTNH", x, p["q_einsum"]["w"])
  k, v = jnp.einsum("BSD,CKDH->CBSKH", x, p["kv_einsum"]["w"])
  if arch.use_qk_norm:
    q = rms_norm(q, p["_query_norm"]["scale"])
    k = rms_norm(k, p["_key_norm"]["scale"])
  q = apply_rope(q, positions, base_frequency=arch.rope_base[i], scale_factor=arch.rope_scale[i])
  q = q * arch.query_scale
  k = apply_rope(k, positions, base_frequency=arch.rope_base[i], scale_factor=arch.rope_scale[i])
  k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0))
  v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
  kh = arch.num_kv_heads
  qg = q.reshape(b, t, kh, arch.num_heads // kh, arch.head_dim)
  logits = jnp.einsum("BTKGH,BSKH->BTKGS", qg, k_cache)
  logits = logits.reshape(b, t, arch.num_heads, -1)
  if arch.attn_softcap is not None:
    logits = jnp.tanh(logits / arch.attn_softcap) * arch.attn_softcap
  if arch.local[i]:
    w = arch.sliding_window
    qpos = positions[:, :, None]
    kpos = cache_pos[:, None, :]
    mask = mask & (kpos > qpos - w) & (kpos < qpos + w)
  logits = jnp.where(mask[:, :, None, :], logits, K_MASK)
  probs = jax.nn.softmax(logits, axis=-1).astype(k_cache.dtype)
  probs = probs.reshape(b, t, kh, arch.num_heads // kh, -1)
  enc = jnp.einsum("BTKGS,BSKH->BTKGH", probs, v_cache).reshape(b, t, arch.num_heads, -1)
  out = jnp.einsum("BTNH,NHD->BTD", enc, p["attn_vec_einsum"]["w"])
  return out, k_cache, v_cache


def _mlp(arch: Arch, p, x):
  eq = "...F,NHF->...NH" if arch.transpose_gating else "...F,NFH->...NH"
  gate = jnp.einsum(eq, x, p["gating_einsum"])
  act = jax.nn.gelu(gate[..., 0, :]) * gate[..., 1, :]
  return jnp.einsum("...H,HF->...F", act, p["linear"])


def forward(arch: Arch, params, tokens, positions, cache, index, mask):
  """Runs T new tokens per row through the model, writing their K/V at slots [index, index+T).

  tokens, positions: (B, T) int32; mask: (B, T, C) bool, which cache slots each query may see
  (already including the new slots). Returns (final-normed hidden states (B, T, D), new cache).
  """
  emb = params["embedder"]["input_embedding"]
  x = emb[(tokens,)]
  x = x * jnp.sqrt(arch.embed_dim).astype(x.dtype)
  cache_pos = jax.lax.dynamic_update_slice(cache["pos"], positions.astype(jnp.int32), (0, index))
  new_cache = dict(cache, pos=cache_pos)
  for i in range(arch.num_layers):
    name = f"layer_{i}"
    p = params[name]
    h = rms_norm(x, p["pre_attention_norm"]["scale"])
    a, k_i, v_i = _attention(arch, i, p["attn"], h, positions, cache[name]["k"],
                             cache[name]["v"], cache_pos, mask, index)
    new_cache[name] = {"k": k_i, "v": v_i}
    if arch.use_post_attn_norm:
      a = rms_norm(a, p["post_attention_norm"]["scale"])
    a = a + x
    h = rms_norm(a, p["pre_ffw_norm"]["scale"])
    h = _mlp(arch, p["mlp"], h)
    if arch.use_post_ffw_norm:
      h = rms_norm(h, p["post_ffw_norm"]["scale"])
    x = h + a
  x = rms_norm(x, params["final_norm"]["scale"])
  return x, new_cache


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
