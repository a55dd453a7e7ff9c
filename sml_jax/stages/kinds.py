"""Stage kinds by name: `config.stages` names them, `make_stage` builds one from its spec.

A new kind is a class with `spec` and `run(ctx, state, first_step)` (a `TrainingStage` subclass
with `collect` for a training kind) and one entry here, plus its config section.
"""

from __future__ import annotations

from sml_jax.spec import EvalSpec, TrainStageSpec
from sml_jax.stages.base import Stage
from sml_jax.stages.eval import EvalStage
from sml_jax.stages.rollout import OfflineSMLStage, QPrimeSFTStage, RLStage
from sml_jax.stages.sft import SFTStage

STAGES = {"sft": SFTStage, "offline_sml": OfflineSMLStage, "qprime_sft": QPrimeSFTStage,
          "rl": RLStage, "eval": EvalStage}


def make_stage(spec: TrainStageSpec | EvalSpec) -> Stage:
  if spec.kind not in STAGES:
    raise ValueError(f"unknown stage kind {spec.kind!r}; known: {', '.join(STAGES)}")
  return STAGES[spec.kind](spec)
