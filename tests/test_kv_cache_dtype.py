"""`sampler.cache_dtype`: a bfloat16 KV cache under float32 compute halves the cache; the
sampler's log-probs stay within bf16 rounding of the float32 cache's, and the config key
reaches the experiment's samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sml_jax.sampling import Sampler

STOPS = (1, 106, 50)
TEXTS = ["def fibonacci(n):", "The Eiffel Tower is in", "Hi", "1, 2, 3, 4, 5, 6, 7, 8, 9"]


def cache_bytes(state) -> int:
  return sum(x.nbytes for layer in state.cache.layers for x in (layer.keys, layer.values))


def test_bf16_cache_under_f32_compute(tiny, tokenizer):
  model, params = tiny
  prompts = [list(tokenizer.encode(t, add_bos=True)) for t in TEXTS]
  out = {}
  for name in ("float32", "bfloat16"):
    sampler = Sampler(model, cache_length=256, dtype=jnp.float32, stop_tokens=STOPS,
                      cache_dtype=None if name == "float32" else jnp.bfloat16)
    state = sampler.start(params, prompts)
    assert state.cache.layers[0].keys.dtype == jnp.dtype(name)
    size = cache_bytes(state)
    # Teacher-forced: the same continuation scored under both caches (greedy from the f32 run).
    state, turn = sampler.sample(params, state, max_new_tokens=8, temperature=0.0)
    out[name] = (size, turn)
  (size32, t32), (size16, t16) = out["float32"], out["bfloat16"]
  assert size16 * 2 == size32
  same = [i for i in range(len(TEXTS)) if t16.tokens[i].tolist() == t32.tokens[i].tolist()]
  assert len(same) >= 2, "bf16 keys/values changed most greedy continuations"
  for i in same:
    diff = np.abs(t16.logprobs[i] - t32.logprobs[i]).max()
    # bf16 rounding of K/V moves log-probs a little, but not nothing (the test can fail both ways).
    assert 0 < diff < 0.05 or np.array_equal(t16.logprobs[i], t32.logprobs[i]), diff
  assert any(not np.array_equal(t16.logprobs[i], t32.logprobs[i]) for i in same)


def test_config_key_reaches_the_samplers():
  from sml_jax import config as config_lib
  from sml_jax.bench.rl_bench import load_config
  from sml_jax.experiment import Experiment
  c = load_config("configs/tiny_test.py", ["compute_dtype=float32", "sampler.cache_dtype=bfloat16"])
  spec = config_lib.to_spec(c)
  assert spec.cache_dtype == "bfloat16"
  exp = Experiment(spec)
  sampler = exp._sampler(exp.model)   # pylint: disable=protected-access
  assert sampler.dtype == jnp.float32 and sampler.cache_dtype == jnp.bfloat16
  c.sampler.cache_dtype = "float16"
  with pytest.raises(ValueError, match="sampler.cache_dtype"):
    config_lib.to_spec(c)
  assert config_lib.to_spec(config_lib.base_config()).cache_dtype == ""
