"""The Stage protocol and the one training iteration (the kinds are in `kinds.py`).

    stage = kinds.make_stage(spec)           # spec: a TrainStageSpec or EvalSpec
    state = stage.run(ctx, state, first_step)   # -> None when a preemption checkpoint stopped it

A training stage is `steps` iterations of

    problems (seeded by run seed, stage, step) -> this host's block -> rollouts with the current
    params (on-policy) -> examples (per-token weights, `examples.py`) -> the shared train step

and differs from another only in `collect` (how conversations become examples) and in its
`TrainSettings`. `TrainingStage.iteration` is that whole loop body, public so that
`python -m sml_jax.bench rl` times exactly what the driver runs.

Resume: a checkpoint holds the train state plus {"stage_index", "stage_step", "iteration"}. The
problems and sampling seeds of an iteration depend only on (seed, stage, step)
(`rng.stream(..., "rollout")`), so a run killed at any point and restarted on the same workdir
ends with the same params as an uninterrupted one. A preemption notice on any host stops the
rollouts of every host at their next dialogue turn; all save the state of the last finished
iteration and exit (`parallel/preemption.py`), and the rerun redoes the interrupted iteration.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from sml_jax import rng
from sml_jax.evaluation import metrics as metrics_lib
from sml_jax.evaluation import store
from sml_jax.parallel import distributed
from sml_jax.parallel import preemption
from sml_jax.spec import EvalSpec, TrainStageSpec
from sml_jax.stages.trainer import Trainer, stage_schedule
from sml_jax.tasks import registry as task_registry
from sml_jax.training.batching import Example


@dataclasses.dataclass
class Context:
  """What every stage of a run shares. `stage_index` is this stage's position in the run."""
  exp: Any                           # experiment.Experiment
  trainer: Trainer | None
  workdir: str
  checkpointer: Any = None           # training.checkpointing.Checkpointer (None: never saves)
  metrics: Any = None                # training.metrics.MetricsWriter-like (None: no log)
  stage_index: int = 0
  iteration: int = 0                 # training iterations finished in the whole run


class Collected(NamedTuple):
  examples: list[Example]
  conversations: list                # dialogue.conversation.Conversation (this host's)
  seconds: dict[str, float]          # wall time per part of the rollout


class Stage(Protocol):
  spec: TrainStageSpec | EvalSpec

  def run(self, ctx: Context, state, first_step: int = 0):
    """Runs the stage from `first_step` -> the new state, or None if a preemption checkpoint
    was saved and the run should exit."""


def transcript(conv) -> dict:
  """`conv.to_json()` plus `student_tokens` (its student context's length, for `truncated_rate`)."""
  t = conv.to_json()
  t.setdefault("student_tokens", len(conv.student.ids))
  return t


def conversation_stats(convs: Sequence[dict]) -> dict[str, float | None]:
  """Means over conversation transcripts (`transcript`), and the dialogue-quality rates of
  `evaluation.metrics` (None when no transcript carries the flag: not measured). Rollouts are
  not cut at train.max_len here; the row's `truncated_rate` counts the training examples."""
  rewards = np.asarray([c["reward"] for c in convs], np.float32)
  turns = [t for c in convs for t in c["turns"] if t["role"] == "student"]
  mean = lambda xs: float(np.mean(xs)) if len(xs) else 0.0
  return {
      "reward_mean": mean(rewards),
      "success_rate": mean([c["solved_turn"] is not None for c in convs]),
      "success_at_1": mean([c["solved_turn"] == 1 for c in convs]),
      "question_rate": mean([t["flags"].get("question", False) for t in turns]),
      "mean_student_turns": mean([c["num_student_turns"] for c in convs]),
      "num_conversations": float(len(convs)),
      **{k: v for k, v in metrics_lib.quality_rates(convs).items() if k != "truncated_rate"},
  }


class TrainingStage:
  """Base of the training stages; subclasses implement `collect`."""

  def __init__(self, spec: TrainStageSpec):
    self.spec = spec

  @property
  def kind(self) -> str:
    return self.spec.kind

  samples = True     # Rolls out with the student's current params (SFT on references: False).

  def collect(self, exp, params, problems, seed: int, first_problem: int,
              on_turn: Callable[[], None] | None = None) -> Collected:
    """This host's `problems` (starting at `first_problem` of the step's list) -> examples.
    `params`: the student's current params on the rollout mesh (None if not `samples`).
    `on_turn`: called after every dialogue turn (it raises `preemption.Preempted` to stop)."""
    raise NotImplementedError

  def problems(self, exp, step: int, stage_index: int):
    """(all problems of `step`, its seed): a function of (run seed, stage, step) only."""
    seed = rng.stream(exp.spec.seed, "rollout", stage=stage_index, step=step)
    entries = [e.as_tuple() for e in self.spec.curriculum]
    return task_registry.sample_problems(entries, self.spec.problems_per_step, seed), seed

  def iteration(self, ctx: Context, state, step: int):
    """One training iteration -> (state, metrics row, transcripts of every host), or None when
    a preemption notice on any host stopped the rollouts (every host returns None; the state
    is the one passed in)."""
    exp = ctx.exp
    problems, seed = self.problems(exp, step, ctx.stage_index)
    lo, hi = distributed.host_range(len(problems))   # Each host rolls out its own block.
    if jax.process_count() > 1:
      print(f"[host {jax.process_index()}/{jax.process_count()}] "
            f"{self.spec.name} step {step}: problems {lo}..{hi - 1} of {len(problems)}", flush=True)
    t0 = time.time()
    # On every host, even one without problems: moving the params to the rollout mesh is a
    # collective on several hosts.
    params = exp.sampling_params(state) if self.samples else None
    watch = ctx.checkpointer.preemption if ctx.checkpointer is not None else None
    got, preempted = Collected([], [], {}), False
    try:
      if watch is not None:
        watch.check()
      if hi > lo:
        got = self.collect(exp, params, problems[lo:hi], seed, first_problem=lo,
                           on_turn=watch.check if watch is not None else None)
    except preemption.Preempted:
      preempted = True
    # Every host, every iteration (a collective): the hosts that saw a notice stopped their
    # rollouts at the next turn; the others learn it here.
    if watch is not None and watch.agree(preempted):
      print(f"[preempted] {self.spec.name} step {step}: rollouts stopped "
            f"{time.time() - t0:.1f} s into the iteration", flush=True)
      return None
    convs = distributed.gather_json([transcript(c) for c in got.conversations])
    t1 = time.time()
    # Examples longer than train.max_len lose their tail in batching (the trainer batches at
    # the run's max_len): counted here, before batching, over every host.
    max_len = exp.spec.train.max_len
    lengths = [len(e.ids) for e in got.examples]
    num_examples, num_cut, tokens_cut = distributed.allgather_rows(
        [len(lengths), sum(n > max_len for n in lengths),
         sum(max(0, n - max_len) for n in lengths)]).sum(axis=0).tolist()
    row = {"stage": self.spec.name, **conversation_stats(convs),
           "num_examples": float(num_examples),
           "truncated_rate": num_cut / num_examples if num_examples else None,
           "train_tokens_cut": float(tokens_cut),
           "time_sampling_s": t1 - t0, **got.seconds}
    lr = float(stage_schedule(self.spec.train, self.spec.steps,
                              exp.spec.optimizer.schedule)(step))
    state, m = ctx.trainer.train(state, got.examples, self.spec.train, lr)
    row["learning_rate"] = lr
    if m is None:
      row["time_training_s"] = 0.0   # No signal (e.g. all-equal rewards): no update.
    else:
      t2 = time.time()
      row.update({"loss": m["loss"], "grad_norm": m["grad_norm"], "train_tokens": m["train_tokens"],
                  "student_tokens": m["num_student_tokens"], "time_training_s": t2 - t1,
                  "tokens_per_s": m["train_tokens"] / max(t2 - t1, 1e-9),
                  "padding_fraction": m["padding_fraction"],
                  "shared_prefix_tokens": m["shared_prefix_tokens"],
                  "time_compile_s": m["time_compile_s"]})
      row.update({k: v for k, v in m.items() if k in ("kl", "clip_fraction", "log_ratio_abs_mean",
                                                      "shared_span_tokens")
                  or k.startswith("first_")})
    return state, row, convs

  def run(self, ctx: Context, state, first_step: int = 0):
    if first_step == 0:
      state = ctx.trainer.start_stage(state)   # Fresh moments per stage.
    primary = distributed.is_primary()
    log_every = ctx.exp.spec.train.log_every
    if ctx.metrics is not None:
      ctx.metrics.start_progress()
    for step in range(first_step, self.spec.steps):
      out = self.iteration(ctx, state, step)
      if out is None:   # Preempted mid-rollout: the state is the one of the last iteration.
        ctx.checkpointer.save_if_new(ctx.iteration, state, {
            "stage_index": ctx.stage_index, "stage_step": step, "iteration": ctx.iteration})
        print("[preempted] checkpoint saved; exiting", flush=True)
        return None
      state, row, convs = out
      if primary:
        store.write_rollouts(ctx.workdir, self.spec.name, step, convs)
      ctx.iteration += 1
      last = step + 1 == self.spec.steps
      pos = ({"stage_index": ctx.stage_index + 1, "stage_step": 0, "iteration": ctx.iteration}
             if last else
             {"stage_index": ctx.stage_index, "stage_step": step + 1, "iteration": ctx.iteration})
      if ctx.metrics is not None:
        ctx.metrics.write(ctx.iteration, row)
      if primary and (step + 1) % log_every == 0:
        _log_line(self.spec.name, step, self.spec.steps, row)
      if ctx.checkpointer is None:
        continue
      if last:
        ctx.checkpointer.save(ctx.iteration, state, pos)
      elif ctx.checkpointer.maybe_save(ctx.iteration, state, pos):
        print("[preempted] checkpoint saved; exiting", flush=True)
        return None
    return state


def _log_line(stage: str, step: int, steps: int, row: dict) -> None:
  loss = f"loss {row['loss']:.4f}" if "loss" in row else "no update"
  cut = (f" ({row['truncated_rate']:.0%} cut at train.max_len)"
         if row.get("truncated_rate") else "")
  tqdm.write(f"[{stage}] step {step + 1}/{steps}: reward {row['reward_mean']:.3f}, success "
        f"{row['success_rate']:.3f}, {int(row['num_examples'])} examples{cut}, {loss} "
        f"({row['time_sampling_s'] + row['time_training_s']:.0f} s)")
