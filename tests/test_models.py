"""Foundation checks: the embedded 270M conversion, tokenizer, model registry, errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sml_jax import models
from sml_jax.models import embedded

# A fixed Wikipedia-style paragraph of plain English.
PARAGRAPH = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889. Locally nicknamed \"La dame de fer\" (French for \"Iron Lady\"), it was "
    "constructed as the centrepiece of the 1889 World's Fair.")


def perplexity(model, params, tokenizer, text: str) -> float:
  ids = jnp.asarray([[2] + list(tokenizer.encode(text))])
  logits = model.apply({"params": params}, ids).logits[0, :-1].astype(jnp.float32)
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, ids[0, 1:, None], axis=-1).mean()
  return float(jnp.exp(nll))


@pytest.mark.parametrize("text", [
    "Hello world!  Two  spaces\n\tTab 12345 é 日本 🙂",
    "def f(x):\n    return x ** 2  # square\n",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
])
def test_tokenizer_round_trip(tokenizer, text):
  assert tokenizer.decode(tokenizer.encode(text)) == text


def test_chat_tokens_have_official_ids(tokenizer):
  assert tokenizer.encode("<start_of_turn>") == [105]
  assert tokenizer.encode("<end_of_turn>") == [106]
  assert tokenizer.encode("<start_of_turn>user\n")[0] == 105
  # Digits are split one per token (Gemma's tokenizer splits digits).
  assert len(tokenizer.encode("12345")) == 5


@pytest.mark.slow
def test_embedded_270m_perplexity(real_270m, tokenizer):
  model, params = real_270m
  n = sum(x.size for x in jax.tree.leaves(params))
  assert n == 268_098_176
  ppl = perplexity(model, params, tokenizer, PARAGRAPH)
  assert 2.0 < ppl < 10.0, ppl


@pytest.mark.slow
def test_corrupted_mapping_is_caught(real_270m, tokenizer):
  """Swapping two layers (a plausible conversion bug) must blow the perplexity up."""
  model, params = real_270m
  bad = dict(params)
  bad["layer_3"], bad["layer_4"] = params["layer_4"], params["layer_3"]
  assert perplexity(model, bad, tokenizer, PARAGRAPH) > 100.0
  # Forgetting llama.cpp's (1 + w) norm convention is caught too.
  bad2 = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 1.0 if "norm" in jax.tree_util.keystr(p) else x, params)
  assert perplexity(model, bad2, tokenizer, PARAGRAPH) > 100.0


def test_conversion_is_cached_and_deterministic(tokenizer):
  del tokenizer  # Ensures the cache exists.
  d = embedded.ensure_cached()
  assert (d / "DONE").exists() and (d / "tokenizer.model").exists() and (d / "params").is_dir()
  import gguf
  reader = gguf.GGUFReader(embedded._gguf_path())
  assert embedded.tokenizer_proto_from_gguf(reader) == (d / "tokenizer.model").read_bytes()


def test_tiny_model_loads_and_runs(tiny):
  model, params = tiny
  out = model.apply({"params": params}, jnp.array([[2, 10, 20, 30]]))
  assert out.logits.shape == (1, 4, 262144)
  assert np.isfinite(np.asarray(out.logits)).all()


def test_lora_wrap_adds_lora_params():
  model = models.build_model("tiny", lora_rank=4)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  assert any("lora" in p for p in paths)


def test_unknown_model_name_is_a_clear_error():
  with pytest.raises(ValueError, match="Unknown model name 'gemma9'.*gemma3_270m"):
    models.build_model("gemma9")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist.*--checkpoint"):
    models.load_params("gemma3_270m", checkpoint=str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="no embedded weights"):
    models.load_params("gemma3_12b")


@pytest.mark.slow
def test_two_processes_starting_together_convert_once(tmp_path):
  """The first process to take the cache's lock converts; the other waits and reads its copy."""
  import subprocess
  import sys
  env = dict(os.environ, SML_JAX_CACHE=str(tmp_path))
  code = "from sml_jax.models import embedded; embedded.ensure_cached()"
  procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs)
  assert sum("converting the embedded" in o for o in outs) == 1, outs
  assert embedded._is_current(tmp_path / embedded.NAME)
