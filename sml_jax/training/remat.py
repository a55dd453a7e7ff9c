"""Rematerialization of the gemma trunk's layers in the train step (`TrainConfig.remat`).

    out = remat.apply(model, "full", {"params": params}, tokens, ...)   # inside jax.grad

gemma's `Transformer` has no remat option, so each `Block.__call__` is wrapped, while the
context is open, in flax's lifted `nn.checkpoint` (a `jax.checkpoint` that handles the module's
variables) through a method interceptor. Per policy, what the backward pass keeps of a layer:

  none   everything autodiff saves (fastest; activations grow with layers x tokens)
  full   only the layer's input: the layer is recomputed in the backward pass (~1/3 more FLOPs)
  dots   the outputs of weight matmuls (`dots_with_no_batch_dims_saveable`): norms, RoPE,
         GELU and the attention softmax are recomputed, the projections are not

gemma jits `Transformer.__call__` (`nn.jit`, the module static), and its trace cache does not see
the interceptor: `apply` therefore runs a per-policy subclass of the model (same fields and
params, a different cache key), so a policy never reuses another policy's trace.

On a mesh (`activations` given) each layer also gathers its own weights inside the wrapped call
(`rules.gathered_shardings`), and the block runs under `jax.checkpoint` even with "none", whose
policy then saves everything but those gathered weights: the backward pass gathers each layer's
weights again. Left alone, XLA reuses (CSE) the forward pass's gather in the backward pass and
keeps every layer's gathered weights alive from one to the other (at 12B on fsdp=32: 48 layers x
0.45 GB per device instead of about one layer's).

The math is unchanged (same gradients up to float reordering); `planning/memory.py` plans the
activations of each policy. Import-light (config validation reads `POLICIES`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses

POLICIES = ("none", "full", "dots")
_INSIDE = contextvars.ContextVar("sml_jax_remat_inside", default=False)
_VARIANTS: dict = {}


def check_policy(name: str) -> str:
  if name not in POLICIES:
    raise ValueError(f"remat must be one of {', '.join(POLICIES)}, got {name!r}.")
  return name


def _save_all_but_gathered(prim, *_, **__) -> bool:
  """"none" on a mesh: save every value but sharding constraints' outputs (the gathered weights;
  an activation's constraint is redone from its saved input), so the backward pass gathers a
  layer's weights again instead of keeping them from the forward pass."""
  return prim.name != "sharding_constraint"


def _jax_policy(name: str):
  import jax  # pylint: disable=g-import-not-at-top  (import-light: config.py reads POLICIES)
  # "dots" saves only weight-matmul outputs and "full" nothing: neither saves gathered weights.
  return {"none": _save_all_but_gathered, "full": None,
          "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[name]


@contextlib.contextmanager
def layers(policy: str, activations=None):
  """While open, every gemma `Block` called (under `model.apply`) is rematerialized; with
  `activations` (a NamedSharding of [B, T, D]) each block's input and output are constrained to
  it, so that on an fsdp mesh activations stay split over the batch and each layer's weights are
  gathered instead (GSPMD left alone may split activations like the weights' embed dim and
  replicate the batch), inside the block and again in the backward pass (module docstring)."""
  check_policy(policy)
  if policy == "none" and activations is None:
    yield
    return
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from gemma.gm.nn import _modules  # pylint: disable=g-import-not-at-top
  from sml_jax.parallel import rules  # pylint: disable=g-import-not-at-top
  jax_policy = _jax_policy(policy)
  constrain = ((lambda x: x) if activations is None
               else (lambda x: jax.lax.with_sharding_constraint(x, activations)))

  def gather(variables):
    """A layer's weights in the layout it runs in (no policy saves them, see above)."""
    return jax.lax.with_sharding_constraint(
        variables, rules.gathered_shardings(variables, activations.mesh))

  def body(module, *args, **kwargs):
    token = _INSIDE.set(True)   # The call below re-enters the interceptor: pass it through.
    try:
      cache, x = module(constrain(args[0]), *args[1:], **kwargs)
      return cache, constrain(x)
    finally:
      _INSIDE.reset(token)

  def interceptor(next_fun, args, kwargs, context):
    if (_INSIDE.get() or context.method_name != "__call__"
        or not isinstance(context.module, _modules.Block)):
      return next_fun(*args, **kwargs)
    fn = body if activations is None else nn.map_variables(body, "params", trans_in_fn=gather)
    return nn.checkpoint(fn, policy=jax_policy, prevent_cse=True)(context.module, *args,
                                                                  **kwargs)

  with nn.intercept_methods(interceptor):
    yield


def variant(model, policy: str, activations=None):
  """`model` (a gm.nn Transformer, or a `gm.nn.LoRA` around one) as an instance of a subclass
  for (`policy`, `activations`) (same fields, same params); "none" unconstrained: `model`."""
  check_policy(policy)
  if policy == "none" and activations is None:
    return model
  inner = getattr(model, "model", None)
  if inner is not None and hasattr(inner, "config"):       # gm.nn.LoRA: the jit is inside
    return _clone(model, model=variant(inner, policy, activations))
  cls = type(model)
  key = (cls, policy, activations)
  if key not in _VARIANTS:
    _VARIANTS[key] = type(f"{cls.__name__}_remat_{policy}", (cls,), {"__module__": cls.__module__})
  return _clone(model, cls=_VARIANTS[key])


def _clone(module, cls=None, **updates):
  fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.init and f.name not in ("parent", "name")}
  return (cls or type(module))(**{**fields, **updates})


def apply(model, policy: str, variables, *args, activations=None, **kwargs):
  """`model.apply(variables, *args, **kwargs)` with the trunk's layers rematerialized (and
  their activations constrained, see `layers`)."""
  with layers(policy, activations):
    return variant(model, policy, activations).apply(variables, *args, **kwargs)
