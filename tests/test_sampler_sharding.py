"""Sharded sampling on 8 fake CPU devices gives the same tokens as one device.

Sampling draws one uniform per row and step (per-row RNG, so the same draws whatever the
sharding) and inverts the CDF; sharded programs sum probabilities in a different order, so a
draw within float rounding of a token boundary could land on the neighbour. On the random
`tiny` model every one of the 262,144 tokens has ~4e-6 of the mass, which makes that likely;
restricting to the top k (as real, peaked distributions effectively are) makes it negligible."""

import json

import pytest

CODE = r"""
import json, os
import jax, jax.numpy as jnp, numpy as np
assert len(jax.devices()) == 8
from sml_jax import models
from sml_jax.parallel.mesh import make_mesh
from sml_jax.sampling import Sampler

model, params = models.build_model("tiny"), models.load_params("tiny")
tok = models.load_tokenizer("tiny")
texts = ["def fibonacci(n):", "The Eiffel Tower is in", "Hi", "1, 2, 3, 4, 5, 6", "Once upon"]
prompts = [list(tok.encode(t, add_bos=True)) for t in texts]

def run(mesh):
  s = Sampler(model, cache_length=128, mesh=mesh, dtype=jnp.float32, stop_tokens=(1, 106))
  greedy = s.generate(params, prompts, max_new_tokens=6)
  state = s.start(params, prompts)
  state, a = s.sample(params, state, max_new_tokens=5, temperature=1.0, top_k=50, seed=3,
                      active=np.array([True, False, True, True, True]))
  state = s.append(params, state, [[9, 8], [], [7], [6, 5, 4], []])
  state, b = s.sample(params, state, max_new_tokens=5, temperature=0.8, top_k=20, seed=4)
  sharding = jax.tree.leaves(state.cache)[0].sharding
  return {"greedy": [t.tolist() for t in greedy.tokens], "a": [t.tolist() for t in a.tokens],
          "b": [t.tolist() for t in b.tokens],
          "lp": [float(np.sum(x)) for x in b.logprobs], "spec": str(getattr(sharding, "spec", ""))}

out = {"single": run(None)}
for shape in [(8, 1, 1), (2, 2, 2), (2, 4, 1)]:
  out[str(shape)] = run(make_mesh(*shape))

# Two kv heads on a (2, 2, 2) mesh: each chip holds its data shard's rows of ONE head (the
# cache split over `tensor` by head, not replicated), and samples what one device samples.
import dataclasses
from gemma import gm
from sml_jax.models import registry
from sml_jax.sampling import forward as fwd
model = gm.nn.Transformer(config=dataclasses.replace(registry.tiny_config(), num_heads=4,
                                                     num_kv_heads=2))
params = model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]
gqa = {"single": run(None)}
mesh = make_mesh(2, 2, 2)
gqa["mesh"] = run(mesh)
s = Sampler(model, cache_length=128, mesh=mesh, dtype=jnp.float32, stop_tokens=(1, 106))
keys = s.start(params, prompts).cache.layers[0].keys        # 5 prompts -> 8 rows, x 2 heads
batch_of, head_of = fwd.rows_of(8, 2, 4)
shards = []
for shard in keys.addressable_shards:
  rows = np.arange(16)[shard.index[0]]
  shards.append({"rows": int(shard.data.shape[0]), "heads": sorted(set(head_of[rows].tolist())),
                 "batch": sorted(set(batch_of[rows].tolist()))})
gqa["shards"] = shards
out["gqa"] = gqa
print(json.dumps(out))
"""


@pytest.mark.slow
def test_sharded_sampling_matches_one_device(eight_devices):
  out = json.loads(eight_devices("sampler_sharding").strip().splitlines()[-1])
  single = out.pop("single")
  gqa = out.pop("gqa")
  for key in ("greedy", "a", "b"):
    assert gqa["mesh"][key] == gqa["single"][key], key
  assert len(gqa["shards"]) == 8
  for shard in gqa["shards"]:   # 16 rows / 8 chips; one head and one data shard's rows each.
    assert shard["rows"] == 2 and len(shard["heads"]) == 1 and len(shard["batch"]) == 2, shard
  assert {(tuple(x["batch"]), x["heads"][0]) for x in gqa["shards"]} == {
      (b, h) for b in ((0, 1), (2, 3), (4, 5), (6, 7)) for h in (0, 1)}
  assert len(out) == 3
  for shape, got in out.items():
    assert got["greedy"] == single["greedy"], shape
    assert got["a"] == single["a"], shape
    assert got["b"] == single["b"], shape
    for x, y in zip(got["lp"], single["lp"]):
      assert abs(x - y) < 1e-3, shape
    assert "data" in got["spec"] or "fsdp" in got["spec"], (shape, got["spec"])
