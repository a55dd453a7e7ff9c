"""Where one online-SML (GRPO) iteration spends its time, for a config (default: the demo's).

    python -m sml_jax.bench rl [--config=configs/demo.py] [--iterations=2] [--json]
                               [--override=rl.problems_per_step=2 ...]

Builds the same `Experiment` as `python -m sml_jax.main` and runs `--iterations` RL iterations
through the driver's own `TrainingStage.iteration` (rollouts with the current params -> GRPO
examples -> batch -> the train step), printing per iteration: student sampling, teacher turns, verification, Q-priming,
training (the first iteration includes compilation; later ones are the steady state). With
--json the last line is one JSON object with a list `iterations` of those splits.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
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
  try:
    spec = config_lib.to_spec(config)
    rl = next((s for s in spec.stages if s.kind == "rl"), None) or config_lib.train_stage_spec(
        config, "rl", "rl")
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  # Heavy imports after the config is known to be good.
  from sml_jax.experiment import Experiment  # pylint: disable=g-import-not-at-top
  from sml_jax.stages import base, rollout  # pylint: disable=g-import-not-at-top
  from sml_jax.stages.trainer import Trainer  # pylint: disable=g-import-not-at-top

  t_setup = time.time()
  exp = Experiment(spec)
  trainer = Trainer(exp)
  state = trainer.start_stage(trainer.initial_state())
  stage = rollout.RLStage(rl)
  ctx = base.Context(exp=exp, trainer=trainer, workdir=tempfile.mkdtemp(prefix="sml_jax_rl_bench_"))
  d = spec.dialogue
  print(f"config {args.config}: model {spec.student.name}, {rl.problems_per_step} problems x group "
        f"{rl.group_size}, {d.max_turns} turns, student {d.student_max_tokens} / teacher "
        f"{d.teacher_max_tokens} tokens, teacher {d.teacher}, compute {spec.compute_dtype} "
        f"(setup {time.time() - t_setup:.0f} s)", flush=True)
  rows = []
  for it in range(args.iterations):
    t0 = time.time()
    # The driver's own iteration: rollouts -> GRPO examples -> batch -> the train step.
    state, m, _ = stage.iteration(ctx, state, step=it)
    seconds = {k: m.get(k, 0.0) for k in ("time_student_s", "time_teacher_s", "time_verify_s",
                                          "time_qprime_s")}
    row = {"iteration": it + 1, "conversations": int(m["num_conversations"]),
           "examples": int(m["num_examples"]), "success_rate": m["success_rate"],
           "rollout_s": m["time_sampling_s"], **{k: round(v, 2) for k, v in seconds.items()},
           "train_tokens": int(m.get("train_tokens", 0)), "training_s": m["time_training_s"],
           "total_s": time.time() - t0}
    rows.append(row)
    other = row["rollout_s"] - sum(seconds.values())
    print(f"iteration {it + 1}{' (incl. compilation)' if it == 0 else ''}: total "
          f"{row['total_s']:.1f} s = student sampling {seconds['time_student_s']:.1f} + teacher "
          f"{seconds['time_teacher_s']:.1f} + verification {seconds['time_verify_s']:.1f} + "
          f"Q-priming {seconds['time_qprime_s']:.1f} + other {other:.1f} + training "
          f"{row['training_s']:.1f} ({row['examples']} examples, {row['train_tokens']} tokens); "
          f"success {row['success_rate']:.2f}", flush=True)
  if args.json:
    print(json.dumps({"config": args.config, "iterations": rows}))
