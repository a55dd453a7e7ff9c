"""The real-scale path on CPU: two hosts, a gs:// workdir, kills and preemption (issue 15).

Two `python -m sml_jax.main` processes (one CPU device each, `jax.distributed` on loopback) run
the tiny config with their workdir on `gs://bkt/...`, served by a local GCS-API server
(fake-gcs-server, `gcs_server.py`) on 127.0.0.1. Every client is pointed at it by the
environment (`gcs_server.client_env`) and a start-up hook (`loopback_guard/`) refuses any Python
connection outside loopback, so nothing reaches a metadata server or the internet.

1. Both processes SIGKILLed mid-run, rerun: they resume from the bucket and end with the params
   of an uninterrupted run; checkpoints, metrics, TensorBoard, rollouts, evals and the report
   are all in the bucket.
2. Only process 1 gets SIGTERM in the middle of its rollouts: both stop within seconds, save and
   exit cleanly; the rerun resumes from that checkpoint to the same final params.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from gcs_server import GUARD_DIR, LocalGCS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "bkt"
# eval_before is skipped (SFT moves the random-init params; RL rolls out but the tiny model never
# solves a problem, so its groups carry no signal: the params stay those after SFT).
ARGS = ["--config=configs/tiny_test.py", "--config.stages=sft,rl,eval_after",
        "--config.sft.steps=2", "--config.rl.steps=3", "--config.train.checkpoint_every=1",
        "--config.train.keep_checkpoints=10", "--config.eval.num_problems=4",
        "--config.eval.batch_size=2", "--config.dialogue.max_turns=3",
        "--config.dialogue.student_max_tokens=12"]
FINAL_ITERATION = 5
TIMEOUT = 600

pytestmark = [pytest.mark.realscale, pytest.mark.slow]


class TwoHosts:
  """`python -m sml_jax.main ARGS --workdir=URL` as processes 0 and 1 of one JAX job."""

  def __init__(self, env: dict, workdir: str, log_dir: str):
    port = _free_port()
    self.procs, self.lines, self._threads = [], [[], []], []
    for pid in range(2):
      penv = dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                  JAX_PROCESS_ID=str(pid))
      err = open(os.path.join(log_dir, f"stderr_{pid}.txt"), "w")  # pylint: disable=consider-using-with
      p = subprocess.Popen([sys.executable, "-u", "-m", "sml_jax.main", *ARGS,
                            f"--workdir={workdir}"], env=penv, cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=err)
      self.procs.append(p)
      t = threading.Thread(target=self._pump, args=(p, self.lines[pid]), daemon=True)
      t.start()
      self._threads.append(t)
    self.log_dir = log_dir

  @staticmethod
  def _pump(p, lines):
    for line in p.stdout:
      lines.append(line)

  def stdout(self, pid: int) -> str:
    return "".join(self.lines[pid])

  def stderr(self, pid: int) -> str:
    with open(os.path.join(self.log_dir, f"stderr_{pid}.txt")) as f:
      return f.read()

  def wait_for(self, pid: int, text: str, timeout: float = TIMEOUT) -> None:
    deadline = time.time() + timeout
    while text not in self.stdout(pid):
      if time.time() > deadline or any(p.poll() is not None for p in self.procs):
        self.kill()
        pytest.fail(f"never saw {text!r} from process {pid}:\n{self.stdout(pid)[-3000:]}\n"
                    f"{self.stderr(pid)[-3000:]}")
      time.sleep(0.05)

  def wait(self, timeout: float = TIMEOUT) -> list[int]:
    try:
      codes = [p.wait(timeout=timeout) for p in self.procs]
    finally:
      self.kill()
    for t in self._threads:
      t.join(timeout=10)
    return codes

  def kill(self) -> None:
    for p in self.procs:   # Never leave a worker behind (its peer died and it waits forever).
      if p.poll() is None:
        p.kill()
        p.wait()

  def check_ok(self) -> None:
    codes = self.wait()
    for pid, code in enumerate(codes):
      assert code == 0, f"process {pid} failed ({code}):\n{self.stdout(pid)[-3000:]}\n" \
                        f"{self.stderr(pid)[-6000:]}"
    for pid in range(2):
      assert "LOOPBACK GUARD" not in self.stderr(pid), self.stderr(pid)[-3000:]


def _free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


_DIGEST = """
import hashlib, json, sys
import numpy as np
import jax
from configs import tiny_test
from sml_jax import config as config_lib
from sml_jax.models import registry
from sml_jax.stages import trainer
from sml_jax.training import train_state as ts
from sml_jax.training.checkpointing import Checkpointer
spec = config_lib.to_spec(tiny_test.get_config())
target = ts.create_train_state(registry.build_model("tiny"), registry.load_params("tiny"),
                               trainer.make_run_optimizer(spec.optimizer))
out = {}
for workdir in sys.argv[1:]:
  ckpt = Checkpointer(workdir)
  step = ckpt.latest_step()
  state, extra = ckpt.restore(step, target)
  ckpt.close()
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(state.params):
    h.update(np.asarray(leaf).tobytes())
  out[workdir] = {"step": step, "extra": extra, "params_sha256": h.hexdigest()}
print(json.dumps(out))
"""


def _latest_checkpoints(env: dict, *workdirs: str) -> dict:
  """{workdir: {"step", "extra", "params_sha256"}} of each workdir's newest checkpoint, restored
  from the bucket in a subprocess with the same environment (one device)."""
  proc = subprocess.run([sys.executable, "-c", _DIGEST, *workdirs], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "LOOPBACK GUARD" not in proc.stderr, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The local server with bucket `bkt`, the environment of every process, and the newest
  checkpoint of an uninterrupted two-host run on gs://bkt/ref."""
  root = tmp_path_factory.mktemp("gcs")
  with LocalGCS(str(root)) as server:
    server.create_bucket(BUCKET)
    env = dict(os.environ, **server.env(), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1",
               PYTHONPATH=os.pathsep.join([GUARD_DIR, REPO]),
               # The five runs compile the same programs: JAX's persistent cache shares them.
               JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    ref = TwoHosts(env, f"gs://{BUCKET}/ref", str(root))
    ref.check_ok()
    digest = _latest_checkpoints(env, f"gs://{BUCKET}/ref")[f"gs://{BUCKET}/ref"]
    assert digest["step"] == FINAL_ITERATION
    yield server, env, digest


def _checkpoint_steps(server, prefix: str) -> set[int]:
  """Checkpoint steps committed in the bucket (orbax marks a finished one on GCS with
  commit_success.txt in its step directory)."""
  names = server.list(BUCKET, f"{prefix}/checkpoints/")
  return {int(n.split("/")[2]) for n in names
          if n.split("/")[2].isdigit() and n.endswith("/commit_success.txt")
          and n.count("/") == 3}


def test_two_hosts_on_a_gcs_workdir_killed_then_resumed(gcs, tmp_path):
  server, env, ref = gcs
  # Everything the run writes is in the bucket (the uninterrupted reference run).
  names = server.list(BUCKET, "ref/")
  for expected in ("ref/metrics.jsonl", "ref/config.json", "ref/report.md",
                   "ref/transcripts.html", "ref/eval/after_arithmetic.json",
                   "ref/eval/after_arithmetic.transcripts.jsonl",
                   "ref/rollouts/rl/step_00002.jsonl", "ref/rollouts/sft/step_00000.jsonl"):
    assert expected in names, (expected, names)
  assert any(n.startswith("ref/tensorboard/events.out.tfevents") for n in names), names
  assert {"ref/checkpoints/5/state/ocdbt.process_0", "ref/checkpoints/5/state/ocdbt.process_1"} \
      <= {n.rsplit("/", 1)[0] for n in names}   # Both hosts wrote their shards to the bucket.
  rows = [json.loads(x) for x in server.read(BUCKET, "ref/metrics.jsonl").decode().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, FINAL_ITERATION + 1))
  assert "Workdir: `gs://bkt/ref`" in server.read(BUCKET, "ref/report.md").decode()

  # Killed (SIGKILL, both hosts) once the checkpoint of iteration 2 is in the bucket.
  run = TwoHosts(env, f"gs://{BUCKET}/run", str(tmp_path))
  deadline = time.time() + TIMEOUT
  while 2 not in _checkpoint_steps(server, "run"):
    assert time.time() < deadline and all(p.poll() is None for p in run.procs), run.stderr(0)[-3000:]
    time.sleep(0.2)
  run.kill()
  assert FINAL_ITERATION not in _checkpoint_steps(server, "run")

  again = TwoHosts(env, f"gs://{BUCKET}/run", str(tmp_path))
  again.check_ok()
  assert "[resume] from iteration" in again.stdout(0) and "[resume] from iteration" in again.stdout(1)
  got = _latest_checkpoints(env, f"gs://{BUCKET}/run")[f"gs://{BUCKET}/run"]
  assert got["step"] == FINAL_ITERATION
  assert got["params_sha256"] == ref["params_sha256"]
  rows = [json.loads(x) for x in server.read(BUCKET, "run/metrics.jsonl").decode().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, FINAL_ITERATION + 1))   # No duplicate rows.


def test_sigterm_on_one_host_mid_rollout_stops_both_within_seconds(gcs, tmp_path):
  server, env, ref = gcs
  run = TwoHosts(env, f"gs://{BUCKET}/preempt", str(tmp_path))
  # Process 1 announces each iteration before its rollouts; RL step 1 is iteration 4.
  run.wait_for(1, "[host 1/2] rl step 1: problems")
  t_signal = time.time()
  os.kill(run.procs[1].pid, signal.SIGTERM)
  codes = run.wait(timeout=120)
  seconds = time.time() - t_signal
  print(f"both hosts saved and exited {seconds:.1f} s after the SIGTERM")
  assert codes == [0, 0], (run.stderr(0)[-3000:], run.stderr(1)[-3000:])
  # Normally both hosts stop RL step 1's rollouts at their next turn (the notice reaches the
  # coordination service within about a second); on a loaded machine the short tiny rollout may
  # end first, and the check between steps stops them after step 1's update instead.
  mid_rollout = "[preempted] rl step 1: rollouts stopped" in run.stdout(0)
  for pid in range(2):
    out = run.stdout(pid)
    assert ("[preempted] rl step 1: rollouts stopped" in out) == mid_rollout, out[-3000:]
    assert "[preempted] checkpoint saved; exiting" in out, out[-3000:]
    assert "LOOPBACK GUARD" not in run.stderr(pid)
  print(f"stopped {'mid-rollout' if mid_rollout else 'between steps'}")
  assert seconds < 60, seconds
  saved = _latest_checkpoints(env, f"gs://{BUCKET}/preempt")[f"gs://{BUCKET}/preempt"]
  # sft 2 + rl 1 (mid-rollout: the last finished iteration), or + rl 2 (between steps).
  resume_at = 3 if mid_rollout else 4
  assert saved["step"] == resume_at
  assert saved["extra"] == {"stage_index": 1, "stage_step": resume_at - 2, "iteration": resume_at}

  again = TwoHosts(env, f"gs://{BUCKET}/preempt", str(tmp_path))
  again.check_ok()
  assert f"[resume] from iteration {resume_at}" in again.stdout(0)
  got = _latest_checkpoints(env, f"gs://{BUCKET}/preempt")[f"gs://{BUCKET}/preempt"]
  assert (got["step"], got["params_sha256"]) == (FINAL_ITERATION, ref["params_sha256"])
