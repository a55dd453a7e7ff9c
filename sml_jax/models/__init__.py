"""Gemma models: build by name, load checkpoints (embedded 270M by default), LoRA, tokenizer."""
from sml_jax.models.registry import (MODEL_NAMES, build_model, check_model_name, load_params,
                                     load_tokenizer, init_random_params, cast)
