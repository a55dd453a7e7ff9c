"""Online SML on math (GRPO, binary turn-discounted rewards), evaluated before and after.

TPU run: --config.model=gemma3_12b --config.checkpoint=gs://.../gemma3-12b-it
         --config.mesh.fsdp=-1 --config.mesh.data=1
"""
from sml_jax.config import base_config


def get_config():
  c = base_config()
  c.stages = "eval_before,rl,eval_after"
  c.rl.curriculum = "math"
  c.eval.tasks = "gsm8k,mbpp"     # math in-domain, code for cross-domain transfer
  return c
