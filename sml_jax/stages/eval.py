"""`eval_<name>`: dialogues on held-out problems of every eval task -> workdir/eval/<name>.json.

eval_before / eval_after on task T write `before_T` / `after_T` (the report pairs them). Batches
of `batch_size` problems run in order; each finished batch is appended to
`eval/<name>.partial.jsonl`, so an interrupted eval resumes where it stopped. On several hosts
each runs its block of every batch (`distributed.host_range`) and process 0 writes the gathered
transcripts (the workdir is shared, as for checkpoints).
"""

from __future__ import annotations

import json
import os
import time

from tqdm.auto import tqdm

from sml_jax import evaluation
from sml_jax import rng
from sml_jax.parallel import distributed
from sml_jax.spec import EvalSpec, TaskEntry
from sml_jax.stages.base import Context, transcript


def read_partial(path: str) -> dict[int, list[dict]]:
  """{first problem index of a batch: its transcripts} of an interrupted eval ({} if none).
  A line cut short by the interruption is dropped (that batch runs again)."""
  if not os.path.exists(path):
    return {}
  done = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      done[int(record["start"])] = record["transcripts"]
  return done


class EvalStage:

  def __init__(self, spec: EvalSpec):
    self.spec = spec

  def run(self, ctx: Context, state, first_step: int = 0):
    del first_step
    params = ctx.exp.sampling_params(state)
    for entry in self.spec.tasks:
      self.evaluate(ctx, entry, params)
    return state

  def evaluate(self, ctx: Context, entry: TaskEntry, params) -> dict | None:
    """One task -> its metrics (None on hosts other than process 0, or when already done)."""
    exp, ev = ctx.exp, self.spec
    stage = ev.name
    name = f"{stage.removeprefix('eval_')}_{entry.name}"
    eval_dir = os.path.join(ctx.workdir, "eval")
    if os.path.exists(os.path.join(eval_dir, f"{name}.json")):
      print(f"[{stage}] {entry.name}: already evaluated (resume), skipping", flush=True)
      return None
    task = exp.tasks.task(entry.name, entry.kwargs)
    problems = task.problems(ev.split, limit=ev.num_problems or None, seed=exp.spec.seed)
    # This entry's problems are verified by the task built with this entry's arguments.
    lookup = lambda name: task if name == entry.name else exp.tasks.task(name)
    runner = exp.episodes(task_lookup=lookup, max_turns=ev.max_turns, teacher=ev.teacher,
                          temperature=ev.temperature, qprime_q=0.0)
    primary = distributed.is_primary()
    t0 = time.time()
    starts = range(0, len(problems), ev.batch_size)
    partial = os.path.join(eval_dir, f"{name}.partial.jsonl")
    done = read_partial(partial)
    if done:
      print(f"[resume] {stage} {entry.name}: {len(done)} finished batches kept", flush=True)
    bar = tqdm(total=len(starts) * ev.max_turns, desc=f"{stage} {entry.name}", unit="turn",
               dynamic_ncols=True, initial=sum(i in done for i in starts) * ev.max_turns)
    for b, i in enumerate(starts):
      if i in done:
        continue
      batch = problems[i:i + ev.batch_size]
      lo, hi = distributed.host_range(len(batch))
      convs = runner.run(batch[lo:hi], params, exp.teacher.params,
                         seed=rng.stream(exp.spec.seed, "eval_batch", first_problem=i),
                         repeats=ev.repeats, on_turn=lambda: bar.update(),
                         first_row=lo * ev.repeats) if hi > lo else []
      done[i] = distributed.gather_json([transcript(c) for c in convs])
      if primary:
        os.makedirs(eval_dir, exist_ok=True)
        with open(partial, "a", encoding="utf-8") as f:
          f.write(json.dumps({"start": i, "transcripts": done[i]}, ensure_ascii=False) + "\n")
      bar.update((b + 1) * ev.max_turns - bar.n)
    bar.close()
    transcripts = [t for i in starts for t in done[i]]
    if not primary:
      distributed.sync(f"eval {name}")   # Process 0 writes the results.
      return None
    metrics = evaluation.write_eval(
        ctx.workdir, name, transcripts, max_len=exp.spec.train.max_len,
        extra={"model": exp.spec.student.name, "checkpoint": exp.spec.student.checkpoint,
               "task": entry.name, "teacher_kind": ev.teacher, "seconds": round(time.time() - t0, 1),
               # Where this run's time went (batches kept from an interrupted run excluded).
               **{f"time_{k}_s": round(v, 1) for k, v in runner.seconds.items()}})
    if os.path.exists(partial):
      os.remove(partial)
    sat = metrics["success_at_turn"]
    print(f"[{stage}] {entry.name}: {len(transcripts)} conversations, success@1 {sat[0]:.3f}, "
          f"success@{len(sat)} {sat[-1]:.3f}, questions {metrics['question_rate'] or 0:.3f}, "
          f"leaks {metrics['teacher_leak_rate'] or 0:.3f} ({time.time() - t0:.0f} s)", flush=True)
    distributed.sync(f"eval {name}")
    return metrics
