"""sml_jax.stages: what a run does, stage by stage (import-light; see `driver.run`).

  base.py      the Stage protocol, the one training iteration
  kinds.py     stage kinds by name (make_stage)
  trainer.py   the optimizer and the compiled train steps shared by every training stage
  sft.py       SFT on reference solutions
  rollout.py   rl (GRPO), offline_sml (rejection-sampled SFT), qprime_sft (Q-priming SFT)
  eval.py      evaluation with resume of finished batches
  examples.py  conversations -> training examples (per-token weights)
  driver.py    stages in order, resume, metrics, checkpoints, report
"""
