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

import time

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


def run(spec: RunSpec, workdir: str, config_json: str | None = None) -> None:
  workdir = paths.resolve(workdir)
  paths.makedirs(workdir)
  if distributed.is_primary() and config_json is not None:
    paths.write_text_atomic(paths.join(workdir, "config.json"), config_json)
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
