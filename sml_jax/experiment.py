"""The roles of a run and where they live: student, teacher, reference policy; tasks.

    exp = Experiment(spec)
    exp.student.model, exp.student.sampler     # trained; sampled on the rollout mesh
    exp.teacher.params                         # frozen (the initial student, or another model)
    exp.reference_params()                     # the frozen initial policy, for the KL term
    exp.episodes(max_turns=10, teacher="llm")  # an EpisodeRunner for both parties
    exp.tasks.task("gsm8k")                    # a task by name, built with the run's arguments

Meshes: training spans every host (`mesh`); rollouts run on `sample_mesh`, the same mesh on one
process and each host's own devices on several (`parallel.mesh.sampling_mesh`).

Weights, per device (no full host or replicated copy is ever made): the initial student is
restored straight into the training mesh's rules-table shardings in `param_dtype`
(`initial_params`), the train state is built from it inside one jit (`Trainer.initial_state`)
and it is then dropped (`release_initial_params`; reloaded if asked for again). The teacher
(when it is the frozen initial student) and the KL reference are cast from those sharded params
on the mesh they serve: the teacher on the rollout mesh, the reference on the training mesh (the
same arrays on one process). Each RL step the student's weights reach the rollout mesh on
device (`distributed.to_local_mesh`); with LoRA only the factors travel, the frozen base on the
rollout mesh is shared with the teacher when it is the same weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from sml_jax import models
from sml_jax import spec as spec_lib
from sml_jax.models import adapters
from sml_jax.dialogue.episode import EpisodeRunner
from sml_jax.parallel import distributed
from sml_jax.parallel import mesh as mesh_lib
from sml_jax.sampling import Sampler
from sml_jax.tasks import registry as task_registry
from sml_jax.training import train_state

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TaskBook:
  """Task instances by name, built once with the run's constructor arguments for that task
  (`RunSpec.task_kwargs`) merged with an entry's own (e.g. an eval entry's `test_path=`)."""

  def __init__(self, task_kwargs: Mapping[str, Mapping[str, Any]]):
    self._kwargs, self._tasks = task_kwargs, {}

  def task(self, name: str, kwargs: Mapping[str, Any] | None = None):
    """The task `name` built with the run's arguments for it, `kwargs` overriding them."""
    kw = {**self._kwargs.get(name, {}), **(kwargs or {})}
    key = (name, tuple(sorted((k, repr(v)) for k, v in kw.items())))
    if key not in self._tasks:
      self._tasks[key] = task_registry.get_task(name, **kw)
    return self._tasks[key]


@dataclasses.dataclass
class Role:
  """One party: its model, its sampler (None: shares the student's compiled sampler) and, for
  frozen parties, its params in the compute dtype on the rollout mesh."""
  model: Any
  sampler: Sampler | None = None
  params: Any = None


class Experiment:
  """Everything a stage needs, built once from the `RunSpec`."""

  def __init__(self, spec: spec_lib.RunSpec):
    self.spec = spec
    self.mesh = mesh_lib.mesh_from_config(spec.mesh)    # training: spans every host
    self.sample_mesh = (self.mesh if jax.process_count() == 1
                        else mesh_lib.sampling_mesh(spec.mesh))
    self.compute_dtype = DTYPES[spec.compute_dtype]
    name = spec.student.name
    self.tokenizer = models.load_tokenizer(name, spec.tokenizer_path)
    # A student given as an exported LoRA adapter (`models.adapters`): its base weights, rank
    # and factors; the train state starts from those factors instead of fresh ones.
    base_ckpt, base_seed, lora_rank, self.initial_lora = spec.student.checkpoint, spec.seed, \
        spec.lora_rank, None
    if adapters.is_adapter_dir(base_ckpt):
      meta, self.initial_lora = adapters.load_adapter(base_ckpt)
      base_ckpt, base_seed, lora_rank = meta.base_checkpoint, meta.base_seed, meta.lora_rank
    # The initial student's (base) weights: loaded sharded on first use (`initial_params`).
    self._base_checkpoint, self._base_seed, self._initial = base_ckpt, base_seed, None
    student_model = models.build_model(name, lora_rank=lora_rank or None)
    self.student = Role(student_model, self._sampler(student_model))
    base_model = models.build_model(name)
    if spec.teacher is not None:   # Another model or checkpoint.
      t_model = models.build_model(spec.teacher.name)
      t_params = models.load_params(spec.teacher.name, spec.teacher.checkpoint,
                                    dtype=self.compute_dtype, sharding=self.sample_mesh)
      self.teacher = Role(t_model, self._sampler(t_model), params=t_params)
    else:                          # A frozen copy of the initial student.
      self.teacher = Role(base_model, params=self._on_sample_mesh(self.initial_params()))
    # The frozen initial policy for the optional KL term: the teacher's arrays when they are it.
    same_copy = spec.teacher is None and self.sample_mesh is self.mesh
    self.reference = Role(base_model, params=self.teacher.params if same_copy else None)
    # With LoRA on several hosts, the student samples with this base plus its moved factors.
    self._rollout_base = None
    self.tasks = TaskBook(spec.task_kwargs)

  @property
  def model(self):
    """The trained model (with LoRA adapters when `lora_rank` > 0)."""
    return self.student.model

  def initial_params(self):
    """The initial student's (base) params in `param_dtype`, sharded over the training mesh by the
    rules table (restored shard by shard; loaded on first use, again after a release). For a
    student given as an adapter: the adapter's base (its factors are `initial_lora`)."""
    if self._initial is None:
      self._initial = models.load_params(
          self.spec.student.name, self._base_checkpoint, sharding=self.mesh,
          dtype=DTYPES[self.spec.param_dtype], seed=self._base_seed)
    return self._initial

  def release_initial_params(self) -> None:
    """Drops the initial params once the train state (and the roles) are built from them."""
    self._initial = None

  def _on_sample_mesh(self, params):
    """Params on the training mesh -> the compute dtype on the rollout mesh (on device)."""
    return distributed.to_local_mesh(params, self.sample_mesh, self.compute_dtype)

  def _sampler(self, model) -> Sampler:
    return Sampler(model, cache_length=self.spec.cache_length, mesh=self.sample_mesh,
                   dtype=self.compute_dtype,
                   cache_dtype=DTYPES[self.spec.cache_dtype] if self.spec.cache_dtype else None,
                   live_rows_min_batch=self.spec.live_rows_min_batch)

  def episodes(self, task_lookup=None, **overrides) -> EpisodeRunner:
    """A dialogue runner with the run's dialogue settings, `overrides` replacing some.
    `task_lookup`: task name -> the Task that verifies its problems (default: the run's)."""
    cfg = dataclasses.replace(self.spec.dialogue, **overrides)
    return EpisodeRunner(self.student.sampler, self.tokenizer, task_lookup or self.tasks.task,
                         cfg, teacher_sampler=self.teacher.sampler)

  def reference_params(self):
    """The initial student's params in the compute dtype on the training mesh (built on first
    use when the teacher is not that copy)."""
    if self.reference.params is None:
      self.reference.params = distributed.place(self.initial_params(), self.mesh,
                                                self.compute_dtype)
    return self.reference.params

  def sampling_params(self, state):
    """The student's current params in the compute dtype, on the rollout mesh (fresh every
    iteration: rollouts are on-policy). One process: cast in place. Several: moved on device;
    with LoRA only the factors move and join the frozen base already on the rollout mesh."""
    if self.sample_mesh is self.mesh or not state.frozen:
      return self._on_sample_mesh(state.full_params())
    factors = self._on_sample_mesh(state.params)
    return train_state.merge_params(factors, self._base_on_sample_mesh(state))

  def _base_on_sample_mesh(self, state):
    """The LoRA student's frozen base on the rollout mesh: the teacher's arrays when the teacher
    is the initial student, else moved once from the train state."""
    if self._rollout_base is None:
      if self.spec.teacher is None:
        self._rollout_base = self.teacher.params
      else:
        self._rollout_base = self._on_sample_mesh(state.frozen)
    return self._rollout_base
