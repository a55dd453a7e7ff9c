"""The one train step on the `tiny` model: SFT learns, teacher tokens get no gradient,
micro-batch accumulation is exact, PPO at ratio 1 equals SFT/GRPO, LoRA trains only adapters,
and on 8 fake CPU devices sharded steps equal the 1-device step."""

import json
import math
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sml_jax.dialogue import chat_format as cf
from sml_jax.models import registry
from sml_jax.training import batching
from sml_jax.training import optimizer as opt
from sml_jax.training import train_state as ts
from sml_jax.training import train_step as tstep

F32 = dict(compute_dtype="float32")
DIALOGUES = [
    [("user", "What is 2+3?"), ("model", "Is it 6?"), ("user", "No, count again."),
     ("model", "It is 5."), ("user", "Correct.")],
    [("user", "Capital of France?"), ("model", "Paris.")],
    [("user", "Name a prime number."), ("model", "Seven"), ("user", "Yes.")],
    [("user", "Spell cat backwards."), ("model", "tac"), ("user", "Good."), ("model", "Thanks!")],
]


@pytest.fixture(scope="module")
def tiny():
  return registry.build_model("tiny"), registry.load_params("tiny"), registry.load_tokenizer("tiny")


def _examples(tok, dialogues=DIALOGUES, weights=None):
  weights = weights or [1.0] * len(dialogues)
  return [batching.Example(*cf.encode_dialogue(tok, d), weight=w)
          for d, w in zip(dialogues, weights)]


def _grads(model, params, batch, cfg=tstep.TrainConfig(**F32)):
  """Gradient of the (normalised) loss w.r.t. all params."""
  batch = jax.tree.map(jnp.asarray, batch)

  def loss(p):
    s, (d, _) = tstep.micro_batch_loss(p, {}, batch, model=model, cfg=cfg)
    return s / d
  return jax.jit(jax.grad(loss))(params)


def _max_diff(a, b):
  chex.assert_trees_all_equal_structs(a, b)
  return max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_sft_drives_loss_down(tiny):
  model, params, tok = tiny
  batch = batching.make_batch(_examples(tok), buckets=(32, 64))
  ocfg = opt.OptimizerConfig(learning_rate=3e-3, total_steps=20)
  tx = opt.make_optimizer(ocfg)
  step = tstep.make_train_step(model, tx, tstep.TrainConfig(), schedule=opt.make_schedule(ocfg))
  state = ts.create_train_state(model, params, tx)
  losses = []
  for _ in range(6):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert int(state.step) == 6
  assert m["num_student_tokens"] == batch.mask.sum() > 0
  assert losses[-1] < losses[0] - 1.0, losses
  np.testing.assert_allclose(float(m["mean_logprob"]), -losses[-1], rtol=0.05)


def test_teacher_tokens_get_no_gradient(tiny):
  """The loss ignores teacher tokens: rewriting the teacher's text after the last student token
  leaves the gradient unchanged, while rewriting a student token changes it."""
  model, params, tok = tiny
  base = DIALOGUES[0]
  other_teacher = base[:-1] + [("user", "Correct! Well done, that is exactly the sum.")]
  other_student = base[:-2] + [("model", "It is 4."), base[-1]]
  batches = [batching.make_batch(_examples(tok, [d]), buckets=(64,))
             for d in (base, other_teacher, other_student)]
  assert (batches[0].tokens != batches[1].tokens).any()
  g0, g1, g2 = (_grads(model, params, b) for b in batches)
  assert _max_diff(g0, g1) == 0.0
  assert _max_diff(g0, g2) > 1e-3
  # Moving the weight onto teacher tokens does change the gradient (the test can fail).
  weights = ((1 - batches[0].mask) * batches[0].input_mask).astype(np.float32)
  weights[:, 0] = 0
  b = batches[0].replace(weights=weights)
  assert _max_diff(g0, _grads(model, params, b)) > 1e-3


@pytest.mark.parametrize("normaliser,loss", [("tokens", "nll"), ("sequences", "ppo")])
def test_four_micro_batches_equal_one_big_batch(tiny, normaliser, loss):
  model, params, tok = tiny
  advantages = [1.2, -0.4, 0.0, -0.8, 0.5, 1.0, -1.5, 0.3]
  batch = batching.make_batch(_examples(tok, DIALOGUES * 2, advantages), buckets=(64,))
  rng = np.random.default_rng(0)
  batch = batch.replace(old_logprobs=(-rng.uniform(0, 8, batch.shape)).astype(np.float32))
  tx = optax.sgd(1.0)  # Linear in the gradient: compares accumulated gradients directly.
  out = []
  for micro in (1, 4):
    cfg = tstep.TrainConfig(num_micro_batches=micro, normaliser=normaliser, loss=loss, **F32)
    step = tstep.make_train_step(model, tx, cfg)
    state, m = step(ts.create_train_state(model, params, tx), batch)
    out.append((state, m))
  (s1, m1), (s4, m4) = out
  for k in ("loss", "grad_norm", "denominator", "mean_logprob"):
    np.testing.assert_allclose(m4[k], m1[k], rtol=1e-5, err_msg=k)
  grad_1 = jax.tree.map(jnp.subtract, params, s1.params)
  grad_4 = jax.tree.map(jnp.subtract, params, s4.params)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad_1))
  assert scale > 1e-5 and _max_diff(grad_1, grad_4) < 1e-5 * scale


def test_ppo_at_ratio_one_equals_nll_and_kl_is_zero_against_itself(tiny):
  """On-policy (old = current log-probs, ref = current): PPO + KL gives the GRPO/SFT update."""
  model, params, tok = tiny
  batch = batching.make_batch(_examples(tok, weights=[1.0, -1.0, 0.5, -0.5]), buckets=(64,))
  logp = tstep.make_logprob_fn(model, tstep.TrainConfig(**F32))(params, batch)
  assert logp.shape == batch.tokens.shape and (logp[:, 0] == 0).all()
  assert (np.asarray(logp)[batch.mask > 0] < 0).all()
  batch = batch.replace(old_logprobs=np.asarray(logp), ref_logprobs=np.asarray(logp))
  tx = optax.sgd(1.0)
  out = {}
  for cfg in (tstep.TrainConfig(**F32), tstep.TrainConfig(loss="ppo", kl_beta=0.5, **F32)):
    step = tstep.make_train_step(model, tx, cfg)
    out[cfg.loss] = step(ts.create_train_state(model, params, tx), batch)
  (s_nll, m_nll), (s_ppo, m_ppo) = out["nll"], out["ppo"]
  assert _max_diff(s_nll.params, s_ppo.params) < 1e-5
  np.testing.assert_allclose(m_ppo["grad_norm"], m_nll["grad_norm"], rtol=1e-5)
  np.testing.assert_allclose(m_nll["mean_logprob"], (logp * batch.mask).sum() /
                             batch.mask.sum(), rtol=1e-5)
  assert abs(float(m_ppo["kl"])) < 1e-5 and float(m_ppo["clip_fraction"]) == 0.0


def test_lora_trains_only_adapters(tiny):
  _, params, tok = tiny
  model = registry.build_model("tiny", lora_rank=4)
  tx = opt.make_optimizer(opt.OptimizerConfig(learning_rate=1e-2))
  state = ts.create_train_state(model, params, tx)
  frozen_before = jax.tree.map(np.asarray, state.frozen)
  lora_before = jax.tree.map(np.asarray, state.params)
  assert all("lora" in jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_leaves_with_path(state.params))
  step = tstep.make_train_step(model, tx, tstep.TrainConfig())
  batch = batching.make_batch(_examples(tok), buckets=(64,))
  # LoRA starts as the base model (B = 0): its log-probs are the base model's.
  logp_fn = tstep.make_logprob_fn(model)
  np.testing.assert_allclose(logp_fn(state.full_params(), batch),
                             tstep.make_logprob_fn(registry.build_model("tiny"))(params, batch),
                             atol=1e-5)
  losses = []
  for _ in range(3):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert _max_diff(state.frozen, frozen_before) == 0.0
  assert _max_diff(state.params, lora_before) > 0.0
  assert losses[-1] < losses[0]


def test_bad_batches_and_configs(tiny):
  model, params, tok = tiny
  tx = opt.make_optimizer(opt.OptimizerConfig())
  batch = batching.make_batch(_examples(tok)[:3], buckets=(64,))
  step = tstep.make_train_step(model, tx, tstep.TrainConfig(num_micro_batches=2))
  state = ts.create_train_state(model, params, tx)
  with pytest.raises(ValueError, match="multiple of num_micro_batches"):
    step(state, batch)
  with pytest.raises(ValueError, match="old_logprobs"):
    tstep.make_train_step(model, tx, tstep.TrainConfig(loss="ppo"))(state, batch)
  with pytest.raises(ValueError, match="weights"):
    step(state, batch.replace(weights=None))
  with pytest.raises(TypeError, match="batching.Batch"):
    step(state, batch.arrays())
  for kwargs, field in [({"loss": "dpo"}, "TrainConfig.loss"), ({"kl_beta": -1}, "kl_beta"),
                        ({"num_micro_batches": 0}, "num_micro_batches"),
                        ({"compute_dtype": "float16"}, "compute_dtype")]:
    with pytest.raises(ValueError, match=field):
      tstep.TrainConfig(**kwargs)


# Run with the other 8-device programs in one subprocess (tests/eight_devices.py).
SHARDED_PROGRAM = textwrap.dedent("""
    import chex, jax, numpy as np
    from sml_jax.dialogue import chat_format as cf
    from sml_jax.models import registry
    from sml_jax.parallel.mesh import make_mesh
    from sml_jax.training import batching, optimizer as opt, train_state as ts, train_step as tstep
    assert jax.device_count() == 8, jax.devices()
    model, params, tok = registry.build_model("tiny"), registry.load_params("tiny"), \\
        registry.load_tokenizer("tiny")
    dialogues = {dialogues!r}
    exs = [batching.Example(*cf.encode_dialogue(tok, d), weight=w)
           for d, w in zip(dialogues * 2, [1.0, -0.5, 0.7, -1.2, 0.4, 0.9, -0.3, 1.1])]
    batch = batching.make_batch(exs, buckets=(64,))
    tx = opt.make_optimizer(opt.OptimizerConfig(learning_rate=1e-3))
    def run(mesh, micro):
      cfg = tstep.TrainConfig(num_micro_batches=micro, compute_dtype="float32")
      state = ts.create_train_state(model, params, tx)
      if mesh is not None:
        state = ts.shard_train_state(state, mesh)
      step = tstep.make_train_step(model, tx, cfg, mesh=mesh)
      for _ in range(2):
        state, m = step(state, batch)
      return jax.device_get(state.params), {{k: float(v) for k, v in m.items()}}, state
    ref_params, ref_m, _ = run(None, 1)
    ref2_params, ref2_m, _ = run(None, 2)
    for shape, micro, (rp, rm) in [((8, 1, 1), 1, (ref_params, ref_m)),
                                   ((2, 2, 2), 2, (ref2_params, ref2_m))]:
      mesh = make_mesh(*shape)
      p, m, state = run(mesh, micro)
      emb = state.params["embedder"]["input_embedding"]
      assert len(emb.sharding.device_set) == 8
      chex.assert_trees_all_equal_structs(p, rp)
      d = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(rp)))
      print("mesh", shape, "micro", micro, "max param diff", d, "loss", m["loss"], rm["loss"],
            "sharding", emb.sharding.spec)
      # Adam moves near-zero gradients by ~lr * sign(g): allow 2% of one step's lr (1e-3).
      assert d < 2e-5, d
      for k in rm:
        assert abs(m[k] - rm[k]) <= 1e-5 * max(1.0, abs(rm[k])), (k, m[k], rm[k])
    print("OK")
""").format(dialogues=DIALOGUES)


@pytest.mark.slow
def test_sharded_step_on_8_fake_devices_equals_one_device(eight_devices):
  stdout = eight_devices("train_step_8_1_1_and_2_2_2")
  assert "OK" in stdout
  print(stdout)


@pytest.mark.slow
def test_train_bench_json_on_tiny(capsys):
  from sml_jax.bench import train_bench  # pylint: disable=g-import-not-at-top
  # Rank 4 as in test_lora_trains_only_adapters: gemma's nn.jit caches the inner model's trace
  # by module equality, so a second LoRA rank of the same base model in one process reuses the
  # first rank's trace (a gemma pitfall; one rank per process is fine).
  train_bench.main(["--model", "tiny", "--batch", "2", "--seq", "32", "--steps", "1",
                    "--peak-size", "512", "--lora-rank", "4", "--json"])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["peak_flops"] > 0 and set(out["mfu"]) == {"lora", "full"}
  for v in ("lora", "full"):
    assert out["tokens_per_s"][v] > 0 and 0 < out["mfu"][v] < 2
    assert out["variants"][v]["xla_temp_gb"] > 0
  assert out["variants"]["lora"]["trainable_params"] < out["variants"]["full"]["trainable_params"]
  with pytest.raises(SystemExit):
    train_bench.main(["--variants", "qlora"])


def test_rl_bench_splits_an_iteration_on_tiny():
  """`python -m sml_jax.bench rl`: the stage loop's RL iteration, timed by part, and our train
  step against the plain one on its batch (same loss: the bench checks exactness too)."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, "-m", "sml_jax.bench", "rl", "--config=configs/tiny_test.py",
       "--iterations=1", "--problems=2", "--override=dialogue.teacher=scripted",
       "--json"], capture_output=True, text=True, timeout=600, cwd=repo)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "student sampling" in proc.stdout and "training" in proc.stdout
  assert "hardware ceiling" in proc.stdout
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  (row,) = out["iterations"]
  assert row["conversations"] == 2 * 2  # problems x group size of tiny_test
  for part in ("time_student_s", "time_teacher_s", "time_verify_s", "rollout_s", "training_s"):
    assert row[part] >= 0
  assert row["time_student_s"] > 0 and row["rollout_s"] >= row["time_student_s"]
  # tiny's iteration may carry no RL signal (then no update, no compile time to report).
  assert ("time_compile_s" in row) == (row["train_tokens"] > 0), row
  for key in ("iteration_s", "time_sampling_s", "time_training_s", "train_tokens_per_s",
              "reference_train_tokens_per_s", "padding_fraction"):
    assert out[key] is not None and out[key] >= 0, key
  # Ours computes fewer slots: packed rows of the suffixes after the prefix all conversations
  # share (forwarded once; its rows' padding fraction may exceed the plain batch's).
  assert out["shared_prefix_tokens"] >= 32 and 0 <= out["padding_fraction"] < 1
  assert math.prod(out["batch_shape"]) < math.prod(out["reference_batch_shape"])
  assert abs(out["loss"] - out["reference_loss"]) <= 1e-4 * abs(out["reference_loss"])
  # Group spans (a problem's statement once per row) are used when they save rows; then the
  # step without them is timed too, to the same loss.
  if out["shared_span_tokens"]:
    assert abs(out["prefix_only_loss"] - out["reference_loss"]) <= 1e-4 * abs(
        out["reference_loss"])
    assert out["group_span_speedup"] > 0
  else:
    assert "prefix_only_loss" not in out and "group_span_speedup" not in out
  if out["comparison_examples"] == "rl":   # The rollouts again, ours and the plain decode.
    assert out["reference_same_rollouts"] == 1.0
    assert out["reference_iteration_s"] > 0 and out["iteration_speedup"] > 0
  # A bad override is a clear error before anything runs (in-process: no second interpreter).
  from sml_jax.bench import rl_bench
  with pytest.raises(SystemExit, match="stepz"):
    rl_bench.load_config(os.path.join(repo, "configs/tiny_test.py"), ["rl.stepz=3"])
