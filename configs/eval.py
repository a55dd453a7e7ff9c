"""Standalone evaluation: --config.model=... --config.checkpoint=... --config.eval.tasks=gsm8k,mbpp"""
from sml_jax.config import base_config


def get_config():
  c = base_config()
  c.stages = "eval"
  return c
