"""The sampler's K/V row layout (`forward.KVCache.groups`): rows grouped by data-parallel shard
and then by kv head, so the cache rules can split each shard's rows over `tensor` by head. On
one device every layout must compute the same thing; the 8-device split is checked in
`test_sampler_sharding`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sml_jax.models import registry
from sml_jax.sampling import decode
from sml_jax.sampling import forward as fwd

B, K, C = 4, 2, 16


@pytest.fixture(scope="module")
def gqa():
  """A 2-layer random model with 2 kv heads (4 query heads): tiny and the 270M have one."""
  from gemma import gm
  config = dataclasses.replace(registry.tiny_config(), num_heads=4, num_kv_heads=K)
  model = gm.nn.Transformer(config=config)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  arch = fwd.Arch.from_model(model)
  return arch, fwd.decode_layout(arch, params)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_rows_of_names_the_row_to_rows_writes(groups):
  x = jnp.arange(B * K * 3).reshape(B, K, 3)
  rows = fwd.to_rows(x, groups)
  b, k = fwd.rows_of(B, K, groups)
  np.testing.assert_array_equal(rows, x[b, k])
  np.testing.assert_array_equal(fwd.from_rows(rows, B, groups), x)
  assert sorted(zip(b.tolist(), k.tolist())) == [(i, j) for i in range(B) for j in range(K)]
  if groups == B:   # One row per group: rows b*K + k.
    np.testing.assert_array_equal(b * K + k, np.arange(B * K))


def _prefill(arch, params, groups, tokens):
  cache = fwd.init_cache(arch, B, C, jnp.float32, groups=groups)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  mask = jnp.broadcast_to(jnp.tril(jnp.ones((tokens.shape[1], C), bool)),
                          (B, tokens.shape[1], C))
  return fwd.forward(arch, params, tokens, positions, cache, 0, mask)


def test_every_layout_gives_the_same_states_and_cache_contents(gqa):
  """Prefill then one decode step through caches of G = 1, 2, 4 (B = 4): identical hidden
  states, and each cache holds the same K/V for every (batch row, head)."""
  arch, params = gqa
  tokens = jax.random.randint(jax.random.key(1), (B, 5), 2, 1000)
  out = {}
  for groups in (1, 2, 4):
    h, cache = _prefill(arch, params, groups, tokens)
    mask = jnp.ones((B, 1, C), bool).at[:, :, 6:].set(False)
    h2, cache = fwd.forward(arch, params, tokens[:, :1], jnp.full((B, 1), 5), cache, 5, mask)
    keys = fwd.from_rows(cache.layers[1].keys, B, groups)          # (B, K, C, D)
    out[groups] = (np.asarray(h), np.asarray(h2), np.asarray(keys))
    assert cache.groups == groups
  for groups in (2, 4):
    for a, b in zip(out[groups], out[1]):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_compact_and_broadcast_move_each_rows_own_heads(gqa):
  """`compact` moves every kv head's slots with its own batch row; `broadcast_row` copies
  batch row 0's heads to every row, into the target layout."""
  arch, params = gqa
  tokens = jax.random.randint(jax.random.key(2), (B, 5), 2, 1000)
  _, cache = _prefill(arch, params, 2, tokens)
  # Rows keep different slots valid (row b: slots b..4), as ragged prompts leave them.
  valid = jnp.arange(C)[None, :] >= jnp.arange(B)[:, None]
  valid &= jnp.arange(C)[None, :] < 5
  cache = cache.replace(valid=valid)
  before = np.asarray(fwd.from_rows(cache.layers[0].keys, B, 2))
  # Batch row 0 alone (its K rows, by `rows_of`), as the sampler prefills a shared prefix.
  b_of, k_of = fwd.rows_of(B, K, 2)
  row0 = np.nonzero(b_of == 0)[0][np.argsort(k_of[b_of == 0])]
  one = jax.tree.map(lambda x: x[row0] if x.shape[0] == B * K else x[:1], cache).replace(groups=1)
  packed = decode.compact(cache)   # Donates `cache`.
  after = fwd.from_rows(packed.layers[0].keys, B, 2)
  for b in range(B):
    n = 5 - b
    np.testing.assert_array_equal(after[b, :, :n], before[b, :, b:5])
  wide = decode.broadcast_row(one, batch=B)
  assert wide.groups == 1
  np.testing.assert_array_equal(fwd.from_rows(wide.layers[0].keys, B, 1),
                                np.broadcast_to(before[:1], before.shape))


def test_the_cache_rule_splits_rows_by_data_shard_then_tensor():
  """Rows split over (data, fsdp, tensor) when `tensor` divides the kv heads; with one kv head
  over the batch axes only (splitting them over `tensor` would split the batch against the
  head-split queries); a tuple axis that does not divide falls back to its divisible prefix."""
  from sml_jax.parallel import rules

  class FakeMesh:   # spec_for reads only the axis sizes.
    shape = {"data": 2, "fsdp": 1, "tensor": 2}
  spec = lambda rows, kv: rules.spec_for("layers/0/keys", (rows, 64, 32), FakeMesh(),
                                          rules.cache_rules(FakeMesh(), kv))[0]
  assert spec(8 * 2, 2) == ("data", "fsdp", "tensor")
  assert spec(8 * 1, 1) == ("data", "fsdp")
  assert spec(2 * 1, 2) == ("data", "fsdp")         # 2 rows: tensor does not divide them
  assert rules.cache_groups(FakeMesh(), 8) == 2 and rules.cache_groups(None, 8) == 1
