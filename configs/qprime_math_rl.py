"""Q-priming SFT (failed attempts replaced by informative questions) then online SML on math."""
from sml_jax.config import base_config


def get_config():
  c = base_config()
  c.stages = "eval_before,qprime_sft,rl,eval_after"
  c.qprime_sft.curriculum = "math"
  c.rl.curriculum = "math"
  c.eval.tasks = "gsm8k,gsm8k_sharded"   # gsm8k_sharded: underspecified (premature answers, questions)
  return c
