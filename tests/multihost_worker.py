"""One process of a multi-process (multi-host style) JAX run on this machine; see test_multihost.py.

    JAX_COORDINATOR_ADDRESS=localhost:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \
        python tests/multihost_worker.py WORKDIR

Each process has one CPU device; the mesh is (data=1, fsdp=2, tensor=1) over both, so the params
and AdamW moments are split across the two processes (and so is every step's batch). Each
process builds only its `host_slice` of the batch (`distributed.global_batch` assembles the
global arrays), runs 2 steps of the project's train step on the `tiny` model, checks them
against the same 2 steps run unsharded on one local device with the full batch, saves an orbax
checkpoint (the project's `Checkpointer`, each process writing its own shards), restores it into
a fresh state and checks every local shard is bit-equal to what was saved. Prints one JSON line:
{"process", "losses", "ref_losses", "max_param_diff", "param_sums" (per leaf, of the gathered
params), "restored_equal"}.
"""

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"

# pylint: disable=g-import-not-at-top,wrong-import-position
from sml_jax.parallel import distributed

assert distributed.maybe_initialize(initialization_timeout=60), "expected a multi-process run"

import chex
import jax
from jax.experimental import multihost_utils
import numpy as np

from sml_jax.dialogue import chat_format as cf
from sml_jax.models import registry
from sml_jax.parallel.mesh import make_mesh
from sml_jax.training import batching
from sml_jax.training import optimizer as opt
from sml_jax.training import train_state as ts
from sml_jax.training import train_step as tstep
from sml_jax.training.checkpointing import Checkpointer

STEPS = 2
DIALOGUES = [
    [("user", "What is 2+3?"), ("model", "Is it 6?"), ("user", "No, count again."),
     ("model", "It is 5.")],
    [("user", "Capital of France?"), ("model", "Paris.")],
    [("user", "Name a prime number."), ("model", "Seven"), ("user", "Yes.")],
    [("user", "Spell cat backwards."), ("model", "tac"), ("user", "Good."), ("model", "Thanks!")],
]
WEIGHTS = [1.0, -0.5, 0.7, -1.2, 0.4, 0.9, -0.3, 1.1]


def main(workdir: str) -> None:
  assert jax.process_count() == 2 and jax.device_count() == 2
  pid = jax.process_index()
  model = registry.build_model("tiny")
  params = registry.load_params("tiny")          # seeded random init: same on every process
  tok = registry.load_tokenizer("tiny")
  examples = [batching.Example(*cf.encode_dialogue(tok, d), weight=w)
              for d, w in zip(DIALOGUES * 2, WEIGHTS)]
  full = batching.make_batch(examples, buckets=(64,))         # [8, 64]; the reference uses it
  mine = batching.make_batch(distributed.host_slice(examples), buckets=(64,))   # [4, 64]
  mesh = make_mesh(data=1, fsdp=2, tensor=1)
  assert [d.process_index for d in mesh.devices.flat] == [0, 1]
  batch = distributed.global_batch(mine, mesh)
  assert batch.tokens.shape == full.tokens.shape
  np.testing.assert_array_equal(
      np.concatenate([np.asarray(s.data) for s in batch.tokens.addressable_shards]),
      full.tokens[4 * pid:4 * pid + 4])

  tx = opt.make_optimizer(opt.OptimizerConfig(learning_rate=1e-3))
  cfg = tstep.TrainConfig(compute_dtype="float32")
  state = ts.shard_train_state(ts.create_train_state(model, params, tx), mesh)
  emb = state.params["embedder"]["input_embedding"]
  assert not emb.is_fully_addressable and len(emb.addressable_shards) == 1
  step = tstep.make_train_step(model, tx, cfg, mesh=mesh)
  losses = []
  for _ in range(STEPS):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))

  # Reference: the same steps on this process's first device, no mesh, full batch.
  with jax.default_device(jax.local_devices()[0]):
    ref = ts.create_train_state(model, params, tx)
    ref_step = tstep.make_train_step(model, tx, cfg)
    ref_losses = []
    for _ in range(STEPS):
      ref, m = ref_step(ref, full)
      ref_losses.append(float(m["loss"]))
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  chex.assert_trees_all_equal_structs(state.params, ref.params)
  max_diff = 0.0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref.params)):
    b = np.asarray(b)
    for shard in a.addressable_shards:
      max_diff = max(max_diff, float(np.abs(np.asarray(shard.data) - b[shard.index]).max()))
  assert max_diff < 1e-5, max_diff

  ckpt = Checkpointer(workdir, every=1, keep=2)
  ckpt.save(STEPS, state, {"losses": losses})
  target = ts.shard_train_state(ts.create_train_state(model, params, tx, seed=1), mesh)
  restored, extra = ckpt.restore(STEPS, target)
  ckpt.close()
  equal = extra["losses"] == losses
  chex.assert_trees_all_equal_structs(state, restored)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    equal &= a.sharding == b.sharding
    for sa, sb in zip(a.addressable_shards, b.addressable_shards):
      equal &= sa.index == sb.index and np.array_equal(np.asarray(sa.data), np.asarray(sb.data))
  # Per-leaf sums of the whole (gathered) params, to compare with a restore on other topologies.
  full_params = multihost_utils.process_allgather(restored.params, tiled=True)
  sums = [float(np.asarray(x, np.float64).sum()) for x in jax.tree.leaves(full_params)]
  print(json.dumps({"process": pid, "losses": losses, "ref_losses": ref_losses,
                    "max_param_diff": max_diff, "param_sums": sums,
                    "restored_equal": bool(equal)}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
