"""Where one online-SML (GRPO) iteration spends its time, for a config (default: the demo's),
and our train step against the plain one on that iteration's batch.

    python -m sml_jax.bench rl [--config=configs/demo.py] [--iterations=1] [--problems=N] [--json]
                               [--override=rl.problems_per_step=2 ...] [--no-reference]
                               [--no-plain-step]

Builds the same `Experiment` as `python -m sml_jax.main` and runs `--iterations` RL iterations
through the driver's own `TrainingStage.iteration` (rollouts with the current params -> GRPO
examples -> batch -> the train step), printing per iteration: student sampling, teacher turns,
verification, Q-priming, training (the first iteration includes compilation; later ones are the
steady state). Then, on the last iteration's examples and the state before its update, one
step of each, compiled first and timed apart from compilation:

  ours   packed rows, logits only at targets with a non-zero mask / weight, the prefix every
         conversation shares forwarded once per step (`Trainer.batch`, `train.share_prefix`),
         each group's span after it once per row (`train.share_group_prefix`; when the batch
         has any, also timed without them: `prefix_only_*`, `group_span_speedup`)
  plain  one conversation per row, full-sequence forward + backward, logits at every position,
         no prefix sharing

and the iteration's rollouts again (same params and seed), ours and with the plain decode
(every row decoded until the turn's longest row stops: `sampler.live_rows_min_batch=0`).
`reference_iteration_s` is the iteration with both plain parts swapped in (warm differences).

Both start from the same state, so their losses must agree (printed: a built-in exactness check).
`train_tokens_per_s` counts the conversations' real (non-pad) tokens, the same for both (ours
counts the shared prefix once per conversation, as plain holds it). `--problems` (problems per
step) keeps a quick check short. The machine's ceiling (matmul FLOP/s, memory bandwidth) is
measured and printed as the other benches do. With --json the last line is one JSON object:
`iterations` (the splits), `iteration_s`, `time_sampling_s`, `time_training_s` (last iteration),
`train_tokens_per_s`, `reference_train_tokens_per_s`, `train_step_speedup`, `padding_fraction`,
`reference_padding_fraction` (of the rows' slots; ours' rows hold the suffixes after the shared
prefix), `shared_prefix_tokens`, `shared_span_tokens`, the step and compile seconds of both,
`rollouts_again_s`, `reference_rollouts_s`, `reference_same_rollouts` (the share of conversations with the same
student tokens), `reference_iteration_s`, `iteration_speedup`, and `hardware`.
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
  p.add_argument("--iterations", type=int, default=1)
  p.add_argument("--problems", type=int, default=None,
                 help="problems per RL step (rl.problems_per_step), e.g. 1 for a quick check")
  p.add_argument("--no-reference", action="store_true",
                 help="skip the plain-step comparison (iteration split only)")
  p.add_argument("--override", action="append", default=[],
                 help="config override KEY=VALUE (as --config.KEY=VALUE of sml_jax.main)")
  p.add_argument("--no-plain-step", action="store_true",
                 help="time our step and its variants only (the plain step needs the most memory)")
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)
  if args.iterations < 1:
    p.error("--iterations must be >= 1")
  if args.problems is not None:
    if args.problems < 1:
      p.error("--problems must be >= 1")
    args.override.append(f"rl.problems_per_step={args.problems}")
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
  from sml_jax.bench import hardware  # pylint: disable=g-import-not-at-top

  print("measuring hardware ...", flush=True)
  hw = hardware.measure()
  print("  " + hardware.describe(hw), flush=True)
  t_setup = time.time()
  exp = Experiment(spec)
  trainer = _recording_trainer(exp)
  state = trainer.start_stage(trainer.initial_state())
  stage = _recording_stage(rollout.RLStage)(rl)
  ctx = base.Context(exp=exp, trainer=trainer, workdir=tempfile.mkdtemp(prefix="sml_jax_rl_bench_"))
  d = spec.dialogue
  print(f"config {args.config}: model {spec.student.name}, {rl.problems_per_step} problems x group "
        f"{rl.group_size}, {d.max_turns} turns, student {d.student_max_tokens} / teacher "
        f"{d.teacher_max_tokens} tokens, teacher {d.teacher}, compute {spec.compute_dtype} "
        f"(setup {time.time() - t_setup:.0f} s)", flush=True)
  rows = []
  for it in range(args.iterations):
    trainer.last = None   # The comparisons use the last iteration's examples, or none.
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
    row.update({k: m[k] for k in ("padding_fraction", "shared_prefix_tokens", "shared_span_tokens",
                                  "time_sampling_s", "time_training_s", "time_compile_s")
                if k in m})
    rows.append(row)
    other = row["rollout_s"] - sum(seconds.values())
    print(f"iteration {it + 1}{' (incl. compilation)' if it == 0 else ''}: total "
          f"{row['total_s']:.1f} s = student sampling {seconds['time_student_s']:.1f} + teacher "
          f"{seconds['time_teacher_s']:.1f} + verification {seconds['time_verify_s']:.1f} + "
          f"Q-priming {seconds['time_qprime_s']:.1f} + other {other:.1f} + training "
          f"{row['training_s']:.1f} ({row['examples']} examples, {row['train_tokens']} tokens; "
          f"compiling {row.get('time_compile_s', 0.0):.1f} s of it); "
          f"success {row['success_rate']:.2f}", flush=True)
  last = rows[-1]
  out = {"config": args.config, "iterations": rows, "iteration_s": last["total_s"],
         "time_sampling_s": last["rollout_s"], "time_training_s": last["training_s"],
         "padding_fraction": last.get("padding_fraction")}
  if not args.no_reference:
    if trainer.last is not None:
      out.update(compare_rollouts(exp, stage, ctx, trainer.last[0], args.iterations - 1,
                                  stage.convs))
      out.update(compare_steps(trainer, rl.train, *trainer.last,
                               with_plain=not args.no_plain_step), comparison_examples="rl")
    if trainer.last is not None and not args.no_plain_step:
      # The iteration with the plain parts swapped in (warm differences): decoding every row
      # of a turn until its longest row stops, and the plain step.
      out["reference_iteration_s"] = (
          out["iteration_s"] + out["reference_rollouts_s"] - out["rollouts_again_s"]
          + out["reference_train_step_s"] - out["train_step_s"])
      out["iteration_speedup"] = out["reference_iteration_s"] / out["iteration_s"]
      print(f"iteration: {out['iteration_s']:.1f} s vs {out['reference_iteration_s']:.1f} s "
            f"with the plain decode and step: {out['iteration_speedup']:.2f}x", flush=True)
    if trainer.last is None and stage.every:   # All rewards equal: the same student tokens.
      print("no RL signal in the last iteration (all rewards of each group equal): the steps "
            "are compared on all its conversations, student tokens weighted 1", flush=True)
      out.update(compare_steps(trainer, rl.train, state, stage.every,
                               with_plain=not args.no_plain_step),
                 comparison_examples="all conversations, weight 1")
  hw = hardware.best_of(hw, hardware.measure())
  print("hardware ceiling: " + hardware.describe(hw), flush=True)
  out["hardware"] = hw
  if args.json:
    print(json.dumps(out))


def _time_step(trainer, state, batch, settings, copy_state: bool = True):
  """(compile s, step s, metrics) of one step on `batch` from `state` (a copy of it unless
  `copy_state` is False: the step donates its state)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  step = trainer.step_for(batch, settings)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  t1 = time.perf_counter()
  copy = jax.tree.map(jnp.copy, state) if copy_state else state
  placed = step.put_batch(batch)
  jax.block_until_ready((copy, placed))
  t2 = time.perf_counter()
  _, metrics = jax.block_until_ready(compiled(copy, placed))
  return t1 - t0, time.perf_counter() - t2, {k: float(v) for k, v in metrics.items()}


def compare_rollouts(exp, stage, ctx, state, step: int, convs) -> dict:
  """The last iteration's rollouts again, from the same params and seed: ours once more, then
  decoding every row of a turn until its longest row stops (`sampler.live_rows_min_batch=0`)
  twice (the first compiles); the warm runs are timed, and checked to give the same student
  tokens as the iteration."""
  samplers = {id(s): s for s in (exp.student.sampler, exp.teacher.sampler) if s is not None}
  saved = {k: s.live_rows_min_batch for k, s in samplers.items()}
  problems, seed = stage.problems(exp, step, ctx.stage_index)
  params = exp.sampling_params(state)
  times, same = {}, {}
  try:
    for name, live, runs in (("ours", None, 1), ("plain", 0, 2)):
      for s in samplers.values():
        s.live_rows_min_batch = saved[id(s)] if live is None else live
      for _ in range(runs):
        t0 = time.time()
        got = stage.collect(exp, params, problems, seed, first_problem=0)
        times[name] = time.time() - t0
      same[name] = sum(a.student.ids == b.student.ids for a, b in zip(convs, got.conversations))
  finally:
    for k, s in samplers.items():
      s.live_rows_min_batch = saved[k]
  print(f"rollouts again: ours {times['ours']:.1f} s, plain decode {times['plain']:.1f} s; the "
        f"same student tokens as the iteration in {same['ours']} / {same['plain']} of "
        f"{len(convs)} conversations", flush=True)
  return {"rollouts_again_s": times["ours"], "reference_rollouts_s": times["plain"],
          "reference_same_rollouts": same["plain"] / max(len(convs), 1)}


def compare_steps(trainer, settings, state, examples, with_plain: bool = True) -> dict:
  """Our step and the plain step on the same examples from the same state (see the docstring);
  also ours without group spans (when the batch has any). with_plain=False: no plain step."""
  out = {}
  spans = trainer.batch(examples, settings.needs_old_logprobs).span_tokens_saved() > 0
  variants = ([("", False, True)] + ([("prefix_only_", False, False)] if spans else [])
              + ([("reference_", True, True)] if with_plain else []))
  for name, plain, groups in variants:
    batch = trainer.prepare(state, examples, settings, plain=plain, share_groups=groups)
    # The last step may use up the state (one copy less of a model in memory).
    compile_s, step_s, m = _time_step(trainer, state, batch, settings, copy_state=not plain)
    tokens = float(batch.num_tokens())
    padding = batch.padding_fraction(trainer.num_micro(batch))
    shape = batch.computed_shape(trainer.num_micro(batch))   # without skipped micro-batches
    out.update({f"{name}train_step_s": step_s, f"{name}compile_s": compile_s,
                f"{name}train_tokens_per_s": tokens / step_s, f"{name}loss": m["loss"],
                f"{name}padding_fraction": padding,
                f"{name}batch_shape": list(shape)})
    if not name:
      out["shared_prefix_tokens"] = batch.prefix_length
      out["shared_span_tokens"] = batch.span_tokens_saved()
    index = ("" if plain else f", loss index K={batch.loss_index.shape[1]}, shared prefix "
             f"P={batch.prefix_length}, group spans spare {batch.span_tokens_saved()} tokens")
    label = {"": "ours ", "prefix_only_": "ours without group spans", "reference_": "plain"}[name]
    print(f"{label} step: {step_s:.1f} s ({tokens / step_s:.0f} tok/s; "
          f"compile {compile_s:.0f} s) on [{shape[0]}, {shape[1]}]{index}, padding "
          f"{padding:.1%}, loss {m['loss']:.6f}", flush=True)
  if with_plain:
    out["train_step_speedup"] = out["reference_train_step_s"] / out["train_step_s"]
    print(f"train step: {out['train_step_speedup']:.2f}x the plain step", flush=True)
  if spans:
    out["group_span_speedup"] = out["prefix_only_train_step_s"] / out["train_step_s"]
    print(f"group spans: {out['group_span_speedup']:.2f}x the step without them", flush=True)
  return out


def _recording_stage(cls):
  """The RL stage, also keeping every conversation of its last rollout as an example with weight
  1 on the student tokens it sampled (for a comparison when no group carried a signal)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sml_jax.training.batching import Example  # pylint: disable=g-import-not-at-top

  class Recording(cls):
    every: list = []
    convs: list = []

    def to_examples(self, convs):
      self.convs = list(convs)
      self.every = [Example(*c.training_arrays()[:2], weight=1.0,
                            token_weights=c.student.sampled_mask().astype(np.float32))
                    for c in convs]
      return super().to_examples(convs)

  return Recording


def _recording_trainer(exp):
  """A `Trainer` that keeps the (state, examples) of its last `train` call for `compare_steps`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sml_jax.stages.trainer import Trainer  # pylint: disable=g-import-not-at-top

  class Recording(Trainer):
    last = None

    def train(self, state, examples, settings, learning_rate):
      if examples:   # A copy: the step donates the state it is given.
        self.last = (jax.tree.map(jnp.copy, state), list(examples))
      return super().train(state, examples, settings, learning_rate)

  return Recording(exp)
