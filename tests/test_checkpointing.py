"""Checkpoints (exact round trip, keep K, every N, exact resume, SIGTERM save) and metrics files."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import chex
import jax
import numpy as np
import pytest

from sml_jax.dialogue import chat_format as cf
from sml_jax.models import registry
from sml_jax.training import batching, checkpointing, metrics
from sml_jax.training import optimizer as opt
from sml_jax.training import train_state as ts
from sml_jax.training import train_step as tstep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trees_equal(a, b) -> bool:
  """Same structure (chex names the first differing path), shapes, dtypes and values."""
  chex.assert_trees_all_equal_structs(a, b)
  chex.assert_trees_all_equal_shapes_and_dtypes(a, b)
  chex.assert_trees_all_equal(a, b, strict=True)
  return True


@pytest.fixture(scope="module")
def setup():
  model, params, tok = (registry.build_model("tiny"), registry.load_params("tiny"),
                        registry.load_tokenizer("tiny"))
  dialogues = [[("user", "2+2?"), ("model", "4"), ("user", "Yes.")],
               [("user", "Capital of Italy?"), ("model", "Rome.")]]
  batches = [batching.make_batch([batching.Example(*cf.encode_dialogue(tok, d), weight=w)
                                  for d in dialogues], buckets=(32,)) for w in (1.0, 0.5, -0.7)]
  ocfg = opt.OptimizerConfig(learning_rate=1e-3, warmup_steps=1, total_steps=10)
  tx = opt.make_optimizer(ocfg)
  step = tstep.make_train_step(model, tx, tstep.TrainConfig(compute_dtype="float32"))
  return model, params, tx, step, batches


def test_round_trip_is_exact_and_resume_matches_uninterrupted(setup, tmp_path):
  model, params, tx, step, batches = setup
  # Uninterrupted: 3 steps over the data stream.
  state = ts.create_train_state(model, params, tx, seed=7)
  for b in batches:
    state, _ = step(state, b)
  final = jax.device_get(state)

  # Interrupted after step 1: save, "crash", restore into a fresh state, continue.
  state = ts.create_train_state(model, params, tx, seed=7)
  state, _ = step(state, batches[0])
  state, key = state.next_rng()
  ckpt = checkpointing.Checkpointer(tmp_path, every=1, keep=2)
  ckpt.save(int(state.step), state, {"data_position": 1, "stage": "rl"})
  saved = jax.device_get(state)
  fresh = ts.create_train_state(model, params, tx, seed=0)
  restored, extra = checkpointing.Checkpointer(tmp_path).restore_latest(fresh)
  assert extra == {"data_position": 1, "stage": "rl"}
  assert _trees_equal(restored, saved)  # params, opt state, step, RNG: bit for bit.
  assert int(restored.step) == 1 and not np.array_equal(restored.rng, fresh.rng)
  restored_key = restored.next_rng()[1]
  assert np.array_equal(jax.random.key_data(restored_key), jax.random.key_data(state.next_rng()[1]))
  state = restored
  for b in batches[extra["data_position"]:]:
    state, _ = step(state, b)
  # Same params and optimizer state as the run that was never interrupted (the RNG differs only
  # because this run drew a key before saving).
  assert _trees_equal(jax.device_get(state.params), final.params)
  assert _trees_equal(jax.device_get(state.opt_state), final.opt_state)


def test_every_n_and_keep_k(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path, every=2, keep=2)
  state = {"w": np.arange(3.0, dtype=np.float32)}
  assert ckpt.restore_latest(state) is None
  for s in range(1, 8):
    assert not ckpt.maybe_save(s, {"w": state["w"] + s}, {"data_position": s})
  assert ckpt.all_steps() == [4, 6]
  restored, extra = ckpt.restore_latest(state)
  np.testing.assert_array_equal(restored["w"], state["w"] + 6)
  assert extra == {"data_position": 6}
  with pytest.raises(ValueError, match="every"):
    checkpointing.Checkpointer(tmp_path, every=0)
  with pytest.raises(ValueError, match="keep"):
    checkpointing.Checkpointer(tmp_path, keep=0)


_SIGTERM_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from sml_jax.training import checkpointing
    ckpt = checkpointing.Checkpointer(sys.argv[1], every=1000, keep=2)
    ckpt.install_sigterm_handler()
    w = np.zeros(4, np.float32)
    for step in range(1, 100000):
      w = w + 1                                    # "train"
      time.sleep(0.01)
      if step == 5:
        print("ready", flush=True)
      if ckpt.maybe_save(step, {"w": w}, {"data_position": step}):
        print("stopped at", step, flush=True)
        sys.exit(0)
    sys.exit(3)
""")


def test_sigterm_saves_and_stops(tmp_path):
  proc = subprocess.Popen([sys.executable, "-c", _SIGTERM_SCRIPT, str(tmp_path)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-3000:]
  stopped = int(out.split("stopped at")[1])
  ckpt = checkpointing.Checkpointer(tmp_path)
  assert ckpt.all_steps() == [stopped]  # Saved only because of the SIGTERM (every=1000).
  restored, extra = ckpt.restore_latest({"w": np.zeros(4, np.float32)})
  np.testing.assert_array_equal(restored["w"], np.full(4, stopped, np.float32))
  assert extra == {"data_position": stopped}


def test_metrics_jsonl_tensorboard_and_resume(tmp_path):
  with metrics.MetricsWriter(tmp_path, total_steps=5, progress=True) as w:
    for s in range(1, 5):
      w.write(s, {"stage": "rl", "loss": np.float32(1.0 / s), "reward_mean": jax.numpy.array(0.5),
                  "tokens_per_s": 100, "nan": float("nan")})
  rows = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert rows[1]["loss"] == pytest.approx(0.5) and rows[0]["stage"] == "rl"
  assert rows[0]["nan"] == "nan"
  assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
  events = [f for _, _, fs in os.walk(tmp_path / "tensorboard") for f in fs]
  assert any(f.startswith("events.out.tfevents") for f in events)
  # A run restored at step 2 drops the lines the interrupted run wrote after it.
  with metrics.MetricsWriter(tmp_path, resume_step=2, tensorboard=False, progress=False) as w:
    w.write(3, {"loss": 9.0})
  rows = metrics.read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] == 9.0
  with pytest.raises(TypeError, match="'bad'"):
    metrics.MetricsWriter(tmp_path, tensorboard=False, progress=False).write(5, {"bad": [1, 2]})
