"""The train step's cheaper layout (packed rows, logits only at weighted targets) is exact: loss,
gradients and metrics equal the plain step's (full rows, logits at every position) for SFT
weights and RL advantages (PPO + KL, per-sequence normaliser), full finetuning and LoRA, on
`tiny`, on the real 270M at small shapes, and on 8 fake devices (there also with a shared prefix,
2 micro-batches and remat, see tests/test_shared_prefix.py)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sml_jax.models import registry
from sml_jax.training import packing
from sml_jax.training import train_state as ts
from sml_jax.training import train_step as tstep
from tests.exactness import (CONFIGS, DIALOGUES, assert_grads_close, assert_same, both_layouts,
                              examples, loss_and_grads, model_270m)

# ---------------------------------------------------------------------------------- layout


def test_bucket_count_pack_rows_and_loss_index():
  assert [packing.bucket_count(n) for n in (0, 8, 9, 13, 17, 25, 33, 49, 65, 97)] == \
      [8, 8, 12, 16, 24, 32, 48, 64, 96, 128]
  assert packing.bucket_count(1000, cap=640) == 640
  rows = packing.pack_rows([300, 120, 200, 90, 512], 512)
  assert rows == [[4], [0, 2], [1, 3]]
  with pytest.raises(ValueError, match="row_len"):
    packing.pack_rows([600], 512)
  mask = np.array([[0, 0, 1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]], np.float32)
  weights = mask * 0.0
  weights[1, 7] = 2.0   # A weight without mask counts too.
  np.testing.assert_array_equal(packing.loss_index(mask, weights),
                                [[1, 2, 4, 7, 7, 7, 7, 7], [6, 7, 7, 7, 7, 7, 7, 7]])
  with pytest.raises(ValueError, match="smaller"):
    packing.loss_index(mask, weights, size=2)
  with pytest.raises(ValueError, match="first token"):
    packing.loss_index(np.ones((1, 4)), np.zeros((1, 4)))


def test_packed_batch_holds_every_example_once(tiny_tok):
  exs = examples(tiny_tok, "rl")
  plain, fast = both_layouts(exs, buckets=(64,))
  assert fast.shape[0] < plain.shape[0] and fast.padding_fraction() < plain.padding_fraction()
  assert fast.input_mask.sum() == plain.input_mask.sum()
  segments = set()
  for r in range(fast.shape[0]):
    for s in set(fast.segment_ids[r].tolist()) - {0}:
      seg = fast.segment_ids[r] == s
      assert fast.positions[r][seg].tolist() == list(range(seg.sum()))
      segments.add(tuple(fast.tokens[r][seg].tolist()))
      assert fast.mask[r][seg][0] == 0   # Nothing predicts a segment's first token.
  assert segments == {tuple(e.ids.tolist()) for e in exs}
  for k in ("mask", "weights", "old_logprobs", "ref_logprobs"):
    np.testing.assert_allclose(np.sort(getattr(fast, k)[fast.input_mask]),
                               np.sort(getattr(plain, k)[plain.input_mask]), err_msg=k)
  assert fast.loss_index.shape[1] < fast.shape[1]
  assert (packing.loss_counts(fast.mask, fast.weights) <= fast.loss_index.shape[1]).all()


# ------------------------------------------------------------------------------ tiny model


@pytest.fixture(scope="module")
def tiny_tok():
  return registry.load_tokenizer("tiny")


# LoRA with SFT weights runs with the slow tests (CI): the RL case covers the LoRA path (and
# more: advantages, PPO, KL), and full finetuning covers the SFT weights.
@pytest.mark.parametrize("kind,lora", [("sft", False), ("rl", False), ("rl", True),
                                       pytest.param("sft", True, marks=pytest.mark.slow)])
def test_tiny_step_is_exact(tiny, tiny_lora, tiny_tok, kind, lora):
  exs = examples(tiny_tok, kind)
  plain, fast = both_layouts(exs, buckets=(64,))
  model, trainable, frozen = tiny_lora if lora else (tiny[0], tiny[1], {})
  assert_same(model, trainable, frozen, plain, fast, CONFIGS[kind])
  # Log-probs (reference / old log-prob passes): equal at every target the loss reads.
  full = ts.merge_params(trainable, frozen)
  lp_plain = tstep.make_logprob_fn(model, CONFIGS[kind])(full, plain)
  lp_index = tstep.make_logprob_fn(model, CONFIGS[kind])(
      full, plain.replace(loss_index=packing.loss_index(plain.mask, plain.weights)))
  need = (plain.mask != 0) | (plain.weights != 0)
  np.testing.assert_allclose(np.asarray(lp_index)[need], np.asarray(lp_plain)[need], rtol=1e-5)
  assert (np.asarray(lp_index)[~need] == 0).all()


def test_tiny_train_step_with_micro_batches_is_exact(tiny, tiny_tok):
  """The whole jitted step (scan over 2 micro-batches, SGD): same update and metrics."""
  model, params = registry.build_model("tiny"), tiny[1]
  plain, fast = both_layouts(examples(tiny_tok, "rl"), buckets=(64,), batch_multiple=2)
  cfg = tstep.TrainConfig(num_micro_batches=2, **{k: getattr(CONFIGS["rl"], k) for k in (
      "compute_dtype", "loss", "kl_beta", "normaliser", "temperature")})
  tx = optax.sgd(1.0)
  out = []
  for batch in (plain, fast):
    step = tstep.make_train_step(model, tx, cfg)
    state, m = step(ts.create_train_state(model, params, tx), batch)
    out.append((jax.tree.map(jnp.subtract, params, state.params), m))
  (g0, m0), (g1, m1) = out
  for k in m0:
    np.testing.assert_allclose(float(m1[k]), float(m0[k]), rtol=1e-5, atol=1e-6, err_msg=k)
  assert_grads_close(g0, g1)


# `dots` (save the matmuls) runs with the slow tests: `full` exercises the same remat wrapper.
@pytest.mark.parametrize("policy", ["full", pytest.param("dots", marks=pytest.mark.slow)])
def test_tiny_remat_on_the_packed_indexed_batch_is_exact(tiny_lora, tiny_tok, policy):
  """Per-layer remat (`TrainConfig.remat`) with packed rows + loss index (RL, LoRA): the same
  loss, metrics and gradients as the plain layout without remat."""
  plain, fast = both_layouts(examples(tiny_tok, "rl"), buckets=(64,))
  model, trainable, frozen = tiny_lora
  v0, d0, s0, g0 = loss_and_grads(model, trainable, frozen, plain, CONFIGS["rl"])
  v1, d1, s1, g1 = loss_and_grads(model, trainable, frozen, fast,
                                  dataclasses.replace(CONFIGS["rl"], remat=policy))
  assert d0 == d1 and s0["num_student_tokens"] == s1["num_student_tokens"] > 0
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  for k in s0:
    np.testing.assert_allclose(s1[k], s0[k], rtol=1e-5, atol=1e-5, err_msg=k)
  assert_grads_close(g0, g1)


# ----------------------------------------------------------------------------- the 270M


@pytest.mark.slow
@pytest.mark.parametrize("kind,lora", [("sft", False), ("rl", True)])
def test_270m_step_is_exact_at_small_shapes(real_270m, tokenizer, kind, lora):
  exs = examples(tokenizer, kind, DIALOGUES[:3])[:4]
  plain, fast = both_layouts(exs, buckets=(48,))
  model, trainable, frozen = model_270m(real_270m, lora)
  assert_same(model, trainable, frozen, plain, fast, CONFIGS[kind], rtol=1e-4)


# ------------------------------------------------------------------------- 8 fake devices

_EIGHT_DEVICES = """
import json, jax, jax.numpy as jnp, numpy as np, optax
from sml_jax.models import registry
from sml_jax.parallel import distributed
from sml_jax.parallel.mesh import make_mesh
from sml_jax.training import train_state as ts, train_step as tstep
from tests.exactness import CONFIGS, both_layouts, examples, lora_state
from tests import test_shared_prefix as sp
assert jax.device_count() == 8
tok, params = registry.load_tokenizer("tiny"), registry.load_params("tiny")
out = {}
for kind, lora in (("sft", False), ("rl", True)):
  model = registry.build_model("tiny", lora_rank=4 if lora else None)
  trainable = lora_state(model, params)[0] if lora else None
  plain, fast = both_layouts(examples(tok, kind), buckets=(64,), batch_multiple=8)
  # Conversations sharing their instructions: the prefix forwarded once per step (2 micro-batches).
  plain_shared, shared = sp.layouts(sp.examples(tok, kind), buckets=(64, 128), batch_multiple=16)
  assert shared.prefix_length >= 48
  # Groups sharing their problem statement too: each group's span stored once per row.
  plain_groups, groups = sp.layouts(sp.examples(tok, kind, sp.GROUP_DIALOGUES), groups=True,
                                    buckets=(64, 128), batch_multiple=16)
  assert groups.span_tokens_saved() > 0
  tx = optax.sgd(1.0)
  def run(batch, mesh, micro, remat="none"):
    c = CONFIGS[kind]
    cfg = tstep.TrainConfig(num_micro_batches=micro, compute_dtype="float32", loss=c.loss,
                            kl_beta=c.kl_beta, normaliser=c.normaliser, temperature=c.temperature,
                            remat=remat)
    state = ts.create_train_state(model, params, tx)
    if lora:
      state = state.replace(params=trainable)
    before = jax.device_get(state.params)   # The step donates the state.
    if mesh is not None:
      state = ts.shard_train_state(state, mesh)
      batch = distributed.global_batch(batch, mesh)
    state, m = tstep.make_train_step(model, tx, cfg, mesh=mesh)(state, batch)
    delta = jax.tree.map(np.subtract, before, jax.device_get(state.params))
    return delta, {k: float(v) for k, v in m.items()}
  for name, reference, batch, runs in (
      ("", plain, fast, (((8, 1, 1), 1, "none"), ((2, 2, 2), 1, "none"))),
      ("shared prefix ", plain_shared, shared, (((8, 1, 1), 2, "none"), ((2, 2, 2), 2, "full"))),
      ("group spans ", plain_groups, groups, (((8, 1, 1), 2, "none"), ((2, 2, 2), 2, "full")))):
    ref, ref_m = run(reference, None, 1)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(ref))
    for shape, micro, remat in runs:
      got, m = run(batch, make_mesh(*shape), micro, remat)
      diff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)))
      out[f"{name}{kind} lora={lora} {shape} micro={micro} remat={remat}"] = {
          "rel_diff": diff / scale, "loss": [m["loss"], ref_m["loss"]],
          "metrics_ok": all(abs(m[k] - ref_m[k]) <= 1e-5 * max(1, abs(ref_m[k])) for k in ref_m)}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_sharded_fast_step_on_8_fake_devices_equals_plain_one_device(fake_devices):
  out = json.loads(fake_devices(_EIGHT_DEVICES).strip().splitlines()[-1])
  print(json.dumps(out, indent=1))
  assert len(out) == 12
  for name, r in out.items():
    assert r["rel_diff"] < 1e-5 and r["metrics_ok"], (name, r)
