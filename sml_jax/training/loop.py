"""The stage loop: one train state and one compiled train step through every stage.

    run_stages(exp, [("eval_before", "eval"), ("qprime_sft", "qprime_sft"), ("rl", "rl"), ...],
               run_eval=..., collect_examples=..., stage_seed=...)

Per training iteration: roll out with the freshest params (on-policy) -> per-token weights
(`rollouts.py`) -> batch -> the train step. SFT and RL share the step; the learning rate is an
injected hyperparameter set from the stage's own warmup+cosine schedule, so switching stages does
not recompile. Each training stage starts with fresh AdamW moments.

Resume: a checkpoint holds the train state plus {"stage_index", "stage_step", "iteration"}. The
problems and sampling seeds of an iteration depend only on (seed, stage, step), so a run killed at
any point and restarted on the same workdir ends with the same params as an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import time

import numpy as np
import optax

from sml_jax.training import batching
from sml_jax.training.checkpointing import Checkpointer
from sml_jax.training.metrics import MetricsWriter
from sml_jax.training.optimizer import OptimizerConfig, make_schedule
from sml_jax.training.train_state import create_train_state, shard_train_state
from sml_jax.training.train_step import TrainConfig, make_logprob_fn, make_train_step


def make_optimizer(opt_cfg) -> optax.GradientTransformation:
  """AdamW (+ clipping) with the learning rate as an injected, per-step settable hyperparameter."""
  def build(learning_rate):
    adamw = optax.adamw(learning_rate, b1=opt_cfg.b1, b2=opt_cfg.b2,
                        weight_decay=opt_cfg.weight_decay, mask=lambda p: _matrices(p))
    return optax.chain(optax.clip_by_global_norm(opt_cfg.clip_norm), adamw) if opt_cfg.clip_norm else adamw
  return optax.inject_hyperparams(build)(learning_rate=0.0)


def _matrices(params):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def set_learning_rate(state, lr: float):
  import jax  # pylint: disable=g-import-not-at-top
  hp = dict(state.opt_state.hyperparams)
  old = hp["learning_rate"]
  # Placed like the value it replaces, through a jit: on several hosts a device_put of a host
  # scalar gives an array orbax cannot save; a jit output is a proper global array.
  hp["learning_rate"] = _placer(old.sharding)(np.asarray(lr, old.dtype))
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hp))


@functools.lru_cache(maxsize=None)
def _placer(sharding):
  """A jitted identity with this output sharding (one per sharding, not one per step)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda x: x, out_shardings=sharding)


def stage_schedule(st) -> optax.Schedule:
  return make_schedule(OptimizerConfig(learning_rate=st.learning_rate, warmup_steps=st.warmup_steps,
                                       total_steps=max(1, st.steps)))


def _conversation_stats(convs: list[dict]) -> dict[str, float]:
  """Means over conversation transcripts (`Conversation.to_json`)."""
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
  }


class _NoMetrics:
  """Hosts other than process 0 log nothing (process 0 writes the shared metrics file)."""

  def write(self, step, metrics):
    return metrics

  def close(self):
    pass


def _train_batch(exp, examples, needs_old_logprobs: bool):
  """This host's examples -> the step's global batch, or None when no host has an example.

  One process: the numpy batch (the step puts it on the mesh). Several: every host pads its rows
  to the same [rows, T] (agreed by an all-gather of counts and lengths) and the global arrays
  are assembled from each host's rows (`distributed.global_batch`).
  """
  import math  # pylint: disable=g-import-not-at-top
  from sml_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  train = exp.config.train
  sizes = distributed.allgather_rows([len(examples), max((len(e.ids) for e in examples), default=0)])
  if sizes[:, 0].sum() == 0:
    return None
  hosts, micro = sizes.shape[0], train.micro_batch_size
  if hosts == 1:
    return batching.make_batch(examples, max_len=train.max_len, batch_multiple=micro)
  rows = batching.round_up(int(sizes[:, 0].max()), micro // math.gcd(micro, hosts))
  length = batching.bucket_length(int(sizes[:, 1].max()), max_len=train.max_len)
  local = batching.make_batch(examples, max_len=train.max_len, buckets=(length,),
                              pad_batch_to=rows)
  if needs_old_logprobs and local.old_logprobs is None:   # A host without examples.
    local = local.replace(old_logprobs=np.zeros_like(local.weights))
  return distributed.global_batch(local, exp.mesh)


class _Steps:
  """One `TrainStep` per micro-batch count (a static of the step); each compiles per [B, T]."""

  def __init__(self, exp, tx, base_cfg: TrainConfig):
    self.exp, self.tx, self.base_cfg, self.steps = exp, tx, base_cfg, {}

  def __call__(self, state, batch):
    micro = self.exp.config.train.micro_batch_size
    num_micro = max(1, batch.tokens.shape[0] // micro)
    if num_micro not in self.steps:
      import dataclasses  # pylint: disable=g-import-not-at-top
      cfg = dataclasses.replace(self.base_cfg, num_micro_batches=num_micro)
      self.steps[num_micro] = make_train_step(self.exp.model, self.tx, cfg, mesh=self.exp.mesh)
    return self.steps[num_micro](state, batch)


def run_stages(exp, stages, *, run_eval, collect_examples, stage_seed) -> None:
  config, workdir = exp.config, exp.workdir
  tx = make_optimizer(config.optimizer)
  rl = config.rl
  train_cfg = TrainConfig(loss="ppo" if rl.inner_steps > 1 else "nll", clip_eps=rl.clip_eps,
                          kl_beta=rl.kl_beta, compute_dtype=config.compute_dtype)
  # KL to the frozen initial policy (rl.kl_beta > 0): its log-probs, teacher-forced, per batch.
  reference_logprobs = make_logprob_fn(exp.reference_model, train_cfg) if rl.kl_beta > 0 else None
  state = shard_train_state(create_train_state(exp.model, exp.base_params, tx, seed=config.seed),
                            exp.mesh)
  ckpt = Checkpointer(workdir, every=config.train.checkpoint_every, keep=config.train.keep_checkpoints)
  pos = {"stage_index": 0, "stage_step": 0, "iteration": 0}
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, pos = restored
    print(f"[resume] from iteration {pos['iteration']} (stage {stages[pos['stage_index']][0]}, "
          f"step {pos['stage_step']})", flush=True)
  total = sum(config[k].steps for _, k in stages if k != "eval")
  from sml_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  primary, hosts = distributed.is_primary(), exp.jax.process_count()
  writer = (MetricsWriter(workdir, total_steps=total,
                          resume_step=pos["iteration"] if restored else None)
            if primary else _NoMetrics())
  steps = _Steps(exp, tx, train_cfg)
  ckpt.install_sigterm_handler()
  try:
    for si, (name, kind) in enumerate(stages):
      if si < pos["stage_index"]:
        continue
      if kind == "eval":
        run_eval(exp, name, exp.sampling_params(state))
        pos = {"stage_index": si + 1, "stage_step": 0, "iteration": pos["iteration"]}
        continue
      st = config[kind]
      schedule = stage_schedule(st)
      if pos["stage_step"] == 0:
        # Fresh moments per stage, each placed like the one it replaces (computed in one jit so
        # that on several hosts every leaf is a global array, the step counter included).
        placement = exp.jax.tree.map(lambda x: x.sharding, state.opt_state)
        state = state.replace(opt_state=exp.jax.jit(tx.init, out_shardings=placement)(state.params))
      for step in range(pos["stage_step"], st.steps):
        seed = stage_seed(si, step)
        from sml_jax.tasks import registry as tasks  # pylint: disable=g-import-not-at-top
        from sml_jax.runner import _curriculum  # pylint: disable=g-import-not-at-top
        problems = tasks.sample_problems(_curriculum(config, st.curriculum), st.problems_per_step, seed)
        # Each host rolls out its own block of the step's problems (all of them on one host).
        lo, hi = distributed.host_range(len(problems))
        if hosts > 1:
          print(f"[host {exp.jax.process_index()}/{hosts}] {name} step {step}: problems "
                f"{lo}..{hi - 1} of {len(problems)}", flush=True)
        t0 = time.time()
        examples, convs, seconds = (collect_examples(exp, kind, st, state, problems[lo:hi], seed,
                                                     first_problem=lo)
                                    if hi > lo else ([], [], {}))
        convs = distributed.gather_json([c.to_json() for c in convs])
        t1 = time.time()
        if primary:
          _save_rollouts(workdir, name, step, convs)
        num_examples = int(distributed.allgather_rows([len(examples)]).sum())
        row = {"stage": name, **_conversation_stats(convs), "num_examples": float(num_examples),
               "time_sampling_s": t1 - t0, **seconds}
        state = set_learning_rate(state, float(schedule(step)))
        row["learning_rate"] = float(schedule(step))
        batch = _train_batch(exp, examples, needs_old_logprobs=train_cfg.needs_old_logprobs)
        if batch is not None:
          if reference_logprobs is not None:
            batch = batch.replace(ref_logprobs=reference_logprobs(exp.reference_params(), batch))
          for _ in range(rl.inner_steps if kind == "rl" else 1):
            state, m = steps(state, batch)
          m = {k: float(v) for k, v in m.items()}
          t2 = time.time()
          n_tok = float(_global_sum(batch.input_mask))
          row.update({"loss": m["loss"], "grad_norm": m["grad_norm"], "train_tokens": n_tok,
                      "student_tokens": m["num_student_tokens"], "time_training_s": t2 - t1,
                      "tokens_per_s": n_tok / max(t2 - t1, 1e-9)})
          row.update({k: m[k] for k in ("kl", "clip_fraction") if k in m})
        else:
          row.update({"time_training_s": 0.0})  # No signal (e.g. all-equal rewards): no update.
        pos = {"stage_index": si, "stage_step": step + 1, "iteration": pos["iteration"] + 1}
        if step + 1 == st.steps:
          pos = {"stage_index": si + 1, "stage_step": 0, "iteration": pos["iteration"]}
        writer.write(pos["iteration"], row)
        last = step + 1 == st.steps
        if last:
          ckpt.save(pos["iteration"], state, pos)
        elif ckpt.maybe_save(pos["iteration"], state, pos):
          print("[sigterm] checkpoint saved; exiting", flush=True)
          return
  finally:
    writer.close()
    ckpt.uninstall_sigterm_handler()
    ckpt.close()


def _global_sum(x) -> float:
  """Sum of a numpy array or of a (possibly cross-host) jax.Array."""
  import jax  # pylint: disable=g-import-not-at-top
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return float(_jitted_sum()(x))
  return float(np.asarray(x).sum())


@functools.lru_cache(maxsize=None)
def _jitted_sum():
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(lambda a: a.sum(dtype=np.float32))


def _save_rollouts(workdir, stage: str, step: int, convs: list[dict]) -> None:
  out = workdir / "rollouts" / stage
  out.mkdir(parents=True, exist_ok=True)
  with open(out / f"step_{step:05d}.jsonl", "w") as f:
    for c in convs:
      f.write(json.dumps(c) + "\n")
