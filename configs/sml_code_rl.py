"""Online SML on code (MBPP; the teacher sees the failing tests' output), eval on code and math."""
from sml_jax.config import base_config


def get_config():
  c = base_config()
  c.stages = "eval_before,rl,eval_after"
  c.rl.curriculum = "code"
  c.sampler.cache_length = 3072
  c.dialogue.student_max_tokens = 384
  c.eval.tasks = "mbpp,gsm8k"
  return c
