r"""Completions for a batch of raw-text prompts with the project's sampler.

    python -m sml_jax.generate --model=gemma3_270m --prompt="def fibonacci(n):" \
        --prompt="The Eiffel Tower is in" --max_new_tokens=12 --temperature=0 --json

Prompts are raw text (no chat template), encoded with a `<bos>` prefix as `gm.text.Sampler`
does; generation stops at `<eos>` / `<end_of_turn>` (the stop token is kept in the text, as
`gm.text.Sampler` keeps it). `--temperature=0` is greedy. `--json` prints a JSON list of the
completion strings (one per prompt, in order) as the last line.
"""

from __future__ import annotations

import json
import sys

from sml_jax import quiet

quiet.install()  # Before anything imports TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from sml_jax.models import tokens

_MODEL = flags.DEFINE_string("model", "gemma3_270m", "Model name (see sml_jax.models).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Orbax checkpoint path (local or gs://); "
                                  "default: the embedded weights (gemma3_270m) or random (tiny).")
_PROMPT = flags.DEFINE_multi_string("prompt", None, "A prompt (repeat for a batch).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Sample among the k most likely tokens.")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus sampling mass.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_CACHE = flags.DEFINE_integer("cache_length", None, "KV cache length (default: fits the batch).")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute dtype.")
_JSON = flags.DEFINE_bool("json", False, "Print a JSON list of completions as the last line.")

# gm.text.Sampler's end tokens: <eos>, <end_of_turn>, and the tool-response marker (id 50).
STOP_TOKENS = (tokens.EOS_ID, tokens.END_OF_TURN_ID, 50)


def generate_texts(model_name: str, prompts: list[str], *, checkpoint: str | None = None,
                   max_new_tokens: int = 64, temperature: float = 0.0, top_k: int | None = None,
                   top_p: float | None = None, seed: int = 0, cache_length: int | None = None,
                   dtype: str = "bfloat16") -> list[str]:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sml_jax import models  # pylint: disable=g-import-not-at-top
  from sml_jax.sampling import Sampler  # pylint: disable=g-import-not-at-top

  models.check_model_name(model_name)
  dt = jnp.dtype(dtype)
  tokenizer = models.load_tokenizer(model_name)
  ids = [list(tokenizer.encode(p, add_bos=True)) for p in prompts]
  if cache_length is None:
    cache_length = max(len(x) for x in ids) + max(max_new_tokens, 1)
  model = models.build_model(model_name, dtype=dt)
  params = models.load_params(model_name, checkpoint, dtype=dt)
  sampler = Sampler(model, cache_length=cache_length, dtype=dt, stop_tokens=STOP_TOKENS)
  out = sampler.generate(params, ids, max_new_tokens=max_new_tokens, temperature=temperature,
                         top_k=top_k, top_p=top_p, seed=seed)
  return [tokenizer.decode(t.tolist()) for t in out.tokens]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _PROMPT.value:
    raise app.UsageError("Pass at least one --prompt=TEXT.")
  from sml_jax import models  # pylint: disable=g-import-not-at-top
  try:
    models.check_model_name(_MODEL.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  try:
    texts = generate_texts(
        _MODEL.value, list(_PROMPT.value), checkpoint=_CHECKPOINT.value,
        max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
        top_p=_TOP_P.value, seed=_SEED.value, cache_length=_CACHE.value, dtype=_DTYPE.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for prompt, text in zip(_PROMPT.value, texts):
    print(f"--- {prompt!r}\n{prompt}{text}")
  if _JSON.value:
    print(json.dumps(texts))


if __name__ == "__main__":
  app.run(main)
