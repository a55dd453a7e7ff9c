"""Gemma models by name: build the `gm.nn` module, load params, optionally wrap in LoRA.

    model = build_model("gemma3_270m", lora_rank=None)
    params = load_params("gemma3_270m", checkpoint=None)   # None -> the embedded 270M weights
    tok = load_tokenizer("gemma3_270m")

`tiny` is a small random-init Gemma 3 style transformer for unit tests; it keeps the real
262,144-word vocabulary so the real tokenizer works with it.

Text only: gemma's 4B/12B/27B classes carry a SigLIP vision encoder; they are built with
`text_only=True`, so their init, their LoRA wrapper and the checkpoints we load
(`load_params(..., text_only=True)`) all have the same text-only structure.

Sharded loading (nothing replicated, no host copy):

    mesh = make_mesh(data=1, fsdp=-1)
    params = load_params("gemma3_12b", "gs://.../ckpt", sharding=mesh)   # rules-table shardings

Import-light on purpose (config validation reads `MODEL_NAMES` at CLI start-up): gemma and jax
load inside the functions that build or load something. Special token ids: `tokens.py`.
"""

from __future__ import annotations

import os
from typing import Any

MODEL_NAMES = ("gemma3_270m", "gemma3_1b", "gemma3_4b", "gemma3_12b", "gemma3_27b", "tiny")
_GM_CLASS = {
    "gemma3_270m": "Gemma3_270M",
    "gemma3_1b": "Gemma3_1B",
    "gemma3_4b": "Gemma3_4B",
    "gemma3_12b": "Gemma3_12B",
    "gemma3_27b": "Gemma3_27B",
}
Params = dict[str, Any]


def check_model_name(name: str) -> str:
  if name not in MODEL_NAMES:
    raise ValueError(f"Unknown model name {name!r}; expected one of {', '.join(MODEL_NAMES)}.")
  return name


def tiny_config():
  """A 2-layer Gemma 3 style config (local + global attention), ~17M params (mostly embedding)."""
  from gemma.gm.nn import _config, _modules  # pylint: disable=g-import-not-at-top
  return _config.TransformerConfig(
      num_embed=262144, embed_dim=64, hidden_dim=128, num_heads=2, head_dim=32, num_kv_heads=1,
      final_logit_softcap=None, use_post_attn_norm=True, use_post_ffw_norm=True,
      use_qk_norm=True, transpose_gating_einsum=True, sliding_window_size=16,
      attention_types=(_modules.AttentionType.LOCAL_SLIDING, _modules.AttentionType.GLOBAL),
      query_pre_attn_norm=_config.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_HEAD_DIM,
      local_base_frequency=10_000, global_base_frequency=1_000_000, vision_encoder=None,
  )


def build_model(name: str, *, lora_rank: int | None = None, dtype=None):
  """Returns the (unbound) flax module for `name`, LoRA-wrapped when `lora_rank` is set."""
  check_model_name(name)
  from gemma import gm  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  kwargs = {} if dtype is None else {"dtype": dtype}
  if name == "tiny":
    model = gm.nn.Transformer(config=tiny_config(), **kwargs)
  else:
    cls = getattr(gm.nn, _GM_CLASS[name])
    if "text_only" in getattr(cls, "__dataclass_fields__", {}):   # 4B-27B: no SigLIP encoder
      kwargs["text_only"] = True
    model = cls(**kwargs)
  if lora_rank:
    if lora_rank < 0:
      raise ValueError(f"lora_rank must be positive, got {lora_rank}.")
    model = gm.nn.LoRA(rank=lora_rank, model=model, dtype=jnp.float32)
  return model


def abstract_params(name: str, dtype=None, sharding=None) -> Params:
  """The params of `name` as ShapeDtypeStructs (`jax.eval_shape` of the init: nothing allocated).

  dtype: every leaf's dtype (None: the init's, float32). sharding: None, a `Mesh` (shardings
  from the rules table, `parallel/rules.py`) or a pytree of `Sharding`s like the params.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  model = build_model(name)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
                          ["params"])
  shardings = _shardings(shapes, sharding)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype or s.dtype, sharding=sh),
                      shapes, shardings)


def _shardings(shapes, sharding):
  """None | Mesh | pytree of Shardings -> a pytree of Shardings (or Nones) like `shapes`."""
  import jax  # pylint: disable=g-import-not-at-top
  if sharding is None:
    return jax.tree.map(lambda _: None, shapes)
  if isinstance(sharding, jax.sharding.Mesh):
    from sml_jax.parallel import rules  # pylint: disable=g-import-not-at-top
    return rules.param_shardings(shapes, sharding)
  return sharding


def init_random_params(name: str, seed: int = 0, dtype=None, sharding=None) -> Params:
  """Random-init params (for `tiny` and shape checks); with `sharding` (see `abstract_params`),
  created sharded inside one jit."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  model = build_model(name)
  target = abstract_params(name, dtype or jnp.float32, sharding)
  out_shardings = jax.tree.map(lambda s: s.sharding, target)
  init = lambda key: cast(model.init(key, jnp.zeros((1, 4), jnp.int32))["params"],
                          dtype or jnp.float32)
  if sharding is None:
    return init(jax.random.key(seed))
  return jax.jit(init, out_shardings=out_shardings)(jax.random.key(seed))


def cast(params: Params, dtype) -> Params:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: x.astype(dtype), params)


def load_params(name: str, checkpoint: str | None = None, *, sharding=None, dtype=None,
                seed: int = 0, text_only: bool = True) -> Params:
  """Loads params for `name`, in `dtype` (default float32).

  checkpoint: an orbax checkpoint path (local or gs://) in any layout `gm.ckpts.load_params`
  reads (the official releases' flat `transformer/...` layout, nested, ...); None means the
  embedded Gemma 3 270M for `gemma3_270m`, random init for `tiny`, and an error for the other
  names (their weights do not ship with the project).
  sharding: None (gemma's default: restored on every device, then cast), a `Mesh` (each leaf restored directly into
  its rules-table sharding: a device reads only its shard, nothing is replicated) or a pytree of
  `Sharding`s. The restore target is the text-only model's abstract params, so a checkpoint of
  another model fails here with orbax's structure / shape error, and with `text_only` a
  multimodal checkpoint's vision encoder is skipped.
  """
  check_model_name(name)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dtype = dtype or jnp.float32
  if checkpoint is None:
    if name == "tiny":
      return init_random_params(name, seed, dtype, sharding)
    if name != "gemma3_270m":
      raise FileNotFoundError(
          f"Model {name!r} has no embedded weights: pass --checkpoint=PATH (or "
          f"config.checkpoint) to its orbax checkpoint, e.g. gs://gemma-data/checkpoints/...")
    from sml_jax.models import embedded  # pylint: disable=g-import-not-at-top
    checkpoint = str(embedded.params_path())
  elif not checkpoint.startswith("gs://") and not os.path.exists(checkpoint):
    raise FileNotFoundError(f"Checkpoint path {checkpoint!r} does not exist; pass an orbax "
                            "checkpoint directory (local or gs://) with --checkpoint=PATH.")
  from gemma import gm  # pylint: disable=g-import-not-at-top
  if sharding is None:   # gemma's default placement (every leaf on every device), then cast.
    return cast(gm.ckpts.load_params(checkpoint, text_only=text_only), dtype)
  target = abstract_params(name, dtype, sharding)
  try:
    return gm.ckpts.load_params(checkpoint, params=target, text_only=text_only)
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"Checkpoint {checkpoint!r} does not match model {name!r} (text only: "
                     f"{text_only}): {e}") from e


def load_tokenizer(name: str, tokenizer_path: str | None = None):
  """The Gemma 3 tokenizer: a user-given .model file, else the one rebuilt from the embedded GGUF
  (all Gemma 3 sizes share one vocabulary)."""
  check_model_name(name)
  from gemma import gm  # pylint: disable=g-import-not-at-top
  if tokenizer_path is None:
    from sml_jax.models import embedded  # pylint: disable=g-import-not-at-top
    tokenizer_path = str(embedded.tokenizer_path())
  else:
    from sml_jax import paths  # pylint: disable=g-import-not-at-top
    if not paths.exists(tokenizer_path):   # Local or gs:// (read through etils.epath).
      raise FileNotFoundError(f"Tokenizer file {tokenizer_path!r} does not exist.")
  return gm.text.Gemma3Tokenizer(path=tokenizer_path)
