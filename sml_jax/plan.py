r"""Memory plan: bytes per device of params, optimizer state, activations and KV caches.

    python -m sml_jax.plan --config=configs/sml_math_rl.py --config.model=gemma3_12b \
        --topology=v5p-64 [--config.mesh.fsdp=-1 --config.mesh.data=1] [--config.lora_rank=16]
    python -m sml_jax.plan --config=configs/tiny_test.py            # this machine's devices
    python -m sml_jax.plan --topology=list                          # the TPU types known

Shapes come from `jax.eval_shape` of the model init (no weights are loaded), the split over the
mesh from the one rules table; the formulas and their assumptions are in
`sml_jax/planning/memory.py`. The train step is planned for `config.train.micro_batch_size` rows
of `config.train.max_len` tokens; the sampler for the largest batch a stage samples at once
(RL: problems_per_step x group_size) with `config.sampler.cache_length` slots, student and
teacher each, placed per host as the runner does (`memory.rollout_mesh`), with the
`config.train.remat` policy. Each phase gets a verdict; when the plan does not fit, meshes that
would are listed.
"""

from __future__ import annotations

import math
import os
import sys

from sml_jax import quiet

quiet.install()  # Before anything imports TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", "cpu", "TPU type (v5p-64, v5e-16, v6e-8, v4-32, ...), "
                                "'cpu' for this machine's devices, or 'list'.")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 0, "Conversations sampled at once "
                                     "(0: the largest a configured stage uses).")
_PROMPT_CHUNK = flags.DEFINE_integer("prompt_chunk", 512, "Tokens prefilled at once.")
_SUGGEST = flags.DEFINE_integer("suggest", 5,
                                "When it does not fit, list this many meshes that do.")

GiB = 1 << 30
_SHAPES: dict = {}  # (student, lora, teacher) -> model_shapes, traced once per process


def fmt(n: float) -> str:
  return f"{n / GiB:8.2f} GiB" if n >= GiB / 10 else f"{n / (1 << 20):8.1f} MiB"


def sample_batch(config) -> int:
  """The largest number of conversations any configured stage samples at once."""
  from sml_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  sizes = []
  for st in config_lib.to_spec(config).stages:
    if st.kind == "rl":
      sizes.append(st.problems_per_step * st.group_size)
    elif st.kind in ("qprime_sft", "offline_sml"):
      sizes.append(st.problems_per_step * st.rollouts_per_problem)
    elif st.kind == "eval":
      sizes.append(st.batch_size * st.repeats)
  return max(sizes, default=1)


def device_budget(topology: str) -> tuple[int, int | None, str, int]:
  """-> (devices, bytes per device or None, description, hosts)."""
  if topology == "cpu":
    import jax  # pylint: disable=g-import-not-at-top
    n = jax.device_count()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return n, ram // n, f"cpu: {n} device(s) sharing {ram / GiB:.1f} GiB of RAM", 1
  from sml_jax.parallel import topology as topo  # pylint: disable=g-import-not-at-top
  t = topo.get_topology(topology)
  return t.chips, t.hbm_bytes, (f"{t.name}: {t.chips} chips x {t.hbm_bytes / GiB:.0f} GiB HBM, "
                                f"{t.hosts} host(s)"), t.hosts


def build(config, devices: int, hbm, mesh_sizes=None, sample=None, hosts: int = 1):
  """-> (Plan, student model, teacher model) for `config` on `devices` devices."""
  from sml_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from sml_jax.models import registry  # pylint: disable=g-import-not-at-top
  from sml_jax.planning import memory  # pylint: disable=g-import-not-at-top
  from sml_jax.parallel.mesh import resolve_axis_sizes  # pylint: disable=g-import-not-at-top
  sizes = mesh_sizes or resolve_axis_sizes((config.mesh.data, config.mesh.fsdp, config.mesh.tensor),
                                           devices)
  student = registry.build_model(config.model, lora_rank=config.lora_rank or None)
  teacher = registry.build_model(config.teacher.model or config.model)
  ts = memory.TrainShape(micro_batch_size=config.train.micro_batch_size,
                         max_len=config.train.max_len, compute_dtype=config.compute_dtype,
                         param_dtype=config.param_dtype, remat=config.train.remat)
  ss = memory.SampleShape(batch=sample or sample_batch(config),
                          cache_length=config.sampler.cache_length,
                          prompt_chunk=_PROMPT_CHUNK.value, dtype=config.compute_dtype,
                          logits_copies=memory.logits_copies(config.dialogue.temperature,
                                                             config.dialogue.top_p))
  key = (config.model, config.lora_rank, config.teacher.model or config.model)
  if key not in _SHAPES:
    _SHAPES[key] = (memory.model_shapes(student), memory.model_shapes(teacher))
  spec = config_lib.to_spec(config)
  kl = any(getattr(getattr(st, "train", None), "kl_beta", 0) > 0 for st in spec.stages)
  plan = memory.make_plan(student, teacher, memory.abstract_mesh(*sizes), ts, ss, hbm,
                          shapes=_SHAPES[key], hosts=hosts, kl=kl,
                          other_teacher=spec.teacher is not None)
  return plan, ts, ss


def candidate_meshes(devices: int) -> list[tuple[int, int, int]]:
  """(data, fsdp, tensor) factorisations of `devices`, tensor <= 8."""
  out = []
  for tensor in (1, 2, 4, 8):
    if devices % tensor:
      continue
    rest = devices // tensor
    for fsdp in range(1, rest + 1):
      if rest % fsdp == 0:
        out.append((rest // fsdp, fsdp, tensor))
  return out


def report(plan, ts, ss, config, header: str) -> str:
  rows = list(dict.fromkeys(list(plan.rollout) + list(plan.train)))
  lines = [header,
           "mesh " + " ".join(f"{k}={v}" for k, v in plan.mesh.items())
           + ("   rollouts per host on " + " ".join(f"{k}={v}" for k, v in plan.rollout_mesh.items())
              if plan.rollout_mesh and plan.rollout_mesh != plan.mesh else ""),
           f"train step: micro-batch {ts.micro_batch_size} x {ts.max_len} tokens, compute "
           f"{ts.compute_dtype}, params {ts.param_dtype}, LoRA rank {config.lora_rank or 'none'}, "
           f"remat {ts.remat}",
           f"sampler: {ss.batch} conversations x {ss.cache_length} cache slots, student + teacher "
           f"({config.teacher.model or config.model}), prompt chunk "
           f"{min(ss.prompt_chunk, ss.cache_length)}",
           "", f"{'bytes per device':38s} {'rollout':>12s} {'train':>12s}"]
  for r in rows:
    if not plan.rollout.get(r) and not plan.train.get(r):
      continue
    cells = [fmt(p[r]) if r in p else "" for p in (plan.rollout, plan.train)]
    lines.append(f"{r:38s} {cells[0]:>12s} {cells[1]:>12s}")
  lines.append(f"{'total':38s} {fmt(sum(plan.rollout.values())):>12s} "
               f"{fmt(sum(plan.train.values())):>12s}")
  if plan.hbm_bytes:
    for phase in ("rollout", "train"):
      total = sum(getattr(plan, phase).values())
      lines.append(f"{phase:8s} {'fits' if plan.phase_fits(phase) else 'DOES NOT FIT':13s} "
                   f"{fmt(total).strip()} per device = {100 * total / plan.hbm_bytes:.0f}% of HBM")
    verdict = "FITS" if plan.fits else "DOES NOT FIT"
    lines.append(f"\n{verdict}: peak {fmt(plan.peak).strip()} per device = "
                 f"{100 * plan.peak / plan.hbm_bytes:.0f}% of {fmt(plan.hbm_bytes).strip()} "
                 f"(a plan fits up to 90%)")
  lines += [f"warning: {w}" for w in plan.warnings]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _TOPOLOGY.value == "list":
    from sml_jax.parallel import topology as topo  # pylint: disable=g-import-not-at-top
    print(f"{'type':14s} {'gcloud type':16s} {'chips':>6s} {'hosts':>6s} {'HBM/chip':>9s}")
    for t in topo.table():
      print(f"{t.name:14s} {t.accelerator_type:16s} {t.chips:6d} {t.hosts:6d} "
            f"{t.hbm_bytes / GiB:7.0f}GB")
    return
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required (e.g. --config=configs/sml_math_rl.py).")
  from sml_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  if _TOPOLOGY.value != "cpu":
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_platforms", "cpu")  # Shapes only: no accelerator needed here.
  try:
    config_lib.to_spec(config)
    devices, hbm, desc, hosts = device_budget(_TOPOLOGY.value)
    plan, ts, ss = build(config, devices, hbm, sample=_SAMPLE_BATCH.value or None, hosts=hosts)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(report(plan, ts, ss, config, f"Memory plan for {config.model} on {desc}"))
  if plan.fits is False and _SUGGEST.value:
    fits = []
    for sizes in candidate_meshes(devices):
      p, _, _ = build(config, devices, hbm, mesh_sizes=sizes, sample=ss.batch, hosts=hosts)
      if p.fits:
        fits.append((p.peak, sizes))
    # Prefer more data parallelism (less communication) among those that fit.
    fits.sort(key=lambda f: (-f[1][0], f[0]))
    if fits:
      print("\nMeshes that fit (data, fsdp, tensor -> peak per device):")
      for peak, (d, f, t) in fits[:_SUGGEST.value]:
        print(f"  --config.mesh.data={d} --config.mesh.fsdp={f} --config.mesh.tensor={t}"
              f"   {fmt(peak).strip()}")
    else:
      print("\nNo (data, fsdp, tensor) mesh fits: try LoRA (--config.lora_rank=16), "
            "--config.train.remat=full, a smaller "
            "train.micro_batch_size / max_len / sampler batch, or a larger slice.")
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
