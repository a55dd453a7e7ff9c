"""Runs a `RunSpec`: stages in order, resumable. Behind `python -m sml_jax.main`.

    run(spec, workdir, config_json=...)

  workdir/config.json          the resolved config
  workdir/checkpoints/         orbax checkpoints (train state + stage index/step): resume point
  workdir/metrics.jsonl        one line per training iteration (+ TensorBoard events)
  workdir/eval/<stage>_<task>.json (+ .transcripts.jsonl)   each eval
  workdir/rollouts/<stage>/step_<n>.jsonl   training conversations (transcripts)
  workdir/report.md, *.png, transcripts.html

The workdir may be local or gs://bucket/dir (`sml_jax.paths`); on several hosts it must be
shared (a bucket): every host writes its checkpoint shards there and reads where to resume.

Every stage uses the same samplers and the same train state; training stages share the
compiled train steps (`trainer.py`).
"""

from __future__ import annotations

import json
import time

from flax import traverse_util

from sml_jax import evaluation
from sml_jax import paths
from sml_jax.evaluation import report
from sml_jax.experiment import Experiment
from sml_jax.parallel import distributed
from sml_jax.spec import RunSpec
from sml_jax.stages import base
from sml_jax.stages import kinds
from sml_jax.stages.trainer import Trainer
from sml_jax.training.checkpointing import Checkpointer
from sml_jax.training.metrics import MetricsWriter


class _NoMetrics:
  """Hosts other than process 0 log nothing (process 0 writes the shared metrics file)."""

  def write(self, step, metrics):
    return metrics

  def start_progress(self):
    pass

  def close(self):
    pass


def run_stages(exp: Experiment, workdir: str) -> bool:
  """Runs (or resumes) every stage. False when a preemption checkpoint stopped the run."""
  spec = exp.spec
  stages = [kinds.make_stage(s) for s in spec.stages]
  trainer = Trainer(exp)
  state = trainer.initial_state()
  ckpt = Checkpointer(workdir, every=spec.train.checkpoint_every, keep=spec.train.keep_checkpoints)
  pos = {"stage_index": 0, "stage_step": 0, "iteration": 0}
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, pos = restored
    print(f"[resume] from iteration {pos['iteration']} (stage "
          f"{spec.stages[min(pos['stage_index'], len(stages) - 1)].name}, step {pos['stage_step']})",
          flush=True)
  writer = (MetricsWriter(workdir, total_steps=spec.training_steps,
                          resume_step=pos["iteration"] if restored else None)
            if distributed.is_primary() else _NoMetrics())
  ctx = base.Context(exp=exp, trainer=trainer, workdir=workdir, checkpointer=ckpt,
                     metrics=writer, iteration=pos["iteration"])
  ckpt.install_sigterm_handler()
  try:
    for si, stage in enumerate(stages):
      if si < pos["stage_index"]:
        continue
      ctx.stage_index = si
      state = stage.run(ctx, state, pos["stage_step"] if si == pos["stage_index"] else 0)
      if state is None:
        return False
  finally:
    writer.close()
    ckpt.uninstall_sigterm_handler()
    ckpt.close()
  return True


def save_config(workdir: str, config_json: str) -> list[str]:
  """Writes workdir/config.json -> the keys in which it differs from the one already there.

  A rerun resumes from the last checkpoint whatever its flags say: when they differ from the
  saved config (e.g. `make demo` rerun on an old workdir after the demo changed), the run says so
  and keeps the earlier file as config.<k>.json, so no record of what trained earlier is lost."""
  path = paths.join(workdir, "config.json")
  old = paths.read_text_or_none(path)
  changed = []
  if old is not None and old != config_json:
    try:
      trees = [json.loads(t) for t in (old, config_json)]
    except ValueError:
      trees = []
    if trees and all(isinstance(t, dict) for t in trees):
      before, after = (traverse_util.flatten_dict(t, sep=".") for t in trees)
    else:   # not JSON objects (a hand-edited file): report the file as changed
      before, after = {"config.json": old}, {"config.json": config_json}
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    k = 1
    while paths.exists(paths.join(workdir, f"config.{k}.json")):
      k += 1
    paths.write_text_atomic(paths.join(workdir, f"config.{k}.json"), old)
    shown = ", ".join(f"{key} ({before.get(key)!r} -> {after.get(key)!r})" for key in changed[:8])
    print(f"[config] {workdir} was started with another config; it resumes from its last "
          f"checkpoint with this one. Changed: {shown}{' ...' if len(changed) > 8 else ''}. "
          f"The earlier config is kept as config.{k}.json.", flush=True)
  paths.write_text_atomic(path, config_json)
  return changed


def run(spec: RunSpec, workdir: str, config_json: str | None = None) -> None:
  workdir = paths.resolve(workdir)
  paths.makedirs(workdir)
  if distributed.is_primary() and config_json is not None:
    save_config(workdir, config_json)
  t_start = time.time()
  finished = run_stages(Experiment(spec), workdir)
  if not finished or not distributed.is_primary():
    return
  table = evaluation.write_report(workdir)
  print("\n" + table)
  example = report.example_pair_text(workdir)
  if example:
    print("\n" + example)
  print(f"\nReport: {paths.join(workdir, 'report.md')}  |  transcripts: "
        f"{paths.join(workdir, 'transcripts.html')}  |  total {time.time() - t_start:.0f} s",
        flush=True)
