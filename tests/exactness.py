"""What the train-step exactness tests share (tests/test_loss_index.py, test_shared_prefix.py
and the `tiny_lora` fixture): dialogues, examples for SFT and RL, loss and gradients of one
micro-batch, and the comparison of a fast layout with the plain one."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sml_jax.dialogue import chat_format as cf
from sml_jax.models import registry
from sml_jax.training import batching
from sml_jax.training import train_state as ts
from sml_jax.training import train_step as tstep
from tests import test_train_step

# The train-step tests' dialogues, plus a longer one so that packing has rows of several lengths.
DIALOGUES = test_train_step.DIALOGUES + [
    [("user", "Say hello in French, then in Spanish, then in German please."),
     ("model", "Bonjour. Hola. Hallo.")],
]
ADVANTAGES = [1.2, -0.5, 0.7, -1.2, 0.4, 0.9, -0.3, 1.1, -0.8, 0.6]
CONFIGS = {
    "sft": tstep.TrainConfig(compute_dtype="float32"),
    "rl": tstep.TrainConfig(compute_dtype="float32", loss="ppo", kl_beta=0.1,
                            normaliser="sequences", temperature=0.7),
}


def examples(tok, kind: str, dialogues=DIALOGUES):
  """SFT: weight 1 on student tokens. RL: the advantage, 0 on each turn's last student token
  (as on an appended <end_of_turn>), with old / reference log-probs near the policy's."""
  rng = np.random.default_rng(0)
  out = []
  for d, a in zip(dialogues * 2, ADVANTAGES):
    ids, roles = cf.encode_dialogue(tok, d)
    if kind == "sft":
      out.append(batching.Example(ids, roles, weight=1.0))
      continue
    w = np.where(roles == cf.Role.MODEL, np.float32(a), np.float32(0.0))
    w[np.flatnonzero(np.diff((roles == cf.Role.MODEL).astype(int)) == -1)] = 0.0
    lp = lambda: (-rng.uniform(0.5, 12.0, len(ids))).astype(np.float32)
    out.append(batching.Example(ids, roles, weight=a, token_weights=w.astype(np.float32),
                                old_logprobs=lp(), ref_logprobs=lp()))
  return out


def both_layouts(exs, **kw):
  """(plain batch, packed batch with loss index)."""
  return (batching.make_batch(exs, **kw),
          batching.make_batch(exs, pack=True, with_loss_index=True, **kw))


def loss_and_grads(model, trainable, frozen, batch, cfg):
  batch = jax.tree.map(jnp.asarray, batch)

  # The frozen weights and the batch are arguments, not closed-over constants: as constants the
  # 270M's frozen base (1 GB) is embedded in the program, which took ~8 min to compile.
  def loss(p, frozen, batch):
    s, (d, sums) = tstep.micro_batch_loss(p, frozen, batch, model=model, cfg=cfg)
    return s / d, (d, sums)
  (value, (den, sums)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      trainable, frozen, batch)
  return float(value), float(den), {k: float(v) for k, v in sums.items()}, grads


def assert_grads_close(g0, g1, rtol=1e-5):
  """Every leaf of g1 within rtol x the largest |g0| entry of g0 (and g0 not all zero)."""
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g0))
  diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
  assert scale > 1e-6 and diff <= rtol * scale, (diff, scale)


def model_270m(real_270m, lora: bool):
  """(model, trainable, frozen) of the 270M: full finetuning, or LoRA rank 4."""
  _, params = real_270m
  if lora:
    model = registry.build_model("gemma3_270m", lora_rank=4)
    return (model, *lora_state(model, params))
  return real_270m[0], params, {}


def assert_same(model, trainable, frozen, plain, fast, cfg, rtol=1e-5):
  v0, d0, s0, g0 = loss_and_grads(model, trainable, frozen, plain, cfg)
  v1, d1, s1, g1 = loss_and_grads(model, trainable, frozen, fast, cfg)
  assert d0 == d1 and s0["num_student_tokens"] == s1["num_student_tokens"] > 0
  np.testing.assert_allclose(v1, v0, rtol=rtol)
  for k in s0:
    np.testing.assert_allclose(s1[k], s0[k], rtol=rtol, atol=1e-5, err_msg=k)
  assert_grads_close(g0, g1, rtol)
  return v0


def lora_state(model, params, seed=0):
  """LoRA split (trainable adapters, frozen base) with non-zero B, so every adapter factor has
  a gradient."""
  state = ts.create_train_state(model, params, optax.sgd(1.0))
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(jax.tree.leaves(state.params))))
  lora = jax.tree.map(lambda x: 0.02 * jax.random.normal(next(keys), x.shape, x.dtype),
                      state.params)
  return lora, state.frozen
