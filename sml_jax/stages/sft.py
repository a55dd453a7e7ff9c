"""`sft`: supervised finetuning on reference solutions (no rollout), the baseline SML is
compared with. The reference solution is written as the student's first turn after the same
opening (and in-context demonstrations) as a dialogue; the loss is on that turn only."""

from __future__ import annotations

from sml_jax.stages import examples
from sml_jax.stages.base import Collected, TrainingStage


class SFTStage(TrainingStage):
  samples = False

  def collect(self, exp, params, problems, seed: int, first_problem: int,
              on_turn=None) -> Collected:
    del params, seed, first_problem, on_turn  # Nothing is sampled.
    d = exp.spec.dialogue
    return Collected(examples.reference_examples(problems, exp.tokenizer, d.fewshot, d.teacher),
                     [], {})
