"""Losses, fused unembedding log-probs, GRPO advantages, batching, optimizer config (no model)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sml_jax.dialogue.chat_format import Role
from sml_jax.training import advantages, batching, logprobs, losses
from sml_jax.training import optimizer as opt


# --- GRPO advantages ------------------------------------------------------------------------------

def test_grpo_advantages_match_hand_computation():
  rewards = [1, 0, 0, 0, 0.7, 0.7, 0, 0, 1, 1, 1, 1]
  adv = advantages.grpo_advantages(rewards, group_size=4, eps=0.0)
  # Group 1: mean 1/4, sample std sqrt((9/16 + 3/16) / 3) = 1/2.
  np.testing.assert_allclose(adv[:4], [1.5, -0.5, -0.5, -0.5], rtol=1e-6)
  # Group 2: mean 0.35, deviations +-0.35, sample std sqrt(4 * 0.35^2 / 3) = 0.35 * 2 / sqrt(3).
  a = np.sqrt(3) / 2
  np.testing.assert_allclose(adv[4:8], [a, a, -a, -a], rtol=1e-6)
  # All equal: no signal, exactly zero.
  assert (adv[8:] == 0).all()
  # eps enters the denominator; ddof=0 and Dr. GRPO (no std scaling) variants.
  np.testing.assert_allclose(advantages.grpo_advantages([1, 0], 2, eps=0.1),
                             [0.5 / (np.sqrt(0.5) + 0.1), -0.5 / (np.sqrt(0.5) + 0.1)], rtol=1e-6)
  np.testing.assert_allclose(advantages.grpo_advantages([1, 0], 2, eps=0, ddof=0), [1, -1])
  np.testing.assert_allclose(advantages.grpo_advantages([1, 0, 0, 0], 4, scale_by_std=False),
                             [0.75, -0.25, -0.25, -0.25])


@pytest.mark.parametrize("group_size", [1, 0, 2.5])
def test_grpo_bad_group_size_names_the_field(group_size):
  with pytest.raises(ValueError, match="group_size"):
    advantages.grpo_advantages([1.0, 0.0], group_size)


def test_grpo_rewards_not_a_multiple_of_group():
  with pytest.raises(ValueError, match="multiple of group_size"):
    advantages.grpo_advantages([1.0, 0.0, 1.0], 2)


# --- per-token losses -----------------------------------------------------------------------------

def test_ppo_equals_nll_at_ratio_one_and_clips():
  logp = jnp.array([-1.0, -2.0, -0.5, -3.0])
  w = jnp.array([1.0, -0.5, 2.0, 0.0])
  ppo = lambda lp, old: losses.ppo_clip_loss(lp, w, old, clip_eps=0.2).sum()
  nll = lambda lp: losses.nll_loss(lp, w).sum()
  # At old = logp: same gradient; values differ by the constant (ratio 1 vs logp).
  np.testing.assert_allclose(jax.grad(ppo)(logp, logp), jax.grad(nll)(logp), rtol=1e-6)
  np.testing.assert_allclose(ppo(logp, logp), -w.sum(), rtol=1e-6)
  # Ratio 2 (> 1 + eps) with a positive advantage: clipped, zero gradient; negative advantage
  # at ratio 2: not clipped (min picks the unclipped, larger-loss term).
  old = logp - jnp.log(2.0)
  g = jax.grad(ppo)(logp, old)
  assert g[0] == 0 and g[2] == 0 and g[3] == 0
  np.testing.assert_allclose(g[1], 0.5 * 2.0, rtol=1e-6)
  frac = losses.ppo_clip_fraction(logp, old, w, 0.2)
  np.testing.assert_array_equal(frac, [1, 0, 1, 0])
  with pytest.raises(ValueError, match="old_logprobs"):
    losses.ppo_clip_loss(logp, w, None)


def test_kl_k3():
  logp = jnp.array([-1.0, -2.0, -0.1])
  np.testing.assert_allclose(losses.kl_k3(logp, logp), 0.0, atol=1e-7)
  ref = jnp.array([-1.5, -1.0, -0.1])
  d = ref - logp
  np.testing.assert_allclose(losses.kl_k3(logp, ref), np.exp(d) - d - 1, rtol=1e-6)
  assert (losses.kl_k3(logp, ref)[:2] > 0).all()


def test_normalisers():
  mask = jnp.array([[0, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0.]])
  scale, denom = losses.token_scale_and_denominator(mask, "tokens")
  assert denom == 4 and (scale == 1).all()
  scale, denom = losses.token_scale_and_denominator(mask, "sequences")
  assert denom == 2
  np.testing.assert_allclose(scale[:, 1], [1 / 3, 1, 0])
  with pytest.raises(ValueError, match="TrainConfig.normaliser"):
    losses.token_scale_and_denominator(mask, "batch")
  with pytest.raises(ValueError, match="TrainConfig.loss"):
    losses.get_policy_loss("dpo")


# --- fused unembedding log-probs ------------------------------------------------------------------

def _token_loss(lp, aux, kind):
  return losses.POLICY_LOSSES[kind](lp, aux["w"], aux["old"]) + 0.1 * aux["m"] * losses.kl_k3(
      lp, aux["ref"])


@pytest.mark.parametrize("kind,softcap,chunk", [("nll", None, 8), ("ppo", 5.0, 7),
                                                ("nll", 3.0, 100)])
def test_fused_token_loss_matches_autodiff(kind, softcap, chunk):
  n, d, v = 37, 16, 101  # 37 is prime: exercises the padded last chunk.
  k = jax.random.split(jax.random.key(0), 7)
  h = jax.random.normal(k[0], (n, d))
  emb = 0.3 * jax.random.normal(k[1], (v, d))  # Logits of a few units, as in a trained model.
  targets = jax.random.randint(k[2], (n,), 0, v)
  aux = {"w": jax.random.normal(k[3], (n,)), "old": -3 * jnp.abs(jax.random.normal(k[4], (n,))),
         "ref": -3 * jnp.abs(jax.random.normal(k[5], (n,))),
         "m": (jax.random.uniform(k[6], (n,)) > 0.3).astype(jnp.float32)}

  def reference(h, emb):
    z = h @ emb.T
    if softcap:
      z = jnp.tanh(z / softcap) * softcap
    lp = jnp.take_along_axis(jax.nn.log_softmax(z), targets[:, None], 1)[:, 0]
    return _token_loss(lp, aux, kind).sum(), lp

  def fused(h, emb):
    return logprobs.fused_token_loss(functools.partial(_token_loss, kind=kind), h, emb, targets,
                                     aux, chunk_size=chunk, softcap=softcap,
                                     compute_dtype=jnp.float32)

  (v1, lp1), g1 = jax.value_and_grad(reference, (0, 1), has_aux=True)(h, emb)
  (v2, lp2), g2 = jax.jit(jax.value_and_grad(fused, (0, 1), has_aux=True))(h, emb)
  np.testing.assert_allclose(v2, v1, rtol=1e-5)
  np.testing.assert_allclose(lp2, lp1, rtol=1e-5, atol=1e-5)
  for a, b in zip(g2, g1):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # Gradient w.r.t. h only (the LoRA case: the embedding gradient is skipped).
  np.testing.assert_allclose(jax.grad(lambda h: fused(h, emb)[0])(h), g1[0], rtol=1e-4, atol=1e-5)
  # Forward-only log-probs agree too.
  np.testing.assert_allclose(logprobs.token_logprobs(h, emb, targets, chunk_size=chunk,
                                                     softcap=softcap, compute_dtype=jnp.float32),
                             lp1, rtol=1e-5, atol=1e-5)


# --- batching -------------------------------------------------------------------------------------

def test_make_batch_pads_right_and_weights_student_tokens():
  t, u, m = Role.TEMPLATE, Role.USER, Role.MODEL
  ex1 = batching.Example(np.arange(2, 12, dtype=np.int32),
                         np.array([t, t, u, u, t, t, m, m, m, t], np.int8), weight=-0.5)
  ex2 = batching.Example(np.arange(2, 7, dtype=np.int32), np.array([m, t, m, m, u], np.int8),
                         token_weights=np.array([9, 9, 0.5, 2, 9], np.float32))
  b = batching.make_batch([ex1, ex2], buckets=(8, 16), batch_multiple=4)
  assert b.tokens.shape == (4, 16) and b.tokens.dtype == np.int32
  np.testing.assert_array_equal(b.tokens[0, :10], np.arange(2, 12))
  assert (b.tokens[0, 10:] == 0).all() and (b.tokens[2:] == 0).all()
  np.testing.assert_array_equal(b.positions[1, :6], [0, 1, 2, 3, 4, 0])
  np.testing.assert_array_equal(b.input_mask.sum(1), [10, 5, 0, 0])
  np.testing.assert_array_equal(b.weights[0, :10], [0, 0, 0, 0, 0, 0, -0.5, -0.5, -0.5, 0])
  # The first token is never a target, even if the model wrote it.
  np.testing.assert_array_equal(b.weights[1, :5], [0, 0, 0.5, 2, 0])
  np.testing.assert_array_equal(b.mask[1, :5], [0, 0, 1, 1, 0])
  assert b.old_logprobs is None and b.ref_logprobs is None
  stats = batching.batch_stats([ex1, ex2], b)
  assert stats["num_student_tokens"] == 5 and stats["num_truncated"] == 0
  # Truncation at max_len; buckets; errors.
  b = batching.make_batch([ex1], max_len=6, buckets=(8,))
  assert b.tokens.shape == (1, 6)
  assert batching.bucket_length(300) == 512
  with pytest.raises(ValueError, match="roles"):
    batching.Example(np.arange(3), np.zeros(2, np.int8))
  with pytest.raises(ValueError, match="pad_batch_to"):
    batching.make_batch([ex1, ex2], pad_batch_to=3, batch_multiple=2)


# --- optimizer ------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("learning_rate", -1e-4), ("learning_rate", 0.0),
                                         ("warmup_steps", -1), ("weight_decay", -0.1),
                                         ("grad_clip_norm", 0.0), ("b2", 1.0)])
def test_bad_optimizer_values_name_the_field(field, value):
  with pytest.raises(ValueError, match=f"optimizer.{field}"):
    opt.OptimizerConfig(**{field: value})


def test_schedule_warmup_then_cosine():
  cfg = opt.OptimizerConfig(learning_rate=1.0, warmup_steps=10, total_steps=110,
                            final_lr_fraction=0.1)
  lr = opt.make_schedule(cfg)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(60), lr(110), lr(500)],
                             [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-5, atol=1e-6)
  assert float(opt.make_schedule(opt.OptimizerConfig(learning_rate=0.3))(0)) == pytest.approx(0.3)
