"""The optimizer and the compiled train steps that every training stage shares.

    trainer = Trainer(exp)
    state = trainer.initial_state()                     # sharded on the training mesh
    state = trainer.start_stage(state)                  # fresh AdamW moments
    state, metrics = trainer.train(state, examples, settings, learning_rate=lr)

One `make_train_step` per (stage settings, micro-batch count); each compiles per [B, T]. The
learning rate is an injected hyperparameter set before every step, so switching stages (or
schedules) does not recompile. `settings` (a stage's `TrainSettings`) chooses the loss: NLL
(SFT; GRPO at ratio 1) or the clipped PPO ratio with `inner_steps` > 1, and the KL weight.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import numpy as np
import optax

from sml_jax.parallel import distributed
from sml_jax.spec import TrainSettings, TrainStageSpec
from sml_jax.training import batching, compile_clock
from sml_jax.training.optimizer import OptimizerConfig, make_optimizer, make_schedule
from sml_jax.training.train_state import create_train_state
from sml_jax.training.train_step import TrainConfig, make_logprob_fn, make_train_step


def make_run_optimizer(o) -> optax.GradientTransformation:
  """The optimizer of a run (`spec.OptimizerSpec`), with the learning rate set per step."""
  return make_optimizer(OptimizerConfig(b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
                                        grad_clip_norm=o.grad_clip_norm),
                        injected_learning_rate=True)


def stage_schedule(settings: TrainSettings, steps: int, schedule: str = "cosine"):
  """The learning rate of each step of a stage: warmup, then cosine (or flat) over its steps."""
  return make_schedule(OptimizerConfig(learning_rate=settings.learning_rate,
                                       warmup_steps=settings.warmup_steps,
                                       total_steps=max(1, steps), schedule=schedule))


@functools.lru_cache(maxsize=None)
def _placer(sharding):
  """A jitted identity with this output sharding (one per sharding, not one per step)."""
  return jax.jit(lambda x: x, out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _jitted_sum():
  return jax.jit(lambda a: a.sum(dtype=np.float32))


def global_sum(x) -> float:
  """Sum of a numpy array or of a (possibly cross-host) jax.Array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return float(_jitted_sum()(x))
  return float(np.asarray(x).sum())


def set_learning_rate(state, lr: float):
  hp = dict(state.opt_state.hyperparams)
  old = hp["learning_rate"]
  # Placed like the value it replaces, through a jit: on several hosts a device_put of a host
  # scalar gives an array orbax cannot save; a jit output is a proper global array.
  hp["learning_rate"] = _placer(old.sharding)(np.asarray(lr, old.dtype))
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hp))


class Trainer:
  """The optimizer, the train state's placement and the compiled steps of a run."""

  def __init__(self, exp):
    self.exp = exp
    self.tx = make_run_optimizer(exp.spec.optimizer)
    self._steps: dict[TrainConfig, object] = {}
    self._logprob_fns: dict[tuple, object] = {}

  def initial_state(self):
    """A fresh state built sharded from the initial params (`create_train_state(mesh=...)`);
    the experiment then drops those params (the roles were built from them already)."""
    exp = self.exp
    state = create_train_state(exp.model, exp.initial_params(), self.tx, seed=exp.spec.seed,
                               lora=getattr(exp, "initial_lora", None), mesh=exp.mesh)
    if any(isinstance(s, TrainStageSpec) and s.train.kl_beta > 0 for s in exp.spec.stages):
      exp.reference_params()   # The KL reference, built before the params go.
    exp.release_initial_params()
    return state

  def start_stage(self, state):
    """Fresh AdamW moments, each placed like the one it replaces (computed in one jit so that
    on several hosts every leaf is a global array, the step counter included)."""
    placement = jax.tree.map(lambda x: x.sharding, state.opt_state)
    return state.replace(opt_state=jax.jit(self.tx.init, out_shardings=placement)(state.params))

  def _config(self, settings: TrainSettings, num_micro: int) -> TrainConfig:
    return TrainConfig(loss=settings.loss, clip_eps=settings.clip_eps, kl_beta=settings.kl_beta,
                       compute_dtype=self.exp.spec.compute_dtype, num_micro_batches=num_micro,
                       temperature=settings.temperature, remat=self.exp.spec.train.remat)

  def _step(self, cfg: TrainConfig):
    if cfg not in self._steps:
      self._steps[cfg] = make_train_step(self.exp.model, self.tx, cfg, mesh=self.exp.mesh)
    return self._steps[cfg]

  def batch(self, examples: Sequence[batching.Example], needs_old_logprobs: bool,
            plain: bool = False, share_groups: bool = True):
    """This host's examples -> the step's global batch, or None when no host has an example.

    plain: one conversation per row, logits at every position (the benchmark's reference).
    share_groups=False: no group spans even with `train.share_group_prefix` (the benchmark).
    Otherwise packed rows (`segment_ids`) and a `loss_index`, so the step computes logits only where the
    loss needs them, and with `train.share_prefix` on one process the prefix every conversation
    shares forwarded once (`prefix_tokens`) and each group's span after it stored once per row
    (`train.share_group_prefix`, `parent_ids`) (`batching.make_batch`; exact). One process: the
    numpy batch (the step puts it on the mesh). Several: every host pads its rows to the same
    [rows, T] and index size K (agreed by all-gathers of counts, lengths and K) and the global
    arrays are assembled from each host's rows (`distributed.global_batch`); no prefix is
    shared there (the hosts would have to agree on it first).
    """
    train = self.exp.spec.train
    layout = dict(pack=not plain, with_loss_index=not plain)
    sizes = distributed.allgather_rows(
        [len(examples), max((len(e.ids) for e in examples), default=0)])
    if sizes[:, 0].sum() == 0:
      return None
    hosts, micro = sizes.shape[0], train.micro_batch_size
    if hosts == 1:
      return batching.make_batch(
          examples, max_len=train.max_len, batch_multiple=micro,
          share_prefix=train.share_prefix and not plain,
          share_groups=(train.share_prefix and train.share_group_prefix and share_groups
                        and not plain), **layout)
    length = batching.bucket_length(int(sizes[:, 1].max()), max_len=train.max_len)
    first = (batching.make_batch(examples, max_len=train.max_len, buckets=(length,), **layout)
             if examples else None)
    rows, k = distributed.allgather_rows(
        [0, 0] if first is None else [first.shape[0], first.loss_index.shape[1] if not plain else 0]
    ).max(axis=0).tolist()
    local = batching.make_batch(examples, max_len=train.max_len, buckets=(length,),
                                pad_batch_to=batching.round_up(rows, micro // math.gcd(micro, hosts)),
                                loss_index_size=k or None, **layout)
    if needs_old_logprobs and local.old_logprobs is None:   # A host without examples.
      local = local.replace(old_logprobs=np.zeros_like(local.weights))
    return distributed.global_batch(local, self.exp.mesh)

  def _logprobs(self, model, params, batch, settings: TrainSettings):
    """Teacher-forced log-probs of `batch` [B, T] under `params` at the stage's temperature."""
    cfg = self._config(settings, 1)
    key = (id(model), cfg)
    if key not in self._logprob_fns:
      self._logprob_fns[key] = make_logprob_fn(model, cfg)
    return self._logprob_fns[key](params, batch)

  def reference_logprobs(self, batch, settings: TrainSettings):
    """The frozen initial policy's log-probs of `batch` (for the KL term)."""
    return self._logprobs(self.exp.reference.model, self.exp.reference_params(), batch, settings)

  def prepare(self, state, examples, settings: TrainSettings, plain: bool = False,
              share_groups: bool = True):
    """The train batch of `examples` with the old / reference log-probs the loss needs (None
    when no host has an example); `plain`, `share_groups` as in `batch`."""
    batch = self.batch(examples, settings.needs_old_logprobs, plain=plain,
                       share_groups=share_groups)
    if batch is None:
      return None
    if settings.recompute_old_logprobs:   # See TrainSettings.recompute_old_logprobs.
      batch = batch.replace(old_logprobs=self._logprobs(
          self.exp.model, state.full_params(), batch, settings))
    if settings.kl_beta > 0:
      batch = batch.replace(ref_logprobs=self.reference_logprobs(batch, settings))
    if not plain and jax.process_count() == 1:
      # Pad the micro-batch count to a power of two with empty micro-batches (after the old /
      # reference log-prob passes, which would compute them; those passes still compile per row
      # count): the step skips them, and the next iteration's different row count reuses the
      # same compiled step instead of compiling its own.
      filled = self.num_micro(batch)
      batch = batching.spread_micro_batches(
          jax.tree.map(np.asarray, batch), batching.micro_batch_bucket(filled), filled)
    return batch

  def num_micro(self, batch) -> int:
    """The step's micro-batch count for this batch (rows / `micro_batch_size`)."""
    return max(1, batch.tokens.shape[0] // self.exp.spec.train.micro_batch_size)

  def step_for(self, batch, settings: TrainSettings):
    """The compiled step for this batch's row count (micro-batches of `micro_batch_size`)."""
    return self._step(self._config(settings, self.num_micro(batch)))

  def train(self, state, examples, settings: TrainSettings, learning_rate: float):
    """`settings.inner_steps` updates on the batch of `examples` -> (state, metrics or None).
    None (and no update) when no host has an example (e.g. all rewards of every group equal)."""
    compiled = compile_clock.seconds()
    state = set_learning_rate(state, learning_rate)
    batch = self.prepare(state, examples, settings)
    if batch is None:
      return state, None
    step = self.step_for(batch, settings)
    inner = []
    for _ in range(settings.inner_steps):
      state, m = step(state, batch)
      inner.append({k: float(v) for k, v in m.items()})
    metrics = dict(inner[-1])
    if len(inner) > 1:   # The first inner step is on-policy: its PPO ratio is 1.
      metrics.update({f"first_{k}": inner[0][k] for k in ("loss", "clip_fraction", "log_ratio_abs_mean")
                      if k in inner[0]})
    # The conversations' tokens: the rows' plus the shared prefix once per conversation and a
    # group span once per conversation beyond the first in its row (only shared on one process).
    # Padding: the share of the rows' slots without a token (the prefix is computed once, not
    # per row). shared_span_tokens: what the group spans spared.
    rows_tokens = global_sum(batch.input_mask)
    metrics["train_tokens"] = (float(batch.num_tokens()) if jax.process_count() == 1
                               else rows_tokens)
    metrics["padding_fraction"] = (
        batch.padding_fraction(self.num_micro(batch)) if jax.process_count() == 1
        else 1.0 - rows_tokens / math.prod(batch.tokens.shape))
    metrics["shared_prefix_tokens"] = float(batch.prefix_length)
    if jax.process_count() == 1:
      metrics["shared_span_tokens"] = float(batch.span_tokens_saved())
    # Tracing and compiling for this update (a batch shape the step had not seen): part of the
    # stage's time_training_s.
    metrics["time_compile_s"] = compile_clock.seconds() - compiled
    return state, metrics

