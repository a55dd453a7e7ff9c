"""Offline SML on math: roll out dialogues, keep the successful ones, SFT on student turns."""
from sml_jax.config import base_config


def get_config():
  c = base_config()
  c.stages = "eval_before,offline_sml,eval_after"
  c.offline_sml.curriculum = "math"
  c.eval.tasks = "gsm8k,mbpp"
  return c
