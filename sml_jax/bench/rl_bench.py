"""Where one online-SML (GRPO) iteration spends its time, for a config (default: the demo's).

    python -m sml_jax.bench rl [--config=configs/demo.py] [--iterations=2] [--json]
                               [--override=rl.problems_per_step=2 ...]

Builds the same `Experiment` as `python -m sml_jax.main` and runs `--iterations` RL iterations
exactly as the stage loop does (rollouts with the current params -> GRPO examples -> the one
train step), printing per iteration: student sampling, teacher turns, verification, Q-priming,
training (the first iteration includes compilation; later ones are the steady state). With
--json the last line is one JSON object with a list `iterations` of those splits.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m sml_jax.bench rl", description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/demo.py")
  p.add_argument("--iterations", type=int, default=2)
  p.add_argument("--override", action="append", default=[],
                 help="config override KEY=VALUE (as --config.KEY=VALUE of sml_jax.main)")
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)
  if args.iterations < 1:
    p.error("--iterations must be >= 1")
  return args


def load_config(path: str, overrides):
  """The config file's `get_config()` with KEY=VALUE overrides (values parsed like absl does)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import ast  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise SystemExit(f"error: --config file not found: {path}")
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  flat = {}
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise SystemExit(f"error: --override needs KEY=VALUE, got {item!r}")
    try:
      flat[key] = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      flat[key] = raw  # A bare string, e.g. teacher=scripted.
  config.lock()  # Unknown keys are errors, as with --config.x=y.
  try:
    config.update_from_flattened_dict(flat)
  except (KeyError, TypeError, ValueError) as e:
    raise SystemExit(f"error: --override: {e}") from None
  config.unlock()
  return config


def main(argv) -> None:
  args = parse_args(argv)
  from sml_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = load_config(args.config, args.override)
  config_lib.validate(config)
  from sml_jax import runner  # pylint: disable=g-import-not-at-top
  from sml_jax.runner import _curriculum  # pylint: disable=g-import-not-at-top
  from sml_jax.tasks import registry as tasks  # pylint: disable=g-import-not-at-top
  from sml_jax.training import batching, loop  # pylint: disable=g-import-not-at-top
  from sml_jax.training.train_state import create_train_state, shard_train_state  # pylint: disable=g-import-not-at-top
  from sml_jax.training.train_step import TrainConfig  # pylint: disable=g-import-not-at-top

  t_setup = time.time()
  exp = runner.Experiment(config, tempfile.mkdtemp(prefix="sml_jax_rl_bench_"))
  tx = loop.make_optimizer(config.optimizer)
  state = shard_train_state(create_train_state(exp.model, exp.base_params, tx, seed=config.seed),
                            exp.mesh)
  state = loop.set_learning_rate(state, config.rl.learning_rate)
  steps = loop._Steps(exp, tx, TrainConfig(compute_dtype=config.compute_dtype))  # pylint: disable=protected-access
  st = config.rl
  print(f"config {args.config}: model {config.model}, {st.problems_per_step} problems x group "
        f"{st.group_size}, {config.dialogue.max_turns} turns, student {config.dialogue.student_max_tokens}"
        f" / teacher {config.dialogue.teacher_max_tokens} tokens, teacher {config.dialogue.teacher}, "
        f"compute {config.compute_dtype} (setup {time.time() - t_setup:.0f} s)", flush=True)
  rows = []
  for it in range(args.iterations):
    seed = 1000 + it
    problems = tasks.sample_problems(_curriculum(config, st.curriculum), st.problems_per_step, seed)
    t0 = time.time()
    examples, convs, seconds = runner.collect_examples(exp, "rl", st, state, problems, seed)
    t1 = time.time()
    row = {"iteration": it + 1, "conversations": len(convs), "examples": len(examples),
           "success_rate": sum(c.solved_turn is not None for c in convs) / max(len(convs), 1),
           "rollout_s": t1 - t0, **{k: round(v, 2) for k, v in seconds.items()}}
    if examples:
      batch = batching.make_batch(examples, max_len=config.train.max_len,
                                  batch_multiple=config.train.micro_batch_size)
      state, metrics = steps(state, batch)
      float(metrics["loss"])  # Waits for the step.
      row["train_tokens"] = int(batch.input_mask.sum())
      row["batch_shape"] = list(batch.tokens.shape)
    row["training_s"] = time.time() - t1
    row["total_s"] = time.time() - t0
    rows.append(row)
    other = row["rollout_s"] - sum(seconds.values())
    print(f"iteration {it + 1}{' (incl. compilation)' if it == 0 else ''}: total "
          f"{row['total_s']:.1f} s = student sampling {seconds['time_student_s']:.1f} + teacher "
          f"{seconds['time_teacher_s']:.1f} + verification {seconds['time_verify_s']:.1f} + "
          f"Q-priming {seconds['time_qprime_s']:.1f} + other {other:.1f} + training "
          f"{row['training_s']:.1f} ({len(examples)} examples, {row.get('train_tokens', 0)} tokens); "
          f"success {row['success_rate']:.2f}", flush=True)
  if args.json:
    print(json.dumps({"config": args.config, "iterations": rows}))
