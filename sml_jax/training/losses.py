"""Per-token policy losses, registered by name (tunix `algo_core` style), plus the normaliser.

Every loss here is an *elementwise* function of the token's log-prob `logp` (the current
params' log p(token)) and per-token side inputs; the train step sums it over tokens and divides
by a denominator, both returned separately so micro-batch accumulation is exact:

    loss = sum_n scale_n * l(logp_n, ...) / denominator

Shapes: every array is [N] (any shape, all the same), float32. `weights` is the token's weight as
a *target*: 0 on prompt / teacher / user / template / padding tokens, 1 on student tokens for
SFT, the conversation's advantage on student tokens for RL. `mask` is 1 on student tokens
whatever their weight (it drives the KL term, the normaliser and the metrics).

Registered policy losses (`POLICY_LOSSES`, pick with `TrainConfig.loss`):

  "nll":  l = -w * logp.
          SFT with w = 1; REINFORCE / GRPO without ratio clipping with w = A. Its gradient equals
          the PPO gradient at ratio 1, i.e. the on-policy single-update case.
  "ppo":  r = exp(logp - old_logp);  l = -min(r * w, clip(r, 1 - eps, 1 + eps) * w).
          Needs the sampler's log-probs (`old_logprobs`). With old_logp = logp it equals "nll"
          in value (up to the constant) and gradient.

KL to a frozen reference (added with weight `kl_beta`, default 0), the k3 estimator
(Schulman 2020), >= 0, unbiased for KL(pi || ref) under samples from pi:

    kl = exp(ref_logp - logp) - (ref_logp - logp) - 1,   applied on `mask` tokens.

Normalisers (`NORMALISERS`): the per-token `scale_n` and the batch denominator.

  "tokens"     (default): scale = 1, denominator = number of student (mask) tokens in the
               whole batch (all micro-batches): every student token counts the same.
  "sequences": scale = 1 / (student tokens of the token's sequence), denominator = number of
               sequences with at least one student token: every conversation counts the same
               (the GRPO paper's per-sequence mean).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
PolicyLoss = Callable[..., Array]
POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_policy_loss(name: str):
  def decorator(fn):
    POLICY_LOSSES[name] = fn
    return fn
  return decorator


def get_policy_loss(name: str) -> PolicyLoss:
  if name not in POLICY_LOSSES:
    raise ValueError(f"TrainConfig.loss: unknown policy loss {name!r}; expected one of "
                     f"{sorted(POLICY_LOSSES)}.")
  return POLICY_LOSSES[name]


@register_policy_loss("nll")
def nll_loss(logp: Array, weights: Array, old_logp: Array | None = None, *,
             clip_eps: float = 0.2) -> Array:
  """l = -w * logp  ([N] -> [N]). `old_logp` and `clip_eps` are unused."""
  del old_logp, clip_eps
  return -weights * logp


@register_policy_loss("ppo")
def ppo_clip_loss(logp: Array, weights: Array, old_logp: Array | None = None, *,
                  clip_eps: float = 0.2) -> Array:
  """l = -min(r w, clip(r, 1-eps, 1+eps) w), r = exp(logp - old_logp)  ([N] -> [N])."""
  if old_logp is None:
    raise ValueError("The 'ppo' loss needs old_logprobs (the sampler's log-probs) in the batch.")
  ratio = jnp.exp(logp - old_logp)
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  # Zero weights give exactly zero (and zero gradient) even where the ratio overflows.
  return jnp.where(weights == 0, 0.0, -jnp.minimum(ratio * weights, clipped * weights))


def kl_k3(logp: Array, ref_logp: Array) -> Array:
  """k3 estimate of KL(pi || ref) per token: exp(d) - d - 1 with d = ref_logp - logp  ([N])."""
  d = ref_logp - logp
  return jnp.exp(d) - d - 1.0


def ppo_clip_fraction(logp: Array, old_logp: Array, weights: Array, clip_eps: float) -> Array:
  """1 where the PPO objective is clipped (its gradient is zero there)  ([N] -> [N] float)."""
  ratio = jnp.exp(logp - old_logp)
  return ((weights > 0) & (ratio > 1 + clip_eps) | (weights < 0) & (ratio < 1 - clip_eps)
          ).astype(jnp.float32)


NORMALISERS = ("tokens", "sequences")


def check_normaliser(name: str) -> str:
  if name not in NORMALISERS:
    raise ValueError(f"TrainConfig.normaliser: unknown normaliser {name!r}; expected one of "
                     f"{NORMALISERS}.")
  return name


def token_scale_and_denominator(mask: Array, normaliser: str,
                                segment_ids: Array | None = None) -> tuple[Array, Array]:
  """mask [B, T] (1 on student tokens) -> (scale [B, T], denominator []) for this (micro-)batch.

  A sequence is a row, or with `segment_ids` [B, T] (packed rows: 1, 2, ... per conversation,
  0 on padding) a segment. Denominators of micro-batches add up to the full batch's
  denominator, for both normalisers.
  """
  check_normaliser(normaliser)
  mask = mask.astype(jnp.float32)
  if normaliser == "tokens":
    return jnp.ones_like(mask), mask.sum()
  if segment_ids is None:
    per_seq = mask.sum(axis=-1, keepdims=True)                   # [B, 1]
    scale = jnp.where(per_seq > 0, 1.0 / jnp.maximum(per_seq, 1.0), 0.0)
    return jnp.broadcast_to(scale, mask.shape), (per_seq > 0).sum().astype(jnp.float32)
  t = mask.shape[-1]
  per_seg = jax.vmap(lambda m, s: jnp.zeros((t + 1,), jnp.float32).at[s].add(m))(
      mask, segment_ids)                                         # [B, T + 1], by segment id
  per_tok = jnp.take_along_axis(per_seg, segment_ids, axis=-1)   # [B, T]
  scale = jnp.where(per_tok > 0, 1.0 / jnp.maximum(per_tok, 1.0), 0.0)
  return scale, (per_seg[:, 1:] > 0).sum().astype(jnp.float32)
