"""sml_jax/parallel: multi-process setup (`distributed`), and on 8 fake CPU devices the train step
on a (2, 4, 1) mesh against one device, plus the memory plan's per-device bytes against the
bytes the rules table actually puts on a device.

The train step on (8, 1, 1) and (2, 2, 2) is tested in test_train_step.py, the sampler on all
three meshes in test_sampler_sharding.py; the two-process run in test_multihost.py.
"""

import json

import pytest

from sml_jax.parallel import distributed


def test_explicit_layout_from_env_and_arguments():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4",
         "JAX_PROCESS_ID": "3"}
  assert distributed.explicit_layout(environ=env) == ("10.0.0.2:1234", 4, 3)
  assert distributed.explicit_layout(process_id=1, environ=env) == ("10.0.0.2:1234", 4, 1)
  assert distributed.explicit_layout(environ={}) is None
  assert distributed.explicit_layout(environ={"JAX_NUM_PROCESSES": "1"}) == ("", 1, 0)
  bad = [({"JAX_NUM_PROCESSES": "2"}, "missing: JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID"),
         ({**env, "JAX_PROCESS_ID": "4"}, "0 <= JAX_PROCESS_ID < JAX_NUM_PROCESSES"),
         ({**env, "JAX_NUM_PROCESSES": "four"}, "must be an integer"),
         ({**env, "JAX_COORDINATOR_ADDRESS": "host-without-port"}, "host:port")]
  for environ, message in bad:
    with pytest.raises(ValueError, match=message):
      distributed.explicit_layout(environ=environ)


def test_maybe_initialize_is_a_no_op_on_one_process():
  import jax
  for environ in ({}, {"JAX_NUM_PROCESSES": "1"}, {"SML_JAX_DISTRIBUTED": "off"}):
    assert distributed.maybe_initialize(environ=environ) is False
  assert not jax.distributed.is_initialized()
  with pytest.raises(ValueError, match="SML_JAX_DISTRIBUTED"):
    distributed.maybe_initialize(environ={"SML_JAX_DISTRIBUTED": "yes"})


def test_host_slice_partitions_items_deterministically():
  for n in range(0, 23):
    for count in (1, 2, 3, 4, 8):
      parts = [distributed.host_slice(list(range(n)), p, count) for p in range(count)]
      assert sum(parts, []) == list(range(n))                 # every item once, in order
      assert max(map(len, parts)) - min(map(len, parts)) <= 1
  assert distributed.host_slice(range(10), 1, 4) == range(3, 6)
  assert distributed.host_slice("abcdefgh", 1, 2) == "efgh"
  assert distributed.host_slice([1, 2, 3]) == [1, 2, 3]      # one process: everything
  for p, c in [(2, 2), (-1, 2), (0, 0)]:
    with pytest.raises(ValueError, match="process_index < process_count"):
      distributed.host_slice([1, 2], p, c)


EIGHT_DEVICE_PROGRAM = r"""
import json
import chex, jax, jax.numpy as np_, numpy as np
assert jax.device_count() == 8
from sml_jax.dialogue import chat_format as cf
from sml_jax.models import registry
from sml_jax.parallel import distributed, rules
from sml_jax.planning import memory
from sml_jax.parallel.mesh import make_mesh
from sml_jax.sampling import decode, forward as fwd
from sml_jax.training import batching, optimizer as opt, train_state as ts, train_step as tstep

out = {}
# Plain device order on CPU (host p's devices together), as distributed.host_slice assumes.
mesh = make_mesh(2, 4, 1)
out["order"] = [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()]

model, params, tok = registry.build_model("tiny"), registry.load_params("tiny"), \
    registry.load_tokenizer("tiny")
from tests.test_train_step import DIALOGUES as dialogues  # The train engineer's, reused.
exs = [batching.Example(*cf.encode_dialogue(tok, d), weight=w)
       for d, w in zip(dialogues * 2, [1.0, -0.5, 0.7, -1.2, 0.4, 0.9, -0.3, 1.1])]
batch = batching.make_batch(exs, buckets=(64,))
tx = opt.make_optimizer(opt.OptimizerConfig(learning_rate=1e-3))
cfg = tstep.TrainConfig(compute_dtype="float32")

def run(mesh):
  state = ts.create_train_state(model, params, tx)
  b = batch
  if mesh is not None:
    state = ts.shard_train_state(state, mesh)
    b = distributed.global_batch(batch, mesh)   # one process: a sharded device_put
  step = tstep.make_train_step(model, tx, cfg, mesh=mesh)
  losses = []
  for _ in range(2):
    state, m = step(state, b)
    losses.append(float(m["loss"]))
  return state, losses

ref, ref_losses = run(None)
sharded, losses = run(mesh)
emb = sharded.params["embedder"]["input_embedding"]
out["emb_spec"] = str(emb.sharding.spec)
out["devices"] = len(emb.sharding.device_set)
out["losses"], out["ref_losses"] = losses, ref_losses
chex.assert_trees_all_equal_structs(sharded.params, ref.params)
out["max_param_diff"] = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                            zip(jax.tree.leaves(sharded.params), jax.tree.leaves(ref.params)))

# The plan's per-device bytes against what the rules table puts on device 0.
def on_device0(tree):
  d0 = jax.devices()[0]
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
             if s.device == d0)

shapes = memory.model_shapes(model)
out["bytes"] = {}
for sizes in [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 4, 2)]:
  m = make_mesh(*sizes)
  state = ts.shard_train_state(ts.create_train_state(model, params, tx), m)
  plan = memory.train_state_bytes(shapes, {}, memory.abstract_mesh(*sizes),
                                  memory.TrainShape(micro_batch_size=8, max_len=64))
  planned = plan["params (trainable)"] + plan["optimizer (AdamW mu, nu)"]
  actual = on_device0(state.params) + on_device0(state.opt_state)
  arch = fwd.Arch.from_model(model)
  cache = decode.init_cache(arch, 16, 128, np_.bfloat16, mesh=m)
  planned_cache = memory.kv_cache_bytes(model, memory.abstract_mesh(*sizes),
                                        memory.SampleShape(batch=16, cache_length=128))
  out["bytes"][str(sizes)] = [planned, actual, planned_cache, on_device0(cache)]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_train_step_on_2_4_1_mesh_and_planned_bytes_per_device(eight_devices):
  out = json.loads(eight_devices("train_step_2_4_1_and_plan_bytes").strip().splitlines()[-1])
  print(json.dumps(out, indent=1))
  assert out["order"]
  assert out["devices"] == 8 and out["emb_spec"] == "P('tensor', 'fsdp')"  # E over fsdp=4
  assert out["max_param_diff"] < 1e-5  # float reordering; each step moves params by ~1e-3
  for a, b in zip(out["losses"], out["ref_losses"]):
    assert abs(a - b) <= 1e-5 * max(1.0, abs(b))
  for sizes, (planned, actual, planned_cache, actual_cache) in out["bytes"].items():
    # Optimizer state also holds a few scalars (step counts) the plan leaves out.
    assert 0 <= actual - planned <= 64, (sizes, planned, actual)
    assert planned_cache == actual_cache, (sizes, planned_cache, actual_cache)
