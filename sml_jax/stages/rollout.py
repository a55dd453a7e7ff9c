"""The stages that learn from the student's own dialogues (rolled out with its current params):

  rl           online SML: GRPO over groups of `group_size` conversations per problem
               (`examples.rl_examples`); Q-priming off
  offline_sml  rejection-sampled SFT on successful conversations (`rollouts_per_problem` each)
  qprime_sft   SFT on dialogues where failed attempts were replaced by model-written questions
               with probability q ** t (`dialogue.qprime_q`)

Each host rolls out its block of the step's problems; conversation j of the block is global row
`first_problem * rollouts + j`, the key of its random streams.
"""

from __future__ import annotations

from sml_jax.stages import examples
from sml_jax.stages.base import Collected, TrainingStage


class RolloutStage(TrainingStage):
  """Rolls out `rollouts` conversations per problem, then `to_examples`."""
  qprime = False                 # Q-priming rewrites during rollouts

  @property
  def rollouts(self) -> int:
    return self.spec.rollouts_per_problem

  def to_examples(self, convs):
    raise NotImplementedError

  def collect(self, exp, params, problems, seed: int, first_problem: int,
              on_turn=None) -> Collected:
    runner = exp.episodes() if self.qprime else exp.episodes(qprime_q=0.0)
    convs = runner.run(problems, params, exp.teacher.params, seed=seed, repeats=self.rollouts,
                       first_row=first_problem * self.rollouts, on_turn=on_turn)
    return Collected(self.to_examples(convs), convs,
                     {f"time_{k}_s": v for k, v in runner.seconds.items()})


class RLStage(RolloutStage):

  @property
  def rollouts(self) -> int:
    return self.spec.group_size

  def to_examples(self, convs):
    out, _ = examples.rl_examples(convs, self.spec.group_size, self.spec.adv_eps,
                                  with_logprobs=self.spec.train.needs_old_logprobs,
                                  format_penalty=self.spec.format_penalty)
    return out


class OfflineSMLStage(RolloutStage):

  def to_examples(self, convs):
    return examples.offline_sml_examples(convs)


class QPrimeSFTStage(RolloutStage):
  qprime = True

  def to_examples(self, convs):
    return examples.qprime_examples(convs)
