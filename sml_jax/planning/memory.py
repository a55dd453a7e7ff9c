"""Bytes per device of one SML run: params, AdamW state, train-step activations, KV caches.

Estimates from shapes only (`jax.eval_shape` of the model init, no weights), divided over the
mesh by the one rules table (`parallel/rules.py`): a leaf's bytes are split by the mesh axes its
PartitionSpec names. Batch-like arrays are split over the data-parallel axes (data x fsdp) and
their head / MLP / vocab dims over `tensor` (what GSPMD propagates from the weights' specs).
`plan.py` prints them; `tests/test_plan.py` checks them against XLA's `memory_analysis()`.

Assumptions (all per device; cb = bytes of the compute dtype, N = tokens of one micro-batch on
this device = ceil(micro_batch_size / dp) x max_len, dp = data x fsdp, tp = tensor):

  train state     trainable params in param_dtype (f32) + AdamW mu, nu (f32, like the params)
                  + frozen params (LoRA base) in bf16 (`train_state.create_train_state`)
  grads           f32, like the trainable params (accumulated over micro-batches)
  compute copy    the weights cast to the compute dtype inside the step (none if equal)
  fsdp gather     with fsdp > 1, one layer's weights gathered (compute dtype, / tp)
  activations     what autodiff saves for the backward pass (`train.remat` "none"), as XLA
                  keeps it (counted in the compiled Gemma 3 12B step on fsdp=32, where the
                  earlier 6 E / 4 F / 1 probabilities per layer fell ~2x short). Per layer and
                  token: 12 E-vectors (inputs and outputs of the four norms, the scaled and
                  residual sums, both output projections), 4 H D (q before and after
                  norm + RoPE, the attention mix in two layouts), 4 K D (k and v before and
                  after norm + RoPE), 7 F (gate, up, the tanh-GELU's intermediates, gelu(gate),
                  its product with up); per layer and row two H x T x T buffers (attention
                  logits and probabilities, compute dtype); outside the layers: the embeddings,
                  final-norm input and output (cb each) and the loss's d/dh (f32) per token.
                  With `remat` "full" each layer keeps only its input
                  (E per token) plus one layer's activations live while it is recomputed;
                  with "dots" each layer keeps its weight-matmul outputs (q, k, v: (H + 2K) D,
                  the attention and MLP output projections: 2 E, gate and up: 2 F) + its input.
  loss head       `logprobs.fused_token_loss`: one [C, V] f32 logits chunk (+ its gradient
                  in the compute dtype when that is not f32), C = tokens per chunk; with more
                  than one chunk, the embedding gradient's running sum and one chunk's
                  contribution (f32, sharded like the embedding) when the embedding trains.
  sampler         per party: params in the compute dtype (LoRA: merged inside the sampler's
                  jit), KV cache from `forward.init_cache` (k, v: B x C x K x D per layer,
                  plus positions and validity), and the larger of
                  decode: 2 (4 with top-p) [B, V] f32 buffers (see `logits_copies`) + the
                    q and kv projections in the decode layout (`forward.decode_layout`
                    transposes those two per call),
                  prefill of a P-token prompt chunk, one layer at a time: the attention
                    logits B x P x H x C (f32; XLA fuses the mask and softmax into it) plus
                    the MLP's 3 F and 4 E-vectors per token in f32.
  placement       (what `experiment.py` does) training on the training mesh; rollouts on the
                  rollout mesh: one host -> the training mesh; several hosts -> each host's own
                  chips (`mesh.sampling_mesh`: data = chips per host / t, tensor = t, where t
                  is the configured tensor if it divides the chips per host, else 1), so params
                  are replicated over a host's chips unless `tensor` splits them, and each host
                  samples its 1/hosts share of the conversations.
  phases          rollout = train state + student sampling copy + teacher params (both in the
                  compute dtype on the rollout mesh) + both caches + one party's temporaries;
                  train = train state + teacher params (they stay on the rollout mesh) + the
                  KL reference (compute dtype, training mesh; only with kl_beta > 0 when it is
                  not the teacher's arrays, i.e. on several hosts or with another teacher) +
                  step temporaries. Each phase gets a verdict; "fits" leaves 10% of HBM for
                  XLA / runtime.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh

from sml_jax.parallel import mesh as mesh_lib
from sml_jax.parallel import rules
from sml_jax.parallel.mesh import AXES, BATCH_AXES
from sml_jax.sampling import forward
from sml_jax.training import logprobs, train_state

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
HEADROOM = 0.9  # Fraction of HBM a plan may use and still "fit".


@dataclasses.dataclass(frozen=True)
class Dims:
  """The transformer sizes the formulas need (from the gemma config)."""
  layers: int
  embed: int
  hidden: int
  heads: int
  kv_heads: int
  head_dim: int
  vocab: int

  @classmethod
  def from_model(cls, model) -> "Dims":
    c = getattr(model, "model", model).config  # gm.nn.LoRA wraps the transformer.
    return cls(layers=c.num_layers, embed=c.embed_dim, hidden=c.hidden_dim, heads=c.num_heads,
               kv_heads=c.num_kv_heads, head_dim=c.head_dim, vocab=c.num_embed)


def abstract_mesh(data: int, fsdp: int, tensor: int) -> AbstractMesh:
  return AbstractMesh((data, fsdp, tensor), AXES)


def _size(mesh, axes) -> int:
  return math.prod(mesh.shape[a] for a in axes)


def _split(n: int, parts: int) -> float:
  """Per-device share of a dim of n split `parts` ways (replicated if it does not divide,
  like the rules table)."""
  return n / parts if n % parts == 0 else n


def tree_bytes(tree, mesh, table=rules.PARAM_RULES, dtype=None) -> int:
  """Per-device bytes of a tree of arrays / ShapeDtypeStructs sharded by `table` on `mesh`
  (each leaf counted in `dtype` if given)."""
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = rules._path_str(path)  # pylint: disable=protected-access
    spec = rules.spec_for(name, tuple(leaf.shape), mesh, table)
    shards = math.prod(_size(mesh, a if isinstance(a, tuple) else (a,)) for a in spec if a)
    itemsize = np.dtype(dtype or leaf.dtype).itemsize
    total += math.ceil(math.prod(leaf.shape) * itemsize / shards)
  return total


def model_shapes(model) -> dict[str, Any]:
  """ShapeDtypeStruct params of `model` (a `gm.nn` module, LoRA or not); nothing allocated.
  The 4B/12B/27B classes are built text-only (`registry.build_model`), like the checkpoints."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
                        ["params"])


def split_trainable(model, shapes) -> tuple[dict, dict]:
  """-> (trainable, frozen) like `train_state.create_train_state`: LoRA trains its factors."""
  if train_state.is_lora(model):
    base, lora = train_state.split_params(shapes)
    return lora, base
  return shapes, {}


@dataclasses.dataclass(frozen=True)
class TrainShape:
  micro_batch_size: int     # global rows per micro-batch
  max_len: int              # tokens per row
  compute_dtype: str = "bfloat16"
  param_dtype: str = "float32"
  frozen_dtype: str = "bfloat16"
  logits_chunk_size: int = logprobs.DEFAULT_CHUNK_SIZE  # as the train step's default
  remat: str = "none"       # train.remat: none | full | dots


def _cb(name: str) -> int:
  return np.dtype(DTYPES[name]).itemsize


def train_state_bytes(trainable, frozen, mesh, ts: TrainShape) -> dict[str, int]:
  p = tree_bytes(trainable, mesh, dtype=DTYPES[ts.param_dtype])
  return {
      "params (trainable)": p,
      "params (frozen)": tree_bytes(frozen, mesh, dtype=DTYPES[ts.frozen_dtype]) if frozen else 0,
      "optimizer (AdamW mu, nu)": 2 * tree_bytes(trainable, mesh, dtype=jnp.float32),
  }


def _layer_param_count(shapes) -> int:
  layers = [v for k, v in shapes.items() if k.startswith("layer_")]
  return max((sum(math.prod(x.shape) for x in jax.tree.leaves(l)) for l in layers), default=0)


def activation_bytes(d: Dims, mesh, ts: TrainShape) -> int:
  """Saved-for-backward bytes of one micro-batch (see the module docstring)."""
  dp, tp = _size(mesh, BATCH_AXES), mesh.shape["tensor"]
  rows = math.ceil(ts.micro_batch_size / dp)
  t, n, cb = ts.max_len, math.ceil(ts.micro_batch_size / dp) * ts.max_len, _cb(ts.compute_dtype)
  heads, kv = _split(d.heads, tp), _split(d.kv_heads, tp)
  hidden = _split(d.hidden, tp)
  per_token = (12 * d.embed + 4 * (heads + kv) * d.head_dim + 7 * hidden) * cb
  per_row = 2 * heads * t * t * cb  # attention logits + probabilities
  outside = n * d.embed * (3 * cb + 4)
  one_layer = n * per_token + rows * per_row
  if ts.remat == "full":
    return int(d.layers * n * d.embed * cb + one_layer + outside)
  if ts.remat == "dots":
    saved = ((heads + 2 * kv) * d.head_dim + 3 * d.embed + 2 * hidden) * cb
    return int(d.layers * n * saved + one_layer + outside)
  return int(d.layers * one_layer + outside)


def loss_head_bytes(d: Dims, mesh, ts: TrainShape, embedding_trains: bool) -> int:
  dp, tp = _size(mesh, BATCH_AXES), mesh.shape["tensor"]
  n = ts.micro_batch_size * ts.max_len
  k = logprobs.num_chunks(n, ts.logits_chunk_size)
  chunk = math.ceil(n / k) / dp
  cb = _cb(ts.compute_dtype)
  per_logit = 4 + (cb if cb != 4 else 0)
  out = chunk * _split(d.vocab, tp) * per_logit
  if k > 1 and embedding_trains:
    emb = {"embedder": {"input_embedding": jax.ShapeDtypeStruct((d.vocab, d.embed), jnp.float32)}}
    out += 2 * tree_bytes(emb, mesh)
  return int(out)


def train_step_bytes(model, shapes, mesh, ts: TrainShape) -> dict[str, int]:
  """Temporaries of one train step (on top of the train state)."""
  trainable, frozen = split_trainable(model, shapes)
  d = Dims.from_model(model)
  out = {"gradients (f32)": tree_bytes(trainable, mesh, dtype=jnp.float32)}
  copy = 0
  if ts.compute_dtype != ts.param_dtype:
    copy += tree_bytes(trainable, mesh, dtype=DTYPES[ts.compute_dtype])
  if frozen and ts.compute_dtype != ts.frozen_dtype:
    copy += tree_bytes(frozen, mesh, dtype=DTYPES[ts.compute_dtype])
  out["weights in compute dtype"] = copy
  if mesh.shape["fsdp"] > 1:
    base = frozen or trainable
    out["fsdp: one layer gathered"] = int(_layer_param_count(base) * _cb(ts.compute_dtype)
                                          / mesh.shape["tensor"])
  out["activations (saved for backward)"] = activation_bytes(d, mesh, ts)
  embedding_trains = "embedder" in trainable
  out["loss head (logits chunk)"] = loss_head_bytes(d, mesh, ts, embedding_trains)
  return out


@dataclasses.dataclass(frozen=True)
class SampleShape:
  batch: int                # conversations sampled together (global)
  cache_length: int         # KV cache slots per conversation
  prompt_chunk: int = 512   # tokens prefilled at once
  dtype: str = "bfloat16"
  logits_copies: int = 2    # [B, V] f32 temporaries per decode step: see `logits_copies`


def logits_copies(temperature: float, top_p: float | None) -> int:
  """[B, V] f32 buffers a decode step keeps live (measured with XLA CPU on
  `decode.choose_tokens`): 2 (logits, log-probs) greedy or sampled (inverse-CDF sampling needs
  no [B, V] noise), 4 with top-p (+ the sort and its cumulative sum)."""
  del temperature  # Greedy and sampled decoding keep the same buffers.
  return 4 if top_p is not None and top_p < 1 else 2


def cache_shapes(model, ss: SampleShape, mesh=None):
  """The sampler's cache pytree at full capacity as ShapeDtypeStructs (`forward.init_cache`,
  rows laid out for `mesh` as the sampler lays them out)."""
  arch = forward.Arch.from_model(model)
  return jax.eval_shape(lambda: forward.init_cache(arch, ss.batch, ss.cache_length,
                                                   DTYPES[ss.dtype],
                                                   rules.cache_groups(mesh, ss.batch)))


def kv_cache_bytes(model, mesh, ss: SampleShape) -> int:
  kv_heads = forward.Arch.from_model(model).num_kv_heads
  return tree_bytes(cache_shapes(model, ss, mesh), mesh, rules.cache_rules(mesh, kv_heads))


def _qkv_bytes(params, mesh, dtype) -> int:
  """The q and kv projection weights (what `forward.decode_layout` transposes)."""
  qkv = {k: v for k, v in params.items() if k.startswith("layer_")}
  qkv = {k: {"attn": {n: v["attn"][n] for n in ("q_einsum", "kv_einsum") if n in v["attn"]}}
         for k, v in qkv.items()}
  return tree_bytes(qkv, mesh, dtype=dtype)


def sampler_temp_bytes(d: Dims, mesh, ss: SampleShape, qkv_bytes: int) -> dict[str, int]:
  """The sampler's jit temporaries: decode loop and prefill (see the module docstring)."""
  dp, tp = _size(mesh, BATCH_AXES), mesh.shape["tensor"]
  rows = math.ceil(ss.batch / dp)
  heads, hidden = _split(d.heads, tp), _split(d.hidden, tp)
  decode = ss.logits_copies * rows * _split(d.vocab, tp) * 4 + qkv_bytes
  tokens = rows * min(ss.prompt_chunk, ss.cache_length)
  prefill = tokens * (heads * ss.cache_length + 3 * hidden + 4 * d.embed) * 4
  return {"decode (logits, q/kv layout)": int(decode), "prefill (one layer)": int(prefill)}


def party_bytes(model, shapes, mesh, ss: SampleShape) -> dict[str, int]:
  """One party (student or teacher) of the sampler: params, cache, temporaries."""
  base = train_state.split_params(shapes)[0] if train_state.is_lora(model) else shapes
  cache = kv_cache_bytes(model, mesh, ss)
  temps = sampler_temp_bytes(Dims.from_model(model), mesh, ss,
                             _qkv_bytes(base, mesh, DTYPES[ss.dtype]))
  return {"params (compute dtype)": tree_bytes(base, mesh, dtype=DTYPES[ss.dtype]),
          "KV cache": cache, **temps}


@dataclasses.dataclass
class Plan:
  """Per-device bytes by phase (rollout on the rollout mesh, train on the training mesh)."""
  mesh: dict[str, int]
  rollout: dict[str, int]
  train: dict[str, int]
  hbm_bytes: int | None
  warnings: list[str] = dataclasses.field(default_factory=list)
  rollout_mesh: dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def peak(self) -> int:
    return max(sum(self.rollout.values()), sum(self.train.values()))

  @property
  def fits(self) -> bool | None:
    return None if self.hbm_bytes is None else self.peak <= HEADROOM * self.hbm_bytes

  def phase_fits(self, phase: str) -> bool | None:
    """The verdict of one phase ("rollout" or "train")."""
    if self.hbm_bytes is None:
      return None
    return sum(getattr(self, phase).values()) <= HEADROOM * self.hbm_bytes


def rollout_mesh(mesh, hosts: int = 1):
  """The mesh rollouts run on per device (`parallel.mesh.sampling_mesh`): the training mesh on
  one host, else one host's chips with batch over `data` and params over `tensor` (if it divides
  the chips per host)."""
  if hosts <= 1:
    return mesh
  chips = math.prod(mesh.shape.values())
  if chips % hosts:
    raise ValueError(f"{chips} chips do not split over {hosts} hosts.")
  local = chips // hosts
  tensor = mesh_lib.sampling_tensor(mesh.shape["tensor"], local)
  return abstract_mesh(local // tensor, 1, tensor)


def make_plan(student, teacher, mesh, ts: TrainShape, ss: SampleShape,
              hbm_bytes: int | None = None, shapes: tuple | None = None, *, hosts: int = 1,
              other_teacher: bool = False, kl: bool = False) -> Plan:
  """student / teacher: gm modules (the student maybe LoRA-wrapped); shapes: their
  `model_shapes` if already known (they cost a trace of the init). hosts: processes the chips
  are split over (rollouts run per host, see `rollout_mesh`); `ss.batch` is the global number
  of conversations. other_teacher: the teacher is another checkpoint (not the initial student);
  kl: some stage has kl_beta > 0."""
  s_shapes, t_shapes = shapes or (model_shapes(student), model_shapes(teacher))
  trainable, frozen = split_trainable(student, s_shapes)
  state = train_state_bytes(trainable, frozen, mesh, ts)
  r_mesh = rollout_mesh(mesh, hosts)
  local = dataclasses.replace(ss, batch=math.ceil(ss.batch / max(1, hosts)))
  student_party = party_bytes(student, s_shapes, r_mesh, local)
  teacher_party = party_bytes(teacher, t_shapes, r_mesh, local)
  rollout = dict(state)
  rollout["student params (sampling copy)"] = student_party["params (compute dtype)"]
  rollout["teacher params"] = teacher_party["params (compute dtype)"]
  rollout["student KV cache"] = student_party["KV cache"]
  rollout["teacher KV cache"] = teacher_party["KV cache"]
  temps = [v for party in (student_party, teacher_party) for k, v in party.items()
           if k.startswith(("decode", "prefill"))]
  rollout["sampler temporaries"] = max(temps)
  train = dict(state)
  train["teacher params"] = teacher_party["params (compute dtype)"]
  if kl and (hosts > 1 or other_teacher):
    base = frozen or trainable
    train["KL reference params"] = tree_bytes(base, mesh, dtype=DTYPES[ts.compute_dtype])
  train.update(train_step_bytes(student, s_shapes, mesh, ts))
  return Plan(mesh=dict(mesh.shape), rollout=rollout, train=train, hbm_bytes=hbm_bytes,
              warnings=warnings(mesh, ts, local if hosts > 1 else ss, r_mesh),
              rollout_mesh=dict(r_mesh.shape))


def warnings(mesh, ts: TrainShape, ss: SampleShape, r_mesh=None) -> list[str]:
  """Shape constraints of the real step / sampler that the formulas would paper over."""
  dp = _size(mesh, BATCH_AXES)
  r_dp = _size(r_mesh if r_mesh is not None else mesh, BATCH_AXES)
  out = []
  if ts.micro_batch_size % dp:
    out.append(f"train.micro_batch_size={ts.micro_batch_size} is not a multiple of the "
               f"data-parallel devices (data x fsdp = {dp}): the train step rejects such batches.")
  if ss.batch % r_dp:
    out.append(f"the sampler pads its {ss.batch} conversations (per host) to a multiple of "
               f"{r_dp} rows.")
  return out
