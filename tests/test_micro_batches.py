"""Micro-batches in the train step: the shared prefix forwarded once per step (not once per
micro-batch), empty micro-batches skipped, and the micro-batch count padded to a power of two so
that iterations with different row counts reuse one compiled step
(`train_step._accumulate`, `batching.spread_micro_batches`, `Trainer.prepare`)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sml_jax.models import registry
from sml_jax.models.tokens import PAD_ID, Role
from sml_jax.training import batching
from sml_jax.training import train_state as ts
from sml_jax.training import train_step as tstep
from tests import exactness as li
from tests.test_shared_prefix import examples as prefixed_examples


@pytest.fixture(scope="module")
def tiny_tok():
  return registry.load_tokenizer("tiny")


def test_micro_batch_bucket_and_spread_keep_every_micro_batch_row_for_row():
  assert [batching.micro_batch_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]
  with pytest.raises(ValueError):
    batching.micro_batch_bucket(0)
  rng = np.random.default_rng(0)
  rows, t = 6, 5                                         # 3 filled micro-batches of 2 rows
  mask = rng.random((rows, t)) < 0.7
  mask[:, 0] = True
  batch = batching.Batch(
      tokens=np.where(mask, rng.integers(3, 99, (rows, t)), PAD_ID).astype(np.int32),
      positions=np.tile(np.arange(t, dtype=np.int32), (rows, 1)), input_mask=mask,
      mask=rng.random((rows, t)).astype(np.float32),
      weights=rng.random((rows, t)).astype(np.float32), segment_ids=mask.astype(np.int32),
      loss_index=np.tile(np.arange(3, dtype=np.int32), (rows, 1)),
      prefix_tokens=np.tile(np.arange(7, dtype=np.int32), (rows, 1)))
  spread = batching.spread_micro_batches(batch, num_micro=4, filled=3)
  assert spread.shape == (8, t) and spread.prefix_tokens.shape == (8, 7)
  before = batching.split_micro_batches(batch, 3)
  after = batching.split_micro_batches(spread, 4)
  for b0, b1 in zip(before, after[:3]):
    for k, v in b0.arrays().items():
      np.testing.assert_array_equal(getattr(b1, k), v, err_msg=k)
  empty = after[3]
  assert not empty.input_mask.any() and not empty.weights.any() and not empty.mask.any()
  assert (empty.tokens == PAD_ID).all() and (empty.loss_index == t - 1).all()
  # Padding is measured over the micro-batches the step computes: the empty one is skipped.
  assert spread.padding_fraction(4) == pytest.approx(batch.padding_fraction(3))
  assert spread.padding_fraction(4) == pytest.approx(1 - mask.mean())
  assert spread.computed_shape(4) == batch.shape == (6, t)
  assert batching.spread_micro_batches(batch, 3, 3) is batch
  with pytest.raises(ValueError, match="filled"):
    batching.spread_micro_batches(batch, 2, 3)


def _step_once(model, trainable, frozen, batch, cfg):
  tx = optax.sgd(1.0)
  state = ts.create_train_state(model, frozen or trainable, tx)   # LoRA: built on the base
  state = state.replace(params=jax.tree.map(jnp.copy, trainable))
  state, m = tstep.make_train_step(model, tx, cfg)(state, batch)
  return jax.tree.map(jnp.subtract, trainable, state.params), m


# Full finetuning runs with the slow tests (the same path; tests/test_loss_index.py's 8-device
# program covers it with a mesh).
@pytest.mark.parametrize("lora", [pytest.param(False, marks=pytest.mark.slow), True])
def test_prefix_once_per_step_and_skipped_micro_batches_equal_the_plain_step(tiny, tiny_lora,
                                                                             tiny_tok, lora):
  """RL (PPO + KL at temperature 0.7): the plain batch in one micro-batch, against the packed,
  indexed, shared-prefix batch in 2 micro-batches spread to 4 (2 empty, skipped), whose prefix
  is forwarded once and back-propagated once: the same update and metrics."""
  model, trainable, frozen = tiny_lora if lora else (tiny[0], tiny[1], {})
  exs = prefixed_examples(tiny_tok, "rl")
  plain = batching.make_batch(exs, buckets=(64, 128))
  fast = batching.make_batch(exs, buckets=(64, 128), pack=True, with_loss_index=True,
                             share_prefix=True, batch_multiple=2)
  assert fast.prefix_length >= 48 and fast.shape[0] >= 4
  fast = batching.spread_micro_batches(fast, 4, 2)      # rows 0, 2, ... and 1, 3, ...; 2 empty
  # Poison the empty micro-batches (2 and 3 of 4: rows 2, 3, 6, 7, ...) at indexed targets:
  # were they computed, the loss would be NaN.
  empty = np.arange(fast.shape[0]) % 4 >= 2
  assert not fast.input_mask[empty].any()
  t = fast.shape[1]
  fast = fast.replace(mask=np.where(empty[:, None], 1.0, fast.mask).astype(np.float32),
                      weights=np.where(empty[:, None], np.nan, fast.weights).astype(np.float32),
                      loss_index=np.where(empty[:, None], np.arange(fast.loss_index.shape[1]) % (t - 1),
                                          fast.loss_index).astype(np.int32))
  cfg = li.CONFIGS["rl"]
  g0, m0 = _step_once(model, trainable, frozen, plain, cfg)
  g1, m1 = _step_once(model, trainable, frozen, fast, dataclasses.replace(cfg, num_micro_batches=4))
  for k in m0:
    np.testing.assert_allclose(float(m1[k]), float(m0[k]), rtol=1e-5, atol=1e-6, err_msg=k)
  li.assert_grads_close(g0, g1)


def test_iterations_with_different_row_counts_share_one_compiled_step(tmp_path):
  """Trainer.train on 3, then 4, then 2 rows (micro-batches of 1 row): the micro-batch counts
  4, 4 and 2 compile two programs, not three; the metrics count only the computed rows' padding."""
  from configs import tiny_test
  from sml_jax import config as config_lib
  from sml_jax.experiment import Experiment
  from sml_jax.stages.trainer import Trainer
  c = tiny_test.get_config()
  c.train.micro_batch_size = 1
  spec = config_lib.to_spec(c)
  rl = next(s for s in spec.stages if s.kind == "rl").train
  exp = Experiment(spec)
  trainer = Trainer(exp)
  state = trainer.start_stage(trainer.initial_state())
  rng = np.random.default_rng(0)

  def conversations(n):   # one row each: 100 tokens in a 128-token row; different openings
    out = []
    for _ in range(n):
      roles = np.full(100, Role.USER, np.int8)
      roles[60:] = Role.MODEL
      out.append(batching.Example(rng.integers(3, 200, 100).astype(np.int32), roles,
                                  weight=float(rng.normal())))
    return out

  shapes, compile_s = [], []
  for n in (3, 4, 2):
    exs = conversations(n)
    batch = trainer.prepare(state, exs, rl)
    shapes.append((batch.shape, trainer.num_micro(batch)))
    state, m = trainer.train(state, exs, rl, learning_rate=1e-3)
    assert m["padding_fraction"] == pytest.approx(1 - 100 / 128)
    assert m["shared_span_tokens"] == 0   # random conversations share no problem statement
    compile_s.append(m["time_compile_s"])
  assert shapes == [((4, 128), 4), ((4, 128), 4), ((2, 128), 2)]
  # The training rows say when an update compiled (so the clock hears JAX's compile events):
  # the second reused the first's step.
  assert compile_s[0] > 0 and compile_s[2] > 0 and compile_s[1] < 0.5, compile_s
  compiled = sum(fn._cache_size() for step in trainer._steps.values()
                 for fn in step._jitted.values())
  assert compiled == 2
