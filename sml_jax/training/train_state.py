"""The train state: trainable params (f32 master copy), frozen params, optimizer state, step, RNG.

    model = build_model("gemma3_270m", lora_rank=8)      # or lora_rank=None: full finetune
    state = create_train_state(model, params, make_optimizer(opt_cfg), seed=0)
    full = state.full_params()                           # merged tree for sampling / eval
    # Sharded from the start: params already on `mesh` (load_params(..., sharding=mesh)); the
    # state is built inside one jit whose outputs carry the rules table's shardings.
    state = create_train_state(model, params, tx, mesh=mesh)

Full finetune: `params` = every weight (float32), `frozen` = {}.
LoRA (`model` is a `gm.nn.LoRA`): `params` = only the LoRA factors (float32, freshly
initialised: A random, B zero, so the model starts as the base model; or an exported adapter's,
`lora=`), `frozen` = the base
weights stored in `frozen_dtype` (bfloat16 by default: they are only ever read in bf16).

`rng` is raw uint32 key data [2] (not a typed key) so it checkpoints like any array.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
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


def _shape_map(tree) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def check_lora_base(model, base_params: Params) -> None:
  """Raises unless `base_params` (e.g. a loaded checkpoint) has exactly the structure and shapes
  of the LoRA model's base weights."""
  expected, _ = split_params(jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]))
  got, want = _shape_map(base_params), _shape_map(expected)
  if got != want:
    diff = sorted(set(got.items()) ^ set(want.items()))[:4]
    raise ValueError("The base params do not match the LoRA model's base structure (wrong model "
                     f"name for this checkpoint?); first differences (path, shape): {diff}")


def _lora_init(model, key) -> Params:
  """The LoRA factors of a fresh init (inside jit the base weights' init is dead code)."""
  return split_params(model.init(key, jnp.zeros((1, 4), jnp.int32))["params"])[1]


def init_lora_params(model, base_params: Params, seed: int = 0) -> Params:
  """Fresh LoRA factors for `model` (a `gm.nn.LoRA`), checked against `base_params`."""
  if not is_lora(model):
    raise ValueError("init_lora_params needs a LoRA-wrapped model (build_model(..., lora_rank=r)).")
  check_lora_base(model, base_params)
  return jax.jit(lambda key: _lora_init(model, key))(jax.random.key(seed))


def _check_lora_factors(model, lora: Params) -> None:
  """Raises unless `lora` has the structure and shapes of the model's LoRA factors."""
  want = jax.eval_shape(lambda: _lora_init(model, jax.random.key(0)))
  if _shape_map(lora) != _shape_map(want):
    raise ValueError("The LoRA factors do not match the model's adapters (another model or "
                     "rank?).")


def _build_state(model, params: Params, optimizer, seed: int, frozen_dtype,
                 lora: Params | None = None) -> TrainState:
  """Traceable: base params (+ LoRA factors to start from, None: fresh) -> a fresh state (fresh
  buffers: the step donates the state's, which must not alias the caller's params, e.g. a frozen
  teacher's)."""
  copy = lambda dtype: (lambda x: jnp.array(x, dtype, copy=True))
  if is_lora(model):
    trainable = _lora_init(model, jax.random.key(seed)) if lora is None else lora
    frozen = jax.tree.map(copy(frozen_dtype), params)
  else:
    trainable, frozen = params, {}
  trainable = jax.tree.map(copy(jnp.float32), trainable)
  return TrainState(step=jnp.zeros((), jnp.int32), params=trainable, frozen=frozen,
                    opt_state=optimizer.init(trainable),
                    rng=jax.random.key_data(jax.random.key(seed)))


def create_train_state(model, params: Params, optimizer: optax.GradientTransformation, *,
                       seed: int = 0, frozen_dtype=jnp.bfloat16, lora: Params | None = None,
                       mesh=None) -> TrainState:
  """A fresh train state from the model's base `params` (any float dtype; trainable ones are
  stored in float32; LoRA: fresh factors, checked against `params`' structure).

  lora: LoRA factors to start from (an exported adapter, `models.adapters`) instead of fresh ones;
  they must have the LoRA model's structure and shapes.
  mesh None: on the default device (`shard_train_state` places it on a mesh later). With a
  `mesh`: one jit whose `out_shardings` are the rules table's (`state_shardings`), so the state
  is born sharded: no host copy and no replicated intermediate (pass `params` already on the
  mesh, e.g. `load_params(..., sharding=mesh)`; the casts run shard by shard). On several hosts
  every leaf is a global array, as the checkpointer and the step need.
  """
  if lora is not None and not is_lora(model):
    raise ValueError("LoRA factors were given but the model has no LoRA adapters.")
  if is_lora(model):
    check_lora_base(model, params)
    if lora is not None:
      _check_lora_factors(model, lora)
  build = lambda p, f: _build_state(model, p, optimizer, seed, frozen_dtype, f)
  if mesh is None:
    return jax.jit(build)(params, lora)
  shardings = state_shardings(jax.eval_shape(build, params, lora), mesh)
  return jax.jit(build, out_shardings=shardings)(params, lora)


def state_shardings(state: TrainState, mesh):
  """NamedShardings for every leaf, from the one rules table (optimizer moments follow their
  param's rule because the rules match on the path's end; scalars are replicated)."""
  return rules.tree_shardings(state, mesh)


def shard_train_state(state: TrainState, mesh) -> TrainState:
  """A state built on the default device (`create_train_state(..., mesh=None)`) -> on `mesh`."""
  shardings = state_shardings(state, mesh)
  if jax.process_count() == 1:
    return jax.device_put(state, shardings)
  # Several hosts, each holding the same values: every device takes its shard from this host's
  # copy (a device-to-device slice, never the whole state through host numpy). A device_put of
  # host-local arrays onto the cross-host mesh would give arrays orbax cannot save.
  return jax.tree.map(
      lambda x, sh: jax.make_array_from_callback(x.shape, sh, lambda idx, x=x: x[idx]),
      state, shardings)


def count_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))
