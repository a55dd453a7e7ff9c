"""THE train step: one jitted function for every stage (SFT, Q-priming SFT, GRPO).

    cfg = TrainConfig(loss="nll", num_micro_batches=4)
    step = make_train_step(model, make_optimizer(opt_cfg), cfg, mesh=mesh,
                           schedule=make_schedule(opt_cfg))
    state, metrics = step(state, batch)     # batch: a `batching.Batch` (`make_batch`; numpy ok)

SFT and RL differ only in the batch's per-token `weights` (1 vs the advantage on student
tokens) and, through the static `TrainConfig`, in the optional PPO ratio clip and KL terms; so
one compiled function serves both (it recompiles only for a new shape or config).

Per micro-batch (B / num_micro_batches rows, rows m, m + M, m + 2M, ... for micro-batch m):

    h = gemma trunk(tokens) in `compute_dtype` (bf16 copies of the f32 master params)
    loss_sum = sum_t scale_t * [policy_loss(logp_t, w_t, old_t) + kl_beta * mask_t * kl(logp_t, ref_t)]
    over the positions in `batch.loss_index` (targets with non-zero mask or weight; every other
    position adds exactly 0), or over every position when the batch has no index
    denominator = student tokens (or sequences), see `losses.py`

gradients of loss_sum are summed over micro-batches (lax.scan, f32) and divided by the summed
denominator, so 4 micro-batches give the gradient of one big batch exactly (up to float
rounding). Token t's log-prob comes from h[t - 1]; `logprobs.fused_token_loss` computes it (and
its gradient) chunk by chunk without [B, T, V] logits, from h gathered at `loss_index` ([B, K],
K ~ the student tokens of the fullest row; the gather's gradient scatters back into h). The
model's own logits output is unused and removed by XLA. Packed rows (`segment_ids`) attend within
their segment only, and the "sequences" normaliser counts segments, so a packed batch gives the
same loss and gradient as the unpacked one. A batch with a shared prefix (`prefix_tokens`)
forwards the prefix once per step, at batch 1, and every micro-batch's suffixes against its KV
cache (`shared_prefix.py`); the micro-batches' cotangents of its keys / values are summed and
back-propagated through it once (`_accumulate`): same loss and gradient again. A group span
(`parent_ids`: a GRPO group's problem statement, stored once per row) is a segment its group's
segments also attend to: exact too. Micro-batches
without a token are skipped (`lax.cond`), so a row count padded to a few bucketed micro-batch
counts (`batching.spread_micro_batches`) costs no compute, only fewer compiled programs.

With a `mesh`, state and batch are sharded by `sml_jax/parallel/rules.py` (batch rows over
("data", "fsdp")); the state buffers are donated. Metrics (all float32 scalars): loss,
grad_norm (before clipping), learning_rate, num_student_tokens, denominator, mean_logprob
(student tokens), and with PPO / KL: clip_fraction, log_ratio_abs_mean (mean |log p - log p_old|
over student tokens), kl.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from sml_jax.models.tokens import PAD_ID
from sml_jax.parallel import mesh as mesh_lib
from sml_jax.parallel import rules
from sml_jax.training import logprobs as logprobs_lib
from sml_jax.training import losses
from sml_jax.training import remat
from sml_jax.training import shared_prefix
from sml_jax.training.batching import Batch
from sml_jax.training.train_state import TrainState, merge_params, state_shardings

REQUIRED_KEYS = ("tokens", "positions", "input_mask", "mask", "weights")   # Batch fields
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Static step config (changing it recompiles). See `losses.py` for the formulas."""
  loss: str = "nll"                  # "nll" (SFT / GRPO at ratio 1) or "ppo" (ratio clipping)
  clip_eps: float = 0.2              # PPO ratio clip
  kl_beta: float = 0.0               # weight of the k3 KL to ref_logprobs (0: no reference needed)
  normaliser: str = "tokens"         # "tokens" or "sequences"
  num_micro_batches: int = 1         # gradient accumulation inside the step
  compute_dtype: str = "bfloat16"    # activations / matmuls; master params stay float32
  logits_chunk_size: int = logprobs_lib.DEFAULT_CHUNK_SIZE  # tokens per unembedding chunk
  # The policy's temperature: log-probs of softmax(logits / temperature), the distribution the
  # rollouts were sampled from (so the first PPO inner step has ratio 1). 1.0 for SFT.
  temperature: float = 1.0
  # Per-layer rematerialization of the trunk in the backward pass: "none" | "full" | "dots"
  # (see `remat.py`). Same gradients, less activation memory.
  remat: str = "none"

  def __post_init__(self):
    remat.check_policy(self.remat)
    losses.get_policy_loss(self.loss)
    losses.check_normaliser(self.normaliser)
    if not 0 < self.clip_eps < 1:
      raise ValueError(f"TrainConfig.clip_eps must be in (0, 1), got {self.clip_eps}.")
    if self.kl_beta < 0:
      raise ValueError(f"TrainConfig.kl_beta must be >= 0, got {self.kl_beta}.")
    if self.num_micro_batches < 1:
      raise ValueError(f"TrainConfig.num_micro_batches must be >= 1, got "
                       f"{self.num_micro_batches}.")
    if self.compute_dtype not in DTYPES:
      raise ValueError(f"TrainConfig.compute_dtype must be one of {sorted(DTYPES)}, got "
                       f"{self.compute_dtype!r}.")
    if not self.temperature > 0:
      raise ValueError(f"TrainConfig.temperature must be > 0, got {self.temperature}.")
    if self.logits_chunk_size < 1:
      raise ValueError(f"TrainConfig.logits_chunk_size must be >= 1, got "
                       f"{self.logits_chunk_size}.")

  @property
  def needs_old_logprobs(self) -> bool:
    return self.loss == "ppo"

  @property
  def needs_ref_logprobs(self) -> bool:
    return self.kl_beta > 0


def _shift_left(x: jax.Array, fill=0) -> jax.Array:
  """[B, T] -> [B, T] with out[:, t] = x[:, t + 1] (the value for the token predicted at t)."""
  return jnp.concatenate([x[:, 1:], jnp.full_like(x[:, :1], fill)], axis=1)


def _token_loss(logp, aux, *, cfg: TrainConfig):
  """Elementwise per-token loss (see `losses.py`); aux holds [C] arrays."""
  policy = losses.get_policy_loss(cfg.loss)
  out = policy(logp, aux["weights"], aux.get("old_logprobs"), clip_eps=cfg.clip_eps)
  if cfg.kl_beta:
    # where, not a product: k3 can overflow off the mask (ref_logprobs is 0 there).
    out = out + cfg.kl_beta * jnp.where(aux["mask"] != 0, losses.kl_k3(
        logp, aux["ref_logprobs"]), 0.0)
  return aux["scale"] * out


def attention_mask(input_mask: jax.Array, segment_ids: jax.Array | None = None,
                   parent_ids: jax.Array | None = None) -> jax.Array:
  """input_mask bool [B, T] (segment_ids, parent_ids int [B, T]) -> causal mask bool [B, T, T]
  over real (non-pad) keys of the query's own segment, and of the group span it hangs off
  (`parent_ids`: that span's segment id, earlier in the row; 0 for none, which no real key has)."""
  t = input_mask.shape[1]
  causal = jnp.tril(jnp.ones((t, t), bool))
  mask = causal[None] & input_mask[:, None, :]
  if segment_ids is not None:
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    if parent_ids is not None:
      same = same | (parent_ids[:, :, None] == segment_ids[:, None, :])
    mask = mask & same
  return mask


def _gather(x: jax.Array, index: jax.Array | None) -> jax.Array:
  """x [B, T, ...] at index [B, K] -> [B, K, ...] (x itself when index is None)."""
  if index is None:
    return x
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def _tempered(h: jax.Array, model, cfg: TrainConfig) -> jax.Array:
  """h / temperature: without a final-logit softcap (Gemma 3 has none), logits / T = (h / T) E^T,
  so the chunked unembedding and its gradient need no change."""
  if cfg.temperature == 1.0:
    return h
  if getattr(getattr(model, "config", None), "final_logit_softcap", None) is not None:
    raise ValueError("TrainConfig.temperature != 1 needs a model without final-logit softcap.")
  return (h.astype(jnp.float32) / cfg.temperature).astype(h.dtype)


def compute_copy(params, dtype, mesh=None):
  """params cast to the compute dtype; with a mesh, pinned to the params' own (fsdp-split)
  layout: each layer gathers its copy itself (`remat.layers`), and without this pin GSPMD moves
  that gather back onto the f32 master params (twice the bytes) and shares one gather between
  the forward and backward passes."""
  out = jax.tree.map(lambda x: x.astype(dtype), params)
  if mesh is None:
    return out
  return jax.lax.with_sharding_constraint(out, rules.param_shardings(out, mesh))


def hidden_states(model, params, batch: Batch, remat_policy: str = "none",
                  mesh=None, prefix_kv=None) -> jax.Array:
  """The trunk's final-norm output h [B, T, D] (params already in the compute dtype). With a
  mesh, every layer's activations stay split over the batch axes (see `remat.layers`). With
  `prefix_tokens`, the shared prefix is forwarded once (or its keys / values `prefix_kv` are
  given) and h covers the rows' suffixes (`shared_prefix.py`)."""
  mask = attention_mask(batch.input_mask, batch.segment_ids, batch.parent_ids)
  if batch.prefix_tokens is not None:
    return shared_prefix.hidden_states(model, params, batch, mask, remat_policy, mesh,
                                       kv=prefix_kv)
  activations = None if mesh is None else rules.batch_sharding(mesh, 3)
  out = remat.apply(model, remat_policy, {"params": params}, batch.tokens,
                    positions=batch.positions, attention_mask=mask,
                    return_hidden_states=True, activations=activations)
  return out.hidden_states


def loss_head_layout(mesh, emb_shape: tuple[int, int], n: int,
                     chunk_size: int) -> logprobs_lib.Layout | None:
  """The vocab-parallel shardings of the loss head for n tokens (None without a mesh)."""
  if mesh is None:
    return None
  k = logprobs_lib.num_chunks(n, chunk_size)
  return logprobs_lib.Layout(**rules.loss_head_shardings(mesh, *emb_shape, -(-n // k)))


def micro_batch_loss(trainable, frozen, batch: Batch, prefix_kv=None, *, model,
                     cfg: TrainConfig, mesh=None):
  """-> (loss_sum, (denominator, metric sums)) for one micro-batch of [b, T] arrays; prefix_kv:
  the shared prefix's keys / values when the caller forwarded it (see `_accumulate`)."""
  dtype = DTYPES[cfg.compute_dtype]
  params = merge_params(trainable, frozen)
  h = hidden_states(model, compute_copy(params, dtype, mesh), batch, cfg.remat, mesh, prefix_kv)
  h = _tempered(_gather(h, batch.loss_index), model, cfg)              # [b, K or T, D]
  b, k, d = h.shape
  scale, denominator = losses.token_scale_and_denominator(batch.mask, cfg.normaliser,
                                                          batch.segment_ids)
  aux = {"weights": batch.weights, "mask": batch.mask, "scale": scale}
  for key in ("old_logprobs", "ref_logprobs"):
    if getattr(batch, key) is not None:
      aux[key] = getattr(batch, key)
  aux = {key: _gather(_shift_left(v.astype(jnp.float32)), batch.loss_index).reshape(-1)
         for key, v in aux.items()}
  targets = _gather(_shift_left(batch.tokens, PAD_ID), batch.loss_index).reshape(-1)
  softcap = getattr(getattr(model, "config", None), "final_logit_softcap", None)
  emb = params["embedder"]["input_embedding"]
  loss_sum, logp = logprobs_lib.fused_token_loss(
      functools.partial(_token_loss, cfg=cfg), h.reshape(b * k, d), emb, targets, aux,
      chunk_size=cfg.logits_chunk_size, softcap=softcap, compute_dtype=dtype,
      layout=loss_head_layout(mesh, emb.shape, b * k, cfg.logits_chunk_size))
  mask = aux["mask"]
  sums = {"num_student_tokens": mask.sum(), "logprob_sum": (mask * logp).sum()}
  if cfg.needs_old_logprobs:
    sums["clip_sum"] = (mask * losses.ppo_clip_fraction(
        logp, aux["old_logprobs"], aux["weights"], cfg.clip_eps)).sum()
    # |log ratio| of the sampled tokens: ~0 on the first (on-policy) inner step.
    sums["log_ratio_abs_sum"] = (mask * jnp.abs(logp - aux["old_logprobs"])).sum()
  if cfg.needs_ref_logprobs:
    sums["kl_sum"] = (mask * losses.kl_k3(logp, aux["ref_logprobs"])).sum()
  return loss_sum, (denominator, sums)


def batch_logprobs(params, batch: Batch, *, model, cfg: TrainConfig) -> jax.Array:
  """log p(tokens[:, t] | tokens[:, :t]) [B, T] float32 under `params` (full tree), aligned
  like `weights`; 0 at t = 0 and on padding. For reference / old log-probs and evaluation.
  With a `loss_index`, computed only at the indexed targets (the only ones the loss reads) and
  0 elsewhere."""
  dtype = DTYPES[cfg.compute_dtype]
  h = hidden_states(model, jax.tree.map(lambda x: x.astype(dtype), params), batch)
  h = _tempered(_gather(h, batch.loss_index), model, cfg)
  b, k, d = h.shape
  t = batch.tokens.shape[1]
  targets = _gather(_shift_left(batch.tokens, PAD_ID), batch.loss_index).reshape(-1)
  softcap = getattr(getattr(model, "config", None), "final_logit_softcap", None)
  logp = logprobs_lib.token_logprobs(h.reshape(b * k, d), params["embedder"]["input_embedding"],
                                     targets, chunk_size=cfg.logits_chunk_size, softcap=softcap,
                                     compute_dtype=dtype).reshape(b, k)
  if batch.loss_index is None:
    logp = jnp.concatenate([jnp.zeros_like(logp[:, :1]), logp[:, :-1]], axis=1)
  else:   # h[t] predicts token t + 1; the padding entries (t = T - 1) fall off the end.
    rows = jnp.arange(b)[:, None]
    logp = jnp.zeros((b, t), jnp.float32).at[rows, batch.loss_index + 1].set(logp, mode="drop")
  return jnp.where(batch.input_mask, logp, 0.0)


def make_logprob_fn(model, cfg: TrainConfig | None = None) -> Callable[[Any, Batch], jax.Array]:
  """Jitted `(full_params, batch) -> logprobs [B, T]` (see `batch_logprobs`)."""
  return jax.jit(functools.partial(batch_logprobs, model=model, cfg=cfg or TrainConfig()))


def check_batch(batch: Batch, cfg: TrainConfig, data_parallel: int = 1) -> None:
  """Clear errors for a wrong type, missing fields and shapes the step cannot split."""
  if not isinstance(batch, Batch):
    raise TypeError(f"The train step takes a batching.Batch (see make_batch), got "
                    f"{type(batch).__name__}.")
  missing = [k for k in REQUIRED_KEYS if getattr(batch, k) is None]
  if cfg.needs_old_logprobs and batch.old_logprobs is None:
    missing.append("old_logprobs (loss='ppo')")
  if cfg.needs_ref_logprobs and batch.ref_logprobs is None:
    missing.append("ref_logprobs (kl_beta > 0)")
  if missing:
    raise ValueError(f"Train batch is missing {', '.join(missing)}.")
  shape = tuple(batch.tokens.shape)
  for k, v in batch.arrays().items():
    want = shape[:1] + tuple(v.shape[1:2]) if k in ("loss_index", "prefix_tokens") else shape
    if tuple(v.shape) != want or len(v.shape) != 2:
      raise ValueError(f"Train batch '{k}' has shape {tuple(v.shape)}, expected {want}.")
  need = cfg.num_micro_batches * data_parallel
  if len(shape) != 2 or shape[0] % need:
    raise ValueError(f"Train batch size {shape[0] if shape else None} must be a multiple of "
                     f"num_micro_batches ({cfg.num_micro_batches}) x data-parallel devices "
                     f"({data_parallel}) = {need}; pad with make_batch(batch_multiple={need}).")


def _split_micro(batch: Batch, m: int, mesh) -> Batch:
  """[B, ...] -> [m, B / m, ...], micro-batch i = rows i, i + m, ... (keeps B's sharding)."""
  def split(x):
    x = x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)
    if mesh is not None:
      spec = jax.sharding.PartitionSpec(None, mesh_lib.BATCH_AXES, *([None] * (x.ndim - 2)))
      x = jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))
    return x
  return jax.tree.map(split, batch)


def _prefix_kv(trainable, frozen, prefix, *, model, cfg: TrainConfig, mesh=None):
  """The shared prefix's keys / values [1, P, K, H] per layer, from the compute copy."""
  params = compute_copy(merge_params(trainable, frozen), DTYPES[cfg.compute_dtype], mesh)
  return shared_prefix.prefix_kv(model, params, prefix, cfg.remat, mesh)


def _accumulate(state: TrainState, batch: Batch, *, model, cfg: TrainConfig, mesh=None):
  """Sums over the micro-batches -> (loss_sum, denominator, metric sums, f32 grads).

  A scan over the M strided micro-batches; one that holds no token (the trainer pads the
  micro-batch count to a power of two so few programs compile) is skipped by a `lax.cond`, its
  zeros adding nothing. With a shared prefix, the prefix is forwarded once for all M
  micro-batches: each micro-batch's gradient is taken with respect to (params, prefix keys /
  values), the keys' / values' cotangents are summed, and they are back-propagated through the
  prefix forward once (its `jax.vjp`, the forward recomputed then): the same gradient as
  forwarding it per micro-batch, for 2 prefix forwards and 1 backward per step instead of M
  of each."""
  m = cfg.num_micro_batches
  loss_fn = functools.partial(micro_batch_loss, model=model, cfg=cfg, mesh=mesh)
  kv, prefix_vjp = None, None
  if batch.prefix_tokens is not None:
    # Checkpointed: the vjp keeps only the params (no compute copy of the weights, no prefix
    # activations) alive through the scan, and recomputes the prefix forward once at the end.
    kv, prefix_vjp = jax.vjp(jax.checkpoint(
        functools.partial(_prefix_kv, frozen=state.frozen, prefix=batch.prefix_tokens[:1],
                          model=model, cfg=cfg, mesh=mesh)), state.params)
  grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 3) if kv is not None else 0, has_aux=True)
  f32 = lambda tree: jax.tree.map(lambda g: g.astype(jnp.float32), tree)

  def run(micro):
    (loss_sum, (denominator, sums)), grads = grad_fn(state.params, state.frozen, micro, kv)
    return loss_sum, denominator, sums, f32(grads)

  shapes = jax.eval_shape(run, jax.tree.map(lambda x: x[::m], batch))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)

  def body(carry, micro):
    new = jax.lax.cond(jnp.any(micro.input_mask), run, lambda _: zeros, micro)
    return jax.tree.map(jnp.add, carry, new), None

  (loss_sum, denominator, sums, grads), _ = jax.lax.scan(body, zeros, _split_micro(batch, m, mesh))
  if kv is not None:   # d(params) directly, plus through the prefix's keys / values, once.
    grads, kv_grads = grads
    kv_cot = jax.tree.map(lambda g, x: g.astype(x.dtype), kv_grads, kv)
    grads = jax.tree.map(jnp.add, grads, f32(prefix_vjp(kv_cot)[0]))
  return loss_sum, denominator, sums, grads


def train_step(state: TrainState, batch: Batch, *, model, optimizer, cfg: TrainConfig,
               schedule: Callable | None = None, mesh=None) -> tuple[TrainState, dict]:
  """The un-jitted step; `make_train_step` jits it."""
  if cfg.num_micro_batches == 1:
    grad_fn = jax.value_and_grad(
        functools.partial(micro_batch_loss, model=model, cfg=cfg, mesh=mesh), has_aux=True)
    (loss_sum, (denominator, sums)), grads = grad_fn(state.params, state.frozen, batch)
  else:
    loss_sum, denominator, sums, grads = _accumulate(state, batch, model=model, cfg=cfg,
                                                     mesh=mesh)

  inv = 1.0 / jnp.maximum(denominator, 1e-6)  # No student tokens: zero loss and gradient.
  grads = jax.tree.map(lambda g: g * inv, grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  n = jnp.maximum(sums["num_student_tokens"], 1.0)
  metrics = {
      "loss": loss_sum * inv,
      "grad_norm": optax.global_norm(grads),
      "num_student_tokens": sums["num_student_tokens"],
      "denominator": denominator,
      "mean_logprob": sums["logprob_sum"] / n,
  }
  if "clip_sum" in sums:
    metrics["clip_fraction"] = sums["clip_sum"] / n
    metrics["log_ratio_abs_mean"] = sums["log_ratio_abs_sum"] / n
  if "kl_sum" in sums:
    metrics["kl"] = sums["kl_sum"] / n
  if schedule is not None:
    metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


class TrainStep:
  """Callable `(state, batch) -> (state, metrics)`; compiles once per batch shape.

  With a mesh, the state must already be placed with `shard_train_state` (its buffers are
  donated either way); numpy batches are put on the mesh with `rules.batch_sharding`.
  """

  def __init__(self, model, optimizer: optax.GradientTransformation, cfg: TrainConfig, *,
               mesh=None, schedule: Callable | None = None):
    self.cfg, self.mesh = cfg, mesh
    self._fn = functools.partial(train_step, model=model, optimizer=optimizer, cfg=cfg,
                                 schedule=schedule, mesh=mesh)
    self._jitted = {}     # per batch structure (which optional fields are present)
    self.data_parallel = 1 if mesh is None else math.prod(mesh.shape[a] for a in mesh_lib.BATCH_AXES)

  def _jit(self, state: TrainState, batch: Batch):
    if self.mesh is None:
      return jax.jit(self._fn, donate_argnums=0)
    s_sh = state_shardings(state, self.mesh)
    b_sh = jax.tree.map(lambda v: rules.batch_sharding(self.mesh, v.ndim), batch)
    return jax.jit(self._fn, in_shardings=(s_sh, b_sh), out_shardings=(s_sh, None),
                   donate_argnums=0)

  def put_batch(self, batch: Batch) -> Batch:
    """Host batch -> device arrays (sharded over the batch axes with a mesh)."""
    if self.mesh is None:
      return jax.tree.map(jnp.asarray, batch)
    return jax.tree.map(lambda v: jax.device_put(v, rules.batch_sharding(self.mesh, v.ndim)),
                        batch)

  def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
    check_batch(batch, self.cfg, self.data_parallel)
    batch = self.put_batch(batch)
    return self._jitted_for(state, batch)(state, batch)

  def _jitted_for(self, state: TrainState, batch: Batch):
    key = jax.tree.structure(batch)
    if key not in self._jitted:
      self._jitted[key] = self._jit(state, batch)
    return self._jitted[key]

  def lower(self, state: TrainState, batch: Batch):
    """jax `Lowered` for cost / memory analysis (does not run the step)."""
    check_batch(batch, self.cfg, self.data_parallel)
    batch = self.put_batch(batch)
    return self._jitted_for(state, batch).lower(state, batch)


def make_train_step(model, optimizer: optax.GradientTransformation, cfg: TrainConfig | None = None,
                    *, mesh=None, schedule: Callable | None = None) -> TrainStep:
  return TrainStep(model, optimizer, cfg or TrainConfig(), mesh=mesh, schedule=schedule)
