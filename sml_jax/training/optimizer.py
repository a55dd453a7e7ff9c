"""optax AdamW with linear warmup + cosine decay and global-norm gradient clipping.

    cfg = OptimizerConfig(learning_rate=1e-5, warmup_steps=10, total_steps=500)
    tx = make_optimizer(cfg)          # optax.GradientTransformation
    lr = make_schedule(cfg)(step)
    tx = make_optimizer(cfg, injected_learning_rate=True)  # lr set by the caller each step

Schedule: 0 -> learning_rate linearly over `warmup_steps`, then cosine down to
`learning_rate * final_lr_fraction` at `total_steps` (constant afterwards); with
`schedule="constant"`, flat at learning_rate after the warmup. Weight decay applies
to matrices only (ndim >= 2), not to norm scales. Master params and moments are float32.
"""

from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 1e-5
  warmup_steps: int = 0
  total_steps: int = 1000
  final_lr_fraction: float = 0.1
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  grad_clip_norm: float | None = 1.0
  schedule: str = "cosine"          # "cosine" | "constant"

  def __post_init__(self):
    validate_optimizer_config(self)


def validate_optimizer_config(cfg) -> None:
  """Raises ValueError naming the first bad field (works on dataclasses and ConfigDicts)."""
  def bad(field, why):
    raise ValueError(f"optimizer.{field} {why}, got {getattr(cfg, field)!r}.")
  if not cfg.learning_rate > 0:
    bad("learning_rate", "must be > 0")
  if cfg.warmup_steps < 0:
    bad("warmup_steps", "must be >= 0")
  if cfg.total_steps < 1:
    bad("total_steps", "must be >= 1")
  if not 0 <= cfg.final_lr_fraction <= 1:
    bad("final_lr_fraction", "must be in [0, 1]")
  for f in ("b1", "b2"):
    if not 0 <= getattr(cfg, f) < 1:
      bad(f, "must be in [0, 1)")
  if not cfg.eps > 0:
    bad("eps", "must be > 0")
  if cfg.weight_decay < 0:
    bad("weight_decay", "must be >= 0")
  if cfg.grad_clip_norm is not None and not cfg.grad_clip_norm > 0:
    bad("grad_clip_norm", "must be > 0 or None")
  if getattr(cfg, "schedule", "cosine") not in SCHEDULES:
    bad("schedule", f"must be one of {SCHEDULES}")


SCHEDULES = ("cosine", "constant")


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  warmup = min(cfg.warmup_steps, cfg.total_steps)
  if cfg.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, warmup), optax.constant_schedule(
            cfg.learning_rate)], [warmup]) if warmup else optax.constant_schedule(cfg.learning_rate)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else cfg.learning_rate, peak_value=cfg.learning_rate,
      warmup_steps=warmup, decay_steps=max(cfg.total_steps, warmup + 1),
      end_value=cfg.learning_rate * cfg.final_lr_fraction)


def _decay_mask(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimizerConfig, *,
                   injected_learning_rate: bool = False) -> optax.GradientTransformation:
  """AdamW (+ clipping). The learning rate follows `make_schedule(cfg)`, or with
  `injected_learning_rate` is a hyperparameter in the optimizer state that the caller sets
  before each step (`set_learning_rate`): the stage loop's way, so that every stage's schedule
  runs through one compiled step."""
  validate_optimizer_config(cfg)

  def build(learning_rate):
    adamw = optax.adamw(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=_decay_mask)
    if cfg.grad_clip_norm is None:
      return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adamw)

  if injected_learning_rate:
    return optax.inject_hyperparams(build)(learning_rate=0.0)
  return build(make_schedule(cfg))
