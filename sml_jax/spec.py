"""The typed run spec: what `config.to_spec(config)` builds from an ml_collections config.

Everything below the CLI reads these frozen dataclasses, never the ConfigDict: fields are
validated once (in `config.py`, naming the config field), types are real (None instead of the
config's `top_p=1.0` / `top_k=0` sentinels, tuples of `TaskEntry` instead of curriculum strings).

    spec = config.to_spec(config)
    spec.stages[1]          # TrainStageSpec(name="rl", kind="rl", steps=200, ...,
                            #                train=TrainSettings(loss="nll", kl_beta=0.0, ...))
    spec.stages[0]          # EvalSpec(name="eval_before", tasks=(TaskEntry("gsm8k", ...),), ...)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from sml_jax.dialogue.episode import DialogueConfig

# Stage kinds that train (each owns its loss, inner steps, KL and optimizer settings) and the
# one that evaluates. A stage named `eval_<anything>` is an eval stage.
TRAIN_KINDS = ("sft", "offline_sml", "qprime_sft", "rl")
STAGE_KINDS = (*TRAIN_KINDS, "eval")


@dataclasses.dataclass(frozen=True)
class TaskEntry:
  """One curriculum entry: problems of task `name` built with `kwargs`, drawn with `weight`."""
  name: str
  weight: float = 1.0
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def as_tuple(self) -> tuple[str, float, dict]:
    return self.name, self.weight, dict(self.kwargs)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """AdamW shared by every training stage (each stage sets its own learning rate / warmup)."""
  b1: float = 0.9
  b2: float = 0.99
  weight_decay: float = 0.0
  grad_clip_norm: float | None = 1.0
  schedule: str = "cosine"           # "cosine" (warmup, cosine to 10%) | "constant" (warmup, flat)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """How one training stage updates: its loss, inner steps per batch, KL, optimizer settings."""
  learning_rate: float
  warmup_steps: int = 0
  loss: str = "nll"                  # "nll" (SFT; GRPO at ratio 1) | "ppo" (clipped ratio)
  inner_steps: int = 1               # optimizer steps per batch (> 1 only for rl: PPO)
  clip_eps: float = 0.2              # PPO ratio clip
  kl_beta: float = 0.0               # KL to the frozen initial policy
  # The policy trained is softmax(logits / temperature): the rollouts' sampling temperature for
  # rl (its log-probs are then those of the distribution that sampled), 1 for SFT stages.
  temperature: float = 1.0
  # PPO with top-k / top-p rollouts: the sampler's log-probs are of the truncated distribution,
  # the train step's of the full tempered one; the old log-probs are then recomputed by the
  # train step before the first inner step (ratio exactly 1 there; truncation only filters
  # which tokens are sampled).
  recompute_old_logprobs: bool = False

  @property
  def needs_old_logprobs(self) -> bool:
    return self.loss == "ppo"


@dataclasses.dataclass(frozen=True)
class TrainStageSpec:
  """A training stage: `steps` iterations of (sample problems -> examples -> train)."""
  name: str
  kind: str                          # one of TRAIN_KINDS
  steps: int
  curriculum: tuple[TaskEntry, ...]
  problems_per_step: int
  train: TrainSettings
  rollouts_per_problem: int = 1      # offline_sml / qprime_sft: conversations per problem
  group_size: int = 8                # rl: conversations per problem (GRPO group)
  adv_eps: float = 1e-6              # rl: advantage = (r - mean) / (std + adv_eps)
  format_penalty: float = 0.0        # rl: r -= p x share of malformed student turns (examples.py)


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """An eval stage: every task of `tasks`, `num_problems` each, up to `max_turns` turns."""
  name: str
  tasks: tuple[TaskEntry, ...]
  num_problems: int = 200
  split: str = "eval"
  max_turns: int = 10
  teacher: str = "llm"
  repeats: int = 1
  temperature: float = 0.0
  batch_size: int = 32
  kind: str = "eval"


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  data: int = -1
  fsdp: int = 1
  tensor: int = 1


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A model and its weights (None checkpoint: the embedded 270M, or random init for `tiny`)."""
  name: str
  checkpoint: str | None = None


@dataclasses.dataclass(frozen=True)
class TrainLoopSpec:
  max_len: int = 2048                # tokens per training sequence (longer dialogues are cut)
  micro_batch_size: int = 8          # sequences per micro-batch (gradient accumulation)
  checkpoint_every: int = 10
  keep_checkpoints: int = 2
  log_every: int = 1                 # print a progress line every this many training steps
  remat: str = "none"                # per-layer rematerialization: none | full | dots
  share_prefix: bool = True          # forward the prefix all conversations share once per batch
  share_group_prefix: bool = True    # and store a group's shared span once per row


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A whole run. `teacher` None: a frozen copy of the student's initial weights."""
  student: ModelSpec
  teacher: ModelSpec | None
  tokenizer_path: str | None
  lora_rank: int
  param_dtype: str
  compute_dtype: str
  seed: int
  mesh: MeshSpec
  cache_length: int
  dialogue: DialogueConfig
  optimizer: OptimizerSpec
  train: TrainLoopSpec
  stages: tuple[TrainStageSpec | EvalSpec, ...]
  # Task constructor arguments by task name (from every curriculum that names the task), for
  # verifying problems of that task wherever they come from.
  task_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  cache_dtype: str = ""               # the sampler's KV cache dtype ("": compute_dtype)
  live_rows_min_batch: int = 16       # `Sampler`: decode the running rows alone (0: never)

  @property
  def training_steps(self) -> int:
    return sum(s.steps for s in self.stages if isinstance(s, TrainStageSpec))
