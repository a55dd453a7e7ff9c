"""Online SML on GSM-like word problems with the embedded Gemma 3 270M (~22 min on 2 cores):
eval before -> 4 GRPO steps on train-split `gsm_symbolic` -> eval after, on 96 held-out problems.

The demo's dialogue and RL settings (configs/demo.py: the hint teacher, the strict reward, T=0.7
top-k 40 rollouts, LoRA 16, the format penalty), on word problems: the hint teacher's student
also sees three worked word problems (`prompts.WORD_PROBLEM_DEMOS`), whose ~900-token openings
need a cache of 1536 and `train.max_len` 1344 for 4 turns of up to 64 tokens.

What it shows: the base 270M solves none of these problems, so the success reward is 0 in every
rollout and the whole signal is the format penalty: within a group, conversations whose turns are
anchored answers rank above those with unanchored ones (`Sophia is 70 years old.`). Measured
(Dec 7, Zen 4, 1,305 s; README "Online SML fixes the format on word problems"): held-out
well-formed turns 0.867 -> 1.000, paired +0.133 [+0.073, +0.195]; demo copies 1.5% -> 2.0%;
success 0 -> 2 of 96, with wrong working. It makes the dialogues well-formed; it does not teach
the 270M word problems. Groups whose dialogues are all well-formed carry no signal, so the
steps train 32, 24, 16 and 8 dialogues.
"""
from configs import demo
from sml_jax.config import curriculum


def get_config():
  c = demo.get_config()
  c.curricula.math = curriculum(("gsm_symbolic", 1.0, {}))
  c.sampler.cache_length = 1536
  c.dialogue.student_max_tokens = 64
  c.train.max_len = 1344
  c.train.micro_batch_size = 2     # 2 x 1344 tokens per micro-batch: peak ~13 GB with the sampler
  c.train.checkpoint_every = 1     # a step is ~3 min
  c.rl.steps = 4
  c.eval.update({"tasks": "gsm_symbolic", "num_problems": 96, "batch_size": 32})
  return c
