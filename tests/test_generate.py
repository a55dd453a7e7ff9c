"""`python -m sml_jax.generate`: the issue's command equals gm.text.Sampler's greedy output."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["def fibonacci(n):", "The Eiffel Tower is in"]


def run_cli(*args, timeout=900):
  return subprocess.run([sys.executable, "-m", "sml_jax.generate", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_matches_gm_sampler_greedy(real_270m, tokenizer):
  import jax.numpy as jnp
  from gemma import gm
  from sml_jax import models
  proc = run_cli("--model=gemma3_270m", *[f"--prompt={p}" for p in PROMPTS],
                 "--max_new_tokens=12", "--temperature=0", "--json")
  assert proc.returncode == 0, proc.stderr[-3000:]
  ours = json.loads(proc.stdout.strip().splitlines()[-1])
  # The CLI computes in bfloat16 (its default --dtype): the reference does too.
  model = models.build_model("gemma3_270m", dtype=jnp.bfloat16)
  params = models.cast(real_270m[1], jnp.bfloat16)
  ref = gm.text.Sampler(model=model, params=params, tokenizer=tokenizer, cache_length=512)
  expected = ref.sample(PROMPTS, max_new_tokens=12)
  assert ours == expected
  assert len(ours) == 2 and all(ours)


def test_cli_unknown_model_fails_clearly():
  proc = run_cli("--model=gemma9_huge", "--prompt=hi", timeout=300)
  assert proc.returncode != 0
  assert "Unknown model name" in proc.stderr


def test_cli_needs_a_prompt():
  proc = run_cli("--model=tiny", timeout=300)
  assert proc.returncode != 0
  assert "--prompt" in proc.stderr
