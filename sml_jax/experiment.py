"""The roles of a run and where they live: student, teacher, reference policy; tasks.

    exp = Experiment(spec)
    exp.student.model, exp.student.sampler     # trained; sampled on the rollout mesh
    exp.teacher.params                         # frozen (the initial student, or another model)
    exp.reference_params()                     # the frozen initial policy, for the KL term
    exp.episodes(max_turns=10, teacher="llm")  # an EpisodeRunner for both parties
    exp.tasks.task("gsm8k")                    # a task by name, built with the run's arguments

Meshes: training spans every host (`mesh`); rollouts run on `sample_mesh`, the same mesh on one
process and each host's own devices on several (`parallel.mesh.sampling_mesh`).
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
from sml_jax.parallel import rules
from sml_jax.sampling import Sampler
from sml_jax.tasks import registry as task_registry

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
    # The initial student's (base) weights in the master dtype: the train state starts from them.
    self.base_params = models.load_params(name, base_ckpt, dtype=DTYPES[spec.param_dtype],
                                          seed=base_seed)
    student_model = models.build_model(name, lora_rank=lora_rank or None)
    self.student = Role(student_model, self._sampler(student_model))
    base_model = models.build_model(name)
    if spec.teacher is not None:   # Another model or checkpoint.
      t_model = models.build_model(spec.teacher.name)
      t_params = models.load_params(spec.teacher.name, spec.teacher.checkpoint,
                                    dtype=self.compute_dtype)
      self.teacher = Role(t_model, self._sampler(t_model))
    else:                          # A frozen copy of the initial student.
      t_params = models.cast(self.base_params, self.compute_dtype)
      self.teacher = Role(base_model)
    self.teacher.params = rules.shard_params(t_params, self.sample_mesh)
    # The frozen initial policy for the optional KL term: the teacher's copy when it is one.
    same_copy = spec.teacher is None and self.sample_mesh is self.mesh
    self.reference = Role(base_model, params=self.teacher.params if same_copy else None)
    self.tasks = TaskBook(spec.task_kwargs)

  @property
  def model(self):
    """The trained model (with LoRA adapters when `lora_rank` > 0)."""
    return self.student.model

  def _sampler(self, model) -> Sampler:
    return Sampler(model, cache_length=self.spec.cache_length, mesh=self.sample_mesh,
                   dtype=self.compute_dtype,
                   cache_dtype=DTYPES[self.spec.cache_dtype] if self.spec.cache_dtype else None)

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
      self.reference.params = rules.shard_params(
          models.cast(self.base_params, self.compute_dtype), self.mesh)
    return self.reference.params

  def sampling_params(self, state):
    """The student's current params in the compute dtype, on the rollout mesh (fresh every
    iteration: rollouts are on-policy)."""
    params = models.cast(state.full_params(), self.compute_dtype)
    return distributed.to_local_mesh(params, self.sample_mesh)
