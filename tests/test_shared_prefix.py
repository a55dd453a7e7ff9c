"""A batch whose conversations share a prefix forwards it once (`make_batch(share_prefix=True)`,
`training/shared_prefix.py`), and a group's span after it is stored once per row
(`share_groups=True`), exactly: loss, gradients, metrics and log-probs equal the plain
step's (full rows, logits at every position) for SFT weights and RL advantages (PPO + KL at
temperature 0.7), full finetuning and LoRA, with packing, 2 micro-batches and remat, on `tiny`
(whose sliding window of 16 is much shorter than the prefix) and on the 270M at small shapes.
The 8-fake-device comparison is part of tests/test_loss_index.py's 8-device program."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sml_jax.models import registry
from sml_jax.models.tokens import Role
from sml_jax.training import batching, packing
from sml_jax.training import train_state as ts
from sml_jax.training import train_step as tstep
from tests import exactness as li

# The instructions every conversation starts with (as the student's prompt does), then each
# dialogue's own first question.
INSTRUCTIONS = ("You are a careful student talking with a teacher. Answer every question in one "
                "short line, check your arithmetic before you answer, and if the teacher says "
                "that you are wrong, think again about the question and give a corrected answer. "
                "Keep your answers short and to the point.")


def with_instructions(dialogues):
  return [[("user", f"{INSTRUCTIONS}\n\n{d[0][1]}")] + d[1:] for d in dialogues]


DIALOGUES = with_instructions(li.DIALOGUES)


def examples(tok, kind, dialogues=DIALOGUES):
  return li.examples(tok, kind, dialogues)


# GRPO-like groups: two problems, each answered four ways (the span after the shared
# instructions, up to the student's first token, is the problem statement).
GROUP_DIALOGUES = with_instructions(
    [[("user", "What is 17 + 25? Show the sum."), ("model", a)] + rest
     for a, rest in (("42.", []), ("It is 32.", [("user", "Too low."), ("model", "Then 42.")]),
                     ("Final answer: 41", []), ("17 + 25 = 42", [("user", "Good.")]))]
    + [[("user", "Spell the word house backwards, letter by letter."), ("model", a)]
       for a in ("esuoh", "e s u o h", "It is esuoh.", "house")])


def layouts(exs, groups=False, **kw):
  """(plain batch, packed + loss index + shared prefix (+ group spans) batch)."""
  return (batching.make_batch(exs, **kw),
          batching.make_batch(exs, pack=True, with_loss_index=True, share_prefix=True,
                              share_groups=groups, **kw))


@pytest.fixture(scope="module")
def tiny_tok():
  return registry.load_tokenizer("tiny")


# ---------------------------------------------------------------------------------- layout


def test_shared_prefix_length():
  a = np.arange(100)
  need = lambda n, first=None: np.arange(n) >= (first if first is not None else n)
  b = np.concatenate([a[:70], [999] * 20])
  assert packing.shared_prefix_length([a, b], [need(100), need(90)]) == 64    # 70 -> 64
  assert packing.shared_prefix_length([a, b], [need(100), need(90)], multiple=1) == 70
  # A target with a loss at position 50 (of either example) shortens it to 49 -> 48.
  assert packing.shared_prefix_length([a, b], [need(100, 50), need(90)]) == 48
  assert packing.shared_prefix_length([a, b], [need(100), need(90, 50)], multiple=1) == 49
  # Identical examples: the suffix keeps at least one token.
  assert packing.shared_prefix_length([a, a], [need(100), need(100)], multiple=1) == 99
  # Too short, one example, nothing common: nothing shared.
  assert packing.shared_prefix_length([a, b], [need(100, 30), need(90)]) == 0
  assert packing.shared_prefix_length([a], [need(100)]) == 0
  assert packing.shared_prefix_length([a, a + 1], [need(100), need(100)]) == 0
  with pytest.raises(ValueError, match="length"):
    packing.shared_prefix_length([a, b], [need(100), need(80)])


def test_shared_prefix_batch_holds_every_example_once(tiny_tok):
  exs = examples(tiny_tok, "rl")
  plain, fast = layouts(exs, buckets=(64, 128))
  p = fast.prefix_length
  common = min(np.flatnonzero(e.ids[:len(exs[0].ids)] != exs[0].ids[:len(e.ids)])[0]
               for e in exs if not np.array_equal(e.ids, exs[0].ids))
  assert packing.MIN_PREFIX <= p <= common and p % packing.PREFIX_MULTIPLE == 0
  assert p > common - packing.PREFIX_MULTIPLE
  assert (fast.prefix_tokens == exs[0].ids[:p]).all() and fast.prefix_tokens.shape[0] == fast.shape[0]
  assert fast.shape[1] == 64 < plain.shape[1] == 128 and fast.shape[0] < plain.shape[0]
  assert fast.num_tokens() == plain.num_tokens() == plain.input_mask.sum()
  assert fast.num_sequences() == plain.num_sequences() == len(exs)
  whole = set()
  for r in range(fast.shape[0]):
    for s in set(fast.segment_ids[r].tolist()) - {0}:
      seg = fast.segment_ids[r] == s
      assert fast.positions[r][seg].tolist() == list(range(p, p + seg.sum()))
      assert fast.mask[r][seg][0] == 0 and fast.weights[r][seg][0] == 0
      whole.add(tuple(fast.prefix_tokens[r].tolist() + fast.tokens[r][seg].tolist()))
  assert whole == {tuple(e.ids.tolist()) for e in exs}
  for k in ("mask", "weights", "old_logprobs", "ref_logprobs"):
    suffixes = np.concatenate([getattr(plain, k)[i, p:len(e.ids)] for i, e in enumerate(exs)])
    np.testing.assert_allclose(np.sort(getattr(fast, k)[fast.input_mask]), np.sort(suffixes),
                               err_msg=k)
  stats = batching.batch_stats(exs, fast)
  assert stats["num_tokens"] == plain.input_mask.sum() and stats["num_truncated"] == 0


def test_no_shared_prefix_falls_back_to_the_unshared_batch(tiny_tok):
  """The train-step dialogues share only <bos> and the turn header: nothing is shared."""
  exs = li.examples(tiny_tok, "rl")
  shared = batching.make_batch(exs, pack=True, with_loss_index=True, share_prefix=True)
  unshared = batching.make_batch(exs, pack=True, with_loss_index=True)
  assert shared.prefix_tokens is None and shared.prefix_length == 0
  for k, v in unshared.arrays().items():
    np.testing.assert_array_equal(getattr(shared, k), v, err_msg=k)


def test_a_weighted_token_inside_the_prefix_shortens_it(tiny_tok):
  exs = examples(tiny_tok, "sft")
  p = batching.make_batch(exs, share_prefix=True).prefix_length
  roles = exs[1].roles.copy()
  roles[40] = Role.MODEL   # A trained token at position 40: the prefix must end before it.
  exs[1] = batching.Example(exs[1].ids, roles, token_weights=np.where(roles == Role.MODEL, 0.5, 0))
  short = batching.make_batch(exs, share_prefix=True)
  assert p >= 48 and short.prefix_length == 32
  assert short.weights[1, 40 - 32] == 0.5 and short.mask[1, 40 - 32] == 1


def test_max_len_truncates_the_whole_conversation(tiny_tok):
  exs = examples(tiny_tok, "sft")
  longest = max(len(e.ids) for e in exs)
  plain = batching.make_batch(exs, max_len=longest - 5)
  fast = batching.make_batch(exs, max_len=longest - 5, share_prefix=True)
  assert fast.prefix_length + fast.shape[1] <= longest - 5
  assert fast.num_tokens() == plain.num_tokens()
  assert batching.batch_stats(exs, fast)["num_truncated"] == batching.batch_stats(
      exs, plain)["num_truncated"] > 0


def test_pack_grouped_rows_stores_a_span_once_per_row():
  # Group 0 (span 3) has members of 5, 4 and 6 tokens (span included), example 3 is alone.
  rows = packing.pack_grouped_rows([5, 4, 6, 3], [0, 0, 0, -1], [3, 3, 3, 0], row_len=8)
  assert rows == [[("span", 0), ("example", 2), ("example", 0)],
                  [("span", 0), ("example", 1), ("example", 3)]]
  with pytest.raises(ValueError, match="row_len"):
    packing.pack_grouped_rows([9], [-1], [0], row_len=8)


def test_group_spans_end_before_the_first_needed_target():
  a = np.arange(1, 13)
  b = np.concatenate([a[:10], [50, 51]])
  c = np.array([1, 2, 3, 20, 21])
  needs = [np.arange(12) >= 11, np.arange(12) >= 11, np.arange(5) >= 4]
  # After the prefix (2), a and b share tokens 2..9 (token 10 starts the suffix: its hidden
  # state predicts the first needed target); c's span is 1 token and has no partner.
  assert packing.group_spans([a, b, c], needs, 2, minimum=2) == ([0, 0, -1], [8, 8, 0])
  assert packing.group_spans([a, b, c], needs, 2, minimum=9) == ([-1, -1, -1], [0, 0, 0])


def test_group_spans_are_used_only_where_they_save_rows(tiny_tok):
  exs = examples(tiny_tok, "rl", GROUP_DIALOGUES)
  # One row of 512 holds every conversation either way: the layout is the one without spans.
  _, prefix_only = layouts(exs, buckets=(512,))
  _, same_rows = layouts(exs, groups=True, buckets=(512,))
  assert same_rows.parent_ids is None and same_rows.shape == prefix_only.shape
  for k, v in prefix_only.arrays().items():
    np.testing.assert_array_equal(getattr(same_rows, k), v, err_msg=k)
  with pytest.raises(ValueError, match="pack=True"):
    batching.make_batch(exs, share_prefix=True, share_groups=True)
  with pytest.raises(ValueError, match="needs"):
    packing.group_spans([exs[0].ids] * 2, [np.zeros(len(exs[0].ids), bool)], 0)


def test_group_span_batch_holds_every_example_once(tiny_tok):
  exs = examples(tiny_tok, "rl", GROUP_DIALOGUES)
  plain, fast = layouts(exs, groups=True, buckets=(64, 128))
  _, prefix_only = layouts(exs, buckets=(64, 128))
  p = fast.prefix_length
  assert p >= 48 and fast.parent_ids is not None
  assert fast.input_mask.sum() < prefix_only.input_mask.sum()
  assert fast.num_tokens() == plain.num_tokens() == plain.input_mask.sum()
  assert fast.num_sequences() == len(exs)
  assert fast.span_tokens_saved() == plain.num_tokens() - prefix_only.num_tokens() + (
      prefix_only.input_mask.sum() - fast.input_mask.sum())
  whole = []
  for r in range(fast.shape[0]):
    seg, parent = fast.segment_ids[r], fast.parent_ids[r]
    for s in set(seg.tolist()) - {0} - set(parent.tolist()):
      mine = seg == s
      span = seg == parent[mine][0] if parent[mine][0] else np.zeros_like(mine)
      assert (parent[mine] == parent[mine][0]).all()
      assert np.flatnonzero(span).max(initial=-1) < np.flatnonzero(mine).min()
      assert fast.mask[r][span].sum() == 0 and fast.weights[r][span].sum() == 0
      positions = np.concatenate([fast.positions[r][span], fast.positions[r][mine]])
      assert positions.tolist() == list(range(p, p + len(positions)))
      assert fast.mask[r][mine][0] == 0 and fast.weights[r][mine][0] == 0
      whole.append(tuple(fast.prefix_tokens[r].tolist() + fast.tokens[r][span].tolist()
                         + fast.tokens[r][mine].tolist()))
  assert sorted(whole) == sorted(tuple(e.ids.tolist()) for e in exs)
  need = lambda b: (b.mask != 0) | (b.weights != 0)   # what the loss reads; spans hold none
  for k in ("mask", "weights", "old_logprobs", "ref_logprobs"):
    np.testing.assert_allclose(np.sort(getattr(fast, k)[need(fast)]),
                               np.sort(getattr(plain, k)[need(plain)]), err_msg=k)


# ------------------------------------------------------------------------------ tiny model


# LoRA with SFT weights runs with the slow tests (CI): the RL case covers the LoRA path (and
# more: advantages, PPO, KL), and full finetuning covers the SFT weights.
@pytest.mark.parametrize("kind,lora", [("sft", False), ("rl", False), ("rl", True),
                                       pytest.param("sft", True, marks=pytest.mark.slow)])
def test_tiny_shared_prefix_step_is_exact(tiny, tiny_lora, tiny_tok, kind, lora):
  exs = examples(tiny_tok, kind)
  plain, fast = layouts(exs, buckets=(64, 128))
  assert fast.prefix_length >= 48
  model, trainable, frozen = tiny_lora if lora else (tiny[0], tiny[1], {})
  li.assert_same(model, trainable, frozen, plain, fast, li.CONFIGS[kind])
  # Log-probs (the reference / old log-prob passes) on unpacked suffix rows: equal at every
  # target the loss reads (suffix column j is the conversation's position P + j).
  rows = batching.make_batch(exs, buckets=(64, 128), with_loss_index=True, share_prefix=True)
  p, t = rows.prefix_length, rows.shape[1]
  full = ts.merge_params(trainable, frozen)
  fn = tstep.make_logprob_fn(model, li.CONFIGS[kind])
  lp_plain = np.asarray(fn(full, plain))[:, p:p + t]
  lp_rows = np.asarray(fn(full, rows))
  need = (rows.mask != 0) | (rows.weights != 0)
  np.testing.assert_allclose(lp_rows[need], lp_plain[:, :t][need], rtol=1e-5)


@pytest.mark.parametrize("kind,lora", [("sft", False), ("rl", True)])
def test_tiny_group_span_step_is_exact(tiny, tiny_lora, tiny_tok, kind, lora):
  exs = examples(tiny_tok, kind, GROUP_DIALOGUES)
  plain, fast = layouts(exs, groups=True, buckets=(64, 128))
  assert fast.parent_ids is not None and fast.span_tokens_saved() > 0
  model, trainable, frozen = tiny_lora if lora else (tiny[0], tiny[1], {})
  li.assert_same(model, trainable, frozen, plain, fast, li.CONFIGS[kind])
  # The old / reference log-prob pass on the same layout: equal at every target the loss reads.
  full = ts.merge_params(trainable, frozen)
  fn = tstep.make_logprob_fn(model, li.CONFIGS[kind])
  lp_fast, need = np.asarray(fn(full, fast)), (fast.mask != 0) | (fast.weights != 0)
  lp_plain = np.asarray(fn(full, plain))
  np.testing.assert_allclose(np.sort(lp_fast[need]),
                             np.sort(lp_plain[(plain.mask != 0) | (plain.weights != 0)]),
                             rtol=1e-5)


def test_tiny_shared_prefix_train_step_with_micro_batches_and_remat_is_exact(tiny, tiny_lora,
                                                                             tiny_tok):
  """The whole jitted step (scan over 2 micro-batches, each forwarding the prefix once; remat
  full; RL with LoRA; SGD): the same update and metrics as the plain step without remat."""
  model, trainable, frozen = tiny_lora
  plain, fast = layouts(examples(tiny_tok, "rl", DIALOGUES + GROUP_DIALOGUES[:3]), groups=True,
                        buckets=(64, 128), batch_multiple=2)
  assert fast.prefix_length >= 48 and fast.shape[0] >= 2 and fast.span_tokens_saved() > 0
  cfg = dataclasses.replace(li.CONFIGS["rl"], num_micro_batches=2)
  tx = optax.sgd(1.0)
  out = []
  for batch, c in ((plain, cfg), (fast, dataclasses.replace(cfg, remat="full"))):
    state = ts.create_train_state(model, tiny[1], tx)
    state = state.replace(params=jax.tree.map(jnp.copy, trainable))
    state, m = tstep.make_train_step(model, tx, c)(state, batch)
    out.append((jax.tree.map(jnp.subtract, trainable, state.params), m))
  (g0, m0), (g1, m1) = out
  for k in m0:
    np.testing.assert_allclose(float(m1[k]), float(m0[k]), rtol=1e-5, atol=1e-6, err_msg=k)
  li.assert_grads_close(g0, g1)


# ----------------------------------------------------------------------------- the 270M


@pytest.mark.slow
@pytest.mark.parametrize("kind,lora", [("sft", False), ("rl", True)])
def test_270m_shared_prefix_step_is_exact_at_small_shapes(real_270m, tokenizer, kind, lora):
  """With group spans: three of the four conversations share their problem statement."""
  exs = examples(tokenizer, kind, DIALOGUES[:1] + GROUP_DIALOGUES[:3])[:4]
  plain, fast = layouts(exs, groups=True, buckets=(64, 128))
  assert fast.prefix_length >= 32 and fast.span_tokens_saved() > 0
  model, trainable, frozen = li.model_270m(real_270m, lora)
  li.assert_same(model, trainable, frozen, plain, fast, li.CONFIGS[kind], rtol=1e-4)
