"""The `python -m sml_jax.main` entry point: config errors, the tiny pipeline, SIGKILL + resume."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _main(workdir, *overrides, config="configs/tiny_test.py", timeout=900):
  cmd = [sys.executable, "-m", "sml_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("override, message", [
    ("--config.stages=eval,warmup", "config.stages: unknown stage 'warmup'"),
    ("--config.rl.group_size=1", "config.rl.group_size"),
    ("--config.rl.learning_rate=-0.1", "config.rl.learning_rate"),
    ("--config.model=gemma9", "config.model"),
    ("--config.curricula.math=algebra:1.0", "config.curricula.math: unknown task 'algebra'"),
    ("--config.curricula.math=gsm8k:lots", "config.curricula.math: weight of 'gsm8k' is not a number"),
    ("--config.rl.stepz=3", "stepz"),
])
def test_bad_config_fails_at_start_naming_the_field(tmp_path, override, message):
  proc = _main(tmp_path / "wd", override, timeout=120)
  assert proc.returncode != 0
  if message:
    assert message in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / "wd" / "checkpoints").exists()  # Nothing started.


def test_unknown_task_in_curriculum_is_named(tmp_path):
  cfg = tmp_path / "cfg.py"
  cfg.write_text("from configs.tiny_test import get_config as base\n"
                 "from sml_jax.config import curriculum\n"
                 "def get_config():\n  c = base()\n  c.curricula.math = curriculum(('algebra', 1.0))\n"
                 "  return c\n")
  proc = _main(tmp_path / "wd", config=str(cfg), timeout=120)
  assert proc.returncode != 0
  assert "config.curricula.math: unknown task 'algebra'" in proc.stderr, proc.stderr[-2000:]


def _params(workdir, step=None):
  """(step, params) of checkpoint `step` (default: the last) of a run's workdir."""
  import orbax.checkpoint as ocp
  ckpts = pathlib.Path(workdir) / "checkpoints"
  step = step or max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
  state = ocp.StandardCheckpointer().restore(ckpts / str(step) / "state")
  return step, state["params"]


def _start_then_sigkill(workdir, args, ready, poll=0.2):
  """Starts `python -m sml_jax.main` on the tiny config and SIGKILLs it once `ready()` holds."""
  cmd = [sys.executable, "-m", "sml_jax.main", "--config=configs/tiny_test.py",
         f"--workdir={workdir}", *args]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while time.time() < deadline:
    if ready():
      break
    if proc.poll() is not None:
      pytest.fail("the run ended before it could be killed")
    time.sleep(poll)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_matches_uninterrupted(tmp_path, assert_quiet):
  # SFT on reference solutions: every step moves the params (checked below on the reference
  # run), so the kill lands in an update that changes them. (RL on the random-init tiny model
  # would not do: it never solves a problem, so its groups carry no signal.)
  args = ["--config.stages=sft", "--config.sft.steps=4", "--config.train.checkpoint_every=1",
          "--config.train.keep_checkpoints=4"]
  ref = _main(tmp_path / "ref", *args)
  assert ref.returncode == 0, ref.stderr[-3000:]
  assert_quiet(ref.stdout + ref.stderr)

  wd = tmp_path / "killed"
  metrics = wd / "metrics.jsonl"
  # Kill once two steps are logged (and checkpointed): during step 3 or 4.
  _start_then_sigkill(wd, args, lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2)
  assert len(metrics.read_text().splitlines()) < 4

  resumed = _main(wd, *args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "[resume]" in resumed.stdout
  import chex
  from sml_jax import models
  by_step = [models.load_params("tiny", seed=0)] + [_params(tmp_path / "ref", s)[1]
                                                    for s in (1, 2, 3, 4)]
  chex.assert_trees_all_equal_structs(*by_step)
  for before, after in zip(by_step, by_step[1:]):  # Each update changed the params.
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(jax_leaves(before), jax_leaves(after)))
  step_res, params_res = _params(wd)
  assert step_res == 4
  chex.assert_trees_all_equal(by_step[4], params_res)
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]  # Lines of the killed attempt were replaced.


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


def test_kl_to_the_frozen_initial_policy_is_logged_and_starts_at_zero(tmp_path):
  """sft.kl_beta > 0: every train batch carries the initial policy's log-probs; the first step's
  policy *is* that policy (KL 0), later steps drift from it (KL > 0)."""
  proc = _main(tmp_path / "wd", "--config.stages=sft", "--config.sft.kl_beta=0.1",
               "--config.sft.steps=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
  assert len(rows) == 2 and all("kl" in r for r in rows), rows
  assert abs(rows[0]["kl"]) < 1e-5, rows[0]
  assert rows[1]["kl"] > 1e-4, rows[1]


@pytest.mark.slow
def test_eval_killed_between_batches_resumes_with_the_same_transcripts(tmp_path):
  """A long eval keeps its finished batches (eval/<name>.partial.jsonl): killed and restarted,
  it runs only the rest, and its transcripts equal an uninterrupted run's."""
  args = ["--config.stages=eval_before", "--config.eval.tasks=gsm8k", "--config.eval.num_problems=6",
          "--config.eval.batch_size=1", "--config.eval.max_turns=2"]
  ref = _main(tmp_path / "ref", *args)
  assert ref.returncode == 0, ref.stderr[-3000:]

  wd = tmp_path / "killed"
  partial = wd / "eval" / "before_gsm8k.partial.jsonl"
  # Kill once the first batch is on disk.
  _start_then_sigkill(wd, args, lambda: partial.exists() and partial.read_text().count("\n") >= 1,
                      poll=0.05)
  assert not (wd / "eval" / "before_gsm8k.json").exists()

  resumed = _main(wd, *args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "[resume] eval_before gsm8k:" in resumed.stdout, resumed.stdout[-2000:]
  assert not partial.exists()
  read = lambda d: (d / "eval" / "before_gsm8k.transcripts.jsonl").read_text().splitlines()
  assert len(read(wd)) == 6 and read(wd) == read(tmp_path / "ref")


def test_a_rerun_with_other_flags_says_what_changed_and_keeps_the_earlier_config(tmp_path, capsys):
  """driver.save_config: the same config is rewritten silently; a changed one names the changed
  keys and keeps every earlier config.json (config.1.json, config.2.json, ...)."""
  from configs import tiny_test
  from sml_jax import config as config_lib
  from sml_jax.stages import driver
  c = tiny_test.get_config()
  first = c.to_json_best_effort(indent=2)
  assert driver.save_config(str(tmp_path), first) == []
  assert driver.save_config(str(tmp_path), first) == [] and "[config]" not in capsys.readouterr().out
  c.rl.format_penalty = 0.3
  second = c.to_json_best_effort(indent=2)
  assert driver.save_config(str(tmp_path), second) == ["rl.format_penalty"]
  out = capsys.readouterr().out
  assert "rl.format_penalty (0.0 -> 0.3)" in out and "config.1.json" in out
  c.rl.steps = 9
  assert driver.save_config(str(tmp_path), c.to_json_best_effort(indent=2)) == ["rl.steps"]
  assert (tmp_path / "config.1.json").read_text() == first
  assert (tmp_path / "config.2.json").read_text() == second
  assert json.loads((tmp_path / "config.json").read_text())["rl"]["steps"] == 9
  config_lib.to_spec(c)   # still a valid config
