"""A two-process `jax.distributed` run on this machine (CPU, loopback): the project's train step
on a mesh spanning both processes, then an orbax checkpoint written by both and restored.

The worker (`tests/multihost_worker.py`) checks its 2 sharded steps against the same steps on
one device and that the restored state equals the saved one, shard by shard; here we check both
processes agree, both wrote their shards, and the checkpoint also restores on a single device.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "multihost_worker.py")
TIMEOUT = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_two_processes(workdir: str) -> list[dict]:
  port = _free_port()
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs.append(subprocess.Popen([sys.executable, WORKER, workdir], env=env, cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=TIMEOUT)
      outs.append((p.returncode, out, err))
  finally:
    for p in procs:  # Never leave a worker behind (e.g. its peer died and it waits forever).
      if p.poll() is None:
        p.kill()
        p.wait()
  for pid, (code, out, err) in enumerate(outs):
    assert code == 0, f"process {pid} failed ({code}):\n{out[-2000:]}\n{err[-6000:]}"
  return [json.loads(out.strip().splitlines()[-1]) for _, out, _ in outs]


@pytest.mark.slow
def test_two_process_train_steps_and_sharded_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  r0, r1 = _run_two_processes(workdir)
  print(r0["losses"], r0["max_param_diff"], r1["max_param_diff"])
  assert (r0["process"], r1["process"]) == (0, 1)
  assert r0["losses"] == r1["losses"] and len(r0["losses"]) == 2
  np.testing.assert_allclose(r0["losses"], r0["ref_losses"], rtol=1e-5)
  assert r0["restored_equal"] and r1["restored_equal"]
  assert r0["param_sums"] == r1["param_sums"]
  state_dir = os.path.join(workdir, "checkpoints", "2", "state")
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(state_dir))

  # The same checkpoint restores on one device (another topology), to the same values.
  import jax
  from sml_jax.models import registry
  from sml_jax.training import optimizer as opt
  from sml_jax.training import train_state as ts
  from sml_jax.training.checkpointing import Checkpointer
  tx = opt.make_optimizer(opt.OptimizerConfig(learning_rate=1e-3))
  target = ts.create_train_state(registry.build_model("tiny"), registry.load_params("tiny"), tx)
  ckpt = Checkpointer(workdir)
  state, extra = ckpt.restore(2, target)
  ckpt.close()
  assert extra["losses"] == r0["losses"]
  sums = [float(np.asarray(x, np.float64).sum()) for x in jax.tree.leaves(state.params)]
  np.testing.assert_allclose(sums, r0["param_sums"], rtol=1e-12)
