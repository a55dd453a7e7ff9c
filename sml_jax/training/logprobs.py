"""Token log-probs through the 262k-word unembedding without materialising [N, V] logits.

The unembedding dominates a Gemma 3 270M train step (168M of its 268M parameters are the tied
embedding table). Two functions, both chunked over tokens so memory stays at [chunk, V]:

  token_logprobs(h, E, targets)                    -> logp [N]         (forward only)
  fused_token_loss(loss_fn, h, E, targets, aux)    -> (sum_n loss_n, logp [N])

`fused_token_loss` is differentiable in `h` and `E`: because `loss_fn` is elementwise in the
token log-prob, its derivative per token is known in the forward pass, so each chunk computes its
gradient contributions right after its logits (the "fused linear cross-entropy" trick):

    logits  u = h E^T                 [C, V]   (bf16 inputs, f32 accumulation)
    logp_n  = z_n[y_n] - logsumexp(z_n),  z = softcap(u)
    g_n     = d loss_n / d logp_n     (jax.grad of the elementwise loss)
    G       = g (onehot(y) - softmax(z)) * softcap'(u)     [C, V]
    dh      = G E                     [C, D]
    dE     += G^T h                   [V, D]   (skipped when E is not differentiated, e.g. LoRA)

so a step costs 3 unembedding matmuls (2 for LoRA) and never stores [N, V] (no recompute either).
The `logp` output carries no gradient (it is for metrics). The einsums keep E as [V, D]:
`einsum('cd,vd->cv')` with f32 accumulation is much faster on CPU than `h @ E.T` in bf16.

Shapes: h [N, D], E [V, D], targets int32 [N], aux: a pytree of [N] arrays.

On a mesh (`layout`, from `rules.loss_head_layout`) the head runs vocab-parallel: E is
re-split over its vocab (bf16, an all-to-all of 1/devices of the table), each chunk's h is
gathered over those devices ([C, D], small), so every device computes the logits of the whole
chunk for its slice of the vocabulary and its slice of dE. Left to GSPMD, E stays split over D
(the fsdp layout): every device then gathers the whole table and sums a full [V, D] f32 dE
contribution per chunk across devices (3 x 4 GiB per device and an all-reduce of 4 GiB per
chunk at 12B).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
# Tokens per unembedding chunk: [chunk, V] f32 logits live at once (512 x 262k = 0.5 GiB).
DEFAULT_CHUNK_SIZE = 512


@dataclasses.dataclass(frozen=True)
class Layout:
  """Shardings of the loss head's arrays on a mesh (see the module docstring)."""
  embedding: Any      # E [V, D] (and dE): vocab split
  hidden: Any         # a chunk's h [C, D], gathered over the vocab-split devices
  logits: Any         # a chunk's logits [C, V]
  tokens: Any         # a chunk's h / dh [C, D] split like the batch


def _put(x: Array, sharding) -> Array:
  return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def _softcap(u: Array, cap: float | None) -> Array:
  return u if cap is None else jnp.tanh(u / cap) * cap


def num_chunks(n: int, chunk_size: int) -> int:
  """The smallest count >= n / chunk_size that divides n (so no padding), unless that makes
  chunks less than half `chunk_size` long (then chunks are padded)."""
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
  k = max(1, -(-n // chunk_size))
  for cand in range(k, 2 * k + 1):
    if n % cand == 0:
      return cand
  return k


def _chunked(x: Array, k: int) -> Array:
  """[N, ...] -> [k, ceil(N / k), ...], *strided*: chunk i holds rows i, i + k, i + 2k, ...

  Strided so that a batch sharded over devices along N stays sharded inside every chunk (a
  contiguous split would put each chunk on one device). Zero-pads N up to a multiple of k.
  """
  n = x.shape[0]
  pad = (-n) % k
  if pad:
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape((n + pad) // k, k, *x.shape[1:]).swapaxes(0, 1)


def _unchunked(x: Array, n: int) -> Array:
  return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])[:n]


def _chunk_logits(h: Array, emb: Array, cap: float | None,
                  layout: Layout | None = None) -> tuple[Array, Array]:
  """h [C, D], emb [V, D] -> (pre-softcap logits u [C, V] f32, logits z [C, V] f32)."""
  if layout is not None:
    h = _put(h, layout.hidden)
  u = jnp.einsum("cd,vd->cv", h, emb, preferred_element_type=jnp.float32)
  u = _put(u, layout and layout.logits)
  return u, _softcap(u, cap)


def _target_logprob(z: Array, targets: Array) -> tuple[Array, Array]:
  """z [C, V] f32 -> (logp of targets [C], logsumexp [C])."""
  lse = jax.nn.logsumexp(z, axis=-1)
  z_target = jnp.take_along_axis(z, targets[:, None], axis=-1)[:, 0]
  return z_target - lse, lse


def token_logprobs(h: Array, emb: Array, targets: Array, *, chunk_size: int = 512,
                   softcap: float | None = None, compute_dtype=jnp.bfloat16,
                   layout: Layout | None = None) -> Array:
  """log p(targets_n | h_n) with logits = softcap(h E^T)  (h [N, D], E [V, D], targets [N] -> [N])."""
  n = h.shape[0]
  emb = _put(emb.astype(compute_dtype), layout and layout.embedding)

  def one_chunk(args):
    hc, tc = args
    _, z = _chunk_logits(hc.astype(compute_dtype), emb, softcap, layout)
    return _target_logprob(z, tc)[0]

  k = num_chunks(n, chunk_size)
  out = jax.lax.map(one_chunk, (_chunked(h, k), _chunked(targets, k)))
  return _unchunked(out, n)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5, 6, 7, 8))
def _fused(loss_fn, h, emb, targets, aux, chunk_size, softcap, compute_dtype, layout):
  logp = token_logprobs(h, emb, targets, chunk_size=chunk_size, softcap=softcap,
                        compute_dtype=compute_dtype, layout=layout)
  return loss_fn(logp, aux).sum(), logp


def _fused_fwd(loss_fn, h, emb, targets, aux, chunk_size, softcap, compute_dtype, layout):
  # symbolic_zeros=True: primals arrive as CustomVJPPrimal(value, perturbed).
  need_dh, need_de = h.perturbed, emb.perturbed
  h, emb, targets, aux = h.value, emb.value, targets.value, jax.tree.map(lambda a: a.value, aux)
  n, vocab = h.shape[0], emb.shape[0]
  emb_c = _put(emb.astype(compute_dtype), layout and layout.embedding)

  def one_chunk(de_acc, args):
    hc, tc, ac = args
    hc = hc.astype(compute_dtype)
    if layout is not None:
      hc = _put(hc, layout.hidden)
    u, z = _chunk_logits(hc, emb_c, softcap, layout)
    logp, lse = _target_logprob(z, tc)
    loss, vjp = jax.vjp(lambda lp: loss_fn(lp, ac), logp)
    (g,) = vjp(jnp.ones_like(loss))                                     # d loss_n / d logp_n
    # d logp_n / d z = onehot(y_n) - softmax(z_n); chain through the softcap.
    onehot = jnp.arange(vocab, dtype=tc.dtype)[None, :] == tc[:, None]  # Fused, never stored.
    grad_z = (onehot - jnp.exp(z - lse[:, None])) * g[:, None]
    if softcap is not None:
      grad_z = grad_z * (1.0 - jnp.square(z / softcap))
    grad_u = grad_z.astype(compute_dtype)
    dh = (jnp.einsum("cv,vd->cd", grad_u, emb_c, preferred_element_type=jnp.float32)
          if need_dh else jnp.zeros(hc.shape, jnp.float32))
    dh = _put(dh, layout and layout.tokens)
    if need_de:
      de_acc = _put(de_acc + jnp.einsum("cv,cd->vd", grad_u, hc,
                                        preferred_element_type=jnp.float32),
                    layout and layout.embedding)
    return de_acc, (loss.sum(), logp, dh)

  de0 = jnp.zeros((vocab, emb.shape[1]) if need_de else (), jnp.float32)
  if need_de:
    de0 = _put(de0, layout and layout.embedding)
  k = num_chunks(n, chunk_size)
  chunks = (_chunked(h, k), _chunked(targets, k), jax.tree.map(lambda a: _chunked(a, k), aux))
  de, (losses, logp, dh) = jax.lax.scan(one_chunk, de0, chunks)
  logp, dh = _unchunked(logp, n), _unchunked(dh, n).astype(h.dtype)
  de = de.astype(emb.dtype) if need_de else None
  return (losses.sum(), logp), (dh if need_dh else None, de, targets, aux)


def _fused_bwd(loss_fn, chunk_size, softcap, compute_dtype, layout, res, cotangents):
  del loss_fn, chunk_size, softcap, compute_dtype, layout
  dh, de, _, aux = res
  g_loss = cotangents[0]  # The logp output is for metrics: its cotangent is ignored.
  if isinstance(g_loss, jax.custom_derivatives.SymbolicZero):
    return None, None, None, jax.tree.map(lambda _: None, aux)
  scale = lambda x: None if x is None else (x * g_loss).astype(x.dtype)
  return scale(dh), scale(de), None, jax.tree.map(lambda _: None, aux)


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)


def fused_token_loss(loss_fn: Callable[[Array, Any], Array], h: Array, emb: Array,
                     targets: Array, aux: Any, *, chunk_size: int = 512,
                     softcap: float | None = None, compute_dtype=jnp.bfloat16,
                     layout: Layout | None = None) -> tuple[Array, Array]:
  """(sum_n loss_fn(logp, aux)_n, logp [N]); see the module docstring.

  loss_fn: (logp [C], aux chunk) -> per-token loss [C], elementwise in logp (token n's loss may
    depend only on logp_n and aux_n); hashable (a module-level function or functools.partial).
  h [N, D]; emb [V, D] (the gradient comes back in emb's dtype: pass the f32 master table);
  targets int32 [N]; aux: pytree of [N] arrays (weights, masks, old log-probs), not
  differentiated. Padding (when N has no divisor near N / chunk_size) uses zero aux, so loss_fn must give 0
  on all-zero aux (true for every loss weighted by its weights / mask). layout: the shardings on
  a mesh (`train_step.loss_head_layout`); None leaves the layout to GSPMD.
  """
  if h.ndim != 2 or emb.ndim != 2 or h.shape[1] != emb.shape[1]:
    raise ValueError(f"fused_token_loss: expected h [N, D] and emb [V, D], got {h.shape} and "
                     f"{emb.shape}.")
  loss, logp = _fused(loss_fn, h, emb, targets, aux, chunk_size, softcap, compute_dtype, layout)
  return loss, jax.lax.stop_gradient(logp)
