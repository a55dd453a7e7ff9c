"""The train state: trainable params (f32 master copy), frozen params, optimizer state, step, RNG.

    model = build_model("gemma3_270m", lora_rank=8)      # or lora_rank=None: full finetune
    state = create_train_state(model, params, make_optimizer(opt_cfg), seed=0)
    full = state.full_params()                           # merged tree for sampling / eval

Full finetune: `params` = every weight (float32), `frozen` = {}.
LoRA (`model` is a `gm.nn.LoRA`): `params` = only the LoRA factors (float32, freshly
initialised: A random, B zero, so the model starts as the base model), `frozen` = the base
weights stored in `frozen_dtype` (bfloat16 by default: they are only ever read in bf16).

`rng` is raw uint32 key data [2] (not a typed key) so it checkpoints like any array.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sml_jax.parallel import rules

Params = dict[str, Any]


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 []
  params: Params         # trainable, float32
  frozen: Params         # not trained ({} for full finetune)
  opt_state: optax.OptState
  rng: jax.Array         # uint32 [2]

  def full_params(self) -> Params:
    return merge_params(self.params, self.frozen)

  def next_rng(self) -> tuple["TrainState", jax.Array]:
    """Splits the state's key: (state with the new key, a typed key for this step)."""
    key, sub = jax.random.split(jax.random.wrap_key_data(self.rng))
    return self.replace(rng=jax.random.key_data(key)), sub


def is_lora(model) -> bool:
  from gemma import gm  # pylint: disable=g-import-not-at-top
  return isinstance(model, gm.nn.LoRA)


def split_params(params: Params) -> tuple[Params, Params]:
  """-> (base params without 'lora' branches, the 'lora' branches)."""
  from gemma import peft  # pylint: disable=g-import-not-at-top
  original, lora = peft.split_params(params)
  return original, lora


def merge_params(trainable: Params, frozen: Params) -> Params:
  """Inverse of `split_params` (either may be {}). Works inside jit."""
  if not frozen:
    return trainable
  if not trainable:
    return frozen
  from gemma import peft  # pylint: disable=g-import-not-at-top
  return peft.merge_params(frozen, trainable)


def init_lora_params(model, base_params: Params, seed: int = 0) -> Params:
  """Fresh LoRA factors for `model` (a `gm.nn.LoRA`); the base weights init is dead code."""
  if not is_lora(model):
    raise ValueError("init_lora_params needs a LoRA-wrapped model (build_model(..., lora_rank=r)).")

  @jax.jit
  def init(key):
    return split_params(model.init(key, jnp.zeros((1, 4), jnp.int32))["params"])[1]

  lora = init(jax.random.key(seed))
  expected, _ = split_params(jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]))
  shapes = lambda tree: {jax.tree_util.keystr(p): tuple(x.shape)
                         for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  if shapes(base_params) != shapes(expected):
    raise ValueError("The base params do not match the LoRA model's base structure "
                     "(wrong model name for this checkpoint?).")
  return lora


def create_train_state(model, params: Params, optimizer: optax.GradientTransformation, *,
                       seed: int = 0, frozen_dtype=jnp.bfloat16,
                       lora: Params | None = None) -> TrainState:
  """Builds the state on the host's default device; use `shard_train_state` to place it on a mesh.

  params: the model's base params (any float dtype; trainable ones are stored in float32). The
  state holds copies, so `params` stays valid after the step donates the state.
  lora: LoRA factors to start from (an exported adapter, `models.adapters`) instead of fresh ones;
  they must have the LoRA model's structure and shapes.
  """
  if lora is not None and not is_lora(model):
    raise ValueError("LoRA factors were given but the model has no LoRA adapters.")
  if is_lora(model):
    trainable = init_lora_params(model, params, seed)
    if lora is not None:
      shapes = lambda tree: {jax.tree_util.keystr(p): tuple(x.shape)
                             for p, x in jax.tree_util.tree_leaves_with_path(tree)}
      if shapes(lora) != shapes(trainable):
        raise ValueError("The LoRA factors do not match the model's adapters (another model or "
                         "rank?).")
      trainable = lora
    frozen = jax.tree.map(lambda x: jnp.array(x, frozen_dtype, copy=True), params)
  else:
    trainable, frozen = params, {}
  # Copies: the step donates the state's buffers, which must not alias the caller's params
  # (e.g. the frozen teacher's).
  trainable = jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), trainable)
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable, frozen=frozen,
                    opt_state=optimizer.init(trainable),
                    rng=jax.random.key_data(jax.random.key(seed)))


def state_shardings(state: TrainState, mesh):
  """NamedShardings for every leaf, from the one rules table (optimizer moments follow their
  param's rule because the rules match on the path's end; scalars are replicated)."""
  return rules.tree_shardings(state, mesh)


def shard_train_state(state: TrainState, mesh) -> TrainState:
  shardings = state_shardings(state, mesh)
  if jax.process_count() == 1:
    return jax.device_put(state, shardings)
  # Several hosts (each passes the same values): assembled by a jit from host copies. A
  # device_put of host-local arrays onto the cross-host mesh gives arrays orbax cannot save.
  host = jax.tree.map(np.asarray, state)
  return jax.jit(lambda s: s, out_shardings=shardings)(host)


def count_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))
