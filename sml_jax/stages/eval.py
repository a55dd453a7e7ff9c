"""`eval_<name>`: dialogues on held-out problems of every eval task -> workdir/eval/<name>.json.

eval_before / eval_after on task T write `before_T` / `after_T` (the report pairs them). Batches
of `batch_size` problems run in order; each finished batch is appended to
`eval/<name>.partial.jsonl`, so an interrupted eval resumes where it stopped; a preemption notice
on any host stops every host's batch at its next turn. On several hosts each runs its block of
every batch (`distributed.host_range`) and process 0 writes the gathered transcripts (the
workdir is shared, as for checkpoints); what is already done is what process 0 reads there,
broadcast to every host, so hosts never disagree about where to resume.
"""

from __future__ import annotations

import json
import time

from tqdm.auto import tqdm

from sml_jax import evaluation
from sml_jax import paths
from sml_jax import rng
from sml_jax.parallel import distributed
from sml_jax.parallel import preemption
from sml_jax.spec import EvalSpec, TaskEntry
from sml_jax.stages.base import Context, transcript


def read_partial(path: str) -> dict[int, list[dict]]:
  """{first problem index of a batch: its transcripts} of an interrupted eval ({} if none).
  A line cut short by the interruption is dropped (that batch runs again)."""
  done = {}
  for line in (paths.read_text_or_none(path) or "").splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    done[int(record["start"])] = record["transcripts"]
  return done


def _resume_point(eval_dir: str, name: str) -> tuple[bool, dict[int, list[dict]]]:
  """(finished, finished batches) of eval `name`, as process 0 reads them, on every host."""
  if distributed.is_primary():
    finished = paths.exists(paths.join(eval_dir, f"{name}.json"))
    done = {} if finished else read_partial(paths.join(eval_dir, f"{name}.partial.jsonl"))
    seen = [finished, sorted(done.items())]
  else:
    seen = None
  finished, items = distributed.broadcast_json(seen)
  return finished, {int(k): v for k, v in items}


class EvalStage:

  def __init__(self, spec: EvalSpec):
    self.spec = spec

  def run(self, ctx: Context, state, first_step: int = 0):
    del first_step
    params = ctx.exp.sampling_params(state)
    for entry in self.spec.tasks:
      try:
        self.evaluate(ctx, entry, params)
      except preemption.Preempted:   # Every host, at the same batch (`Watch.agree`).
        print(f"[preempted] {self.spec.name} {entry.name}: finished batches kept; exiting",
              flush=True)
        return None
    return state

  def evaluate(self, ctx: Context, entry: TaskEntry, params) -> dict | None:
    """One task -> its metrics (None on hosts other than process 0, or when already done)."""
    exp, ev = ctx.exp, self.spec
    stage = ev.name
    name = f"{stage.removeprefix('eval_')}_{entry.name}"
    eval_dir = paths.join(ctx.workdir, "eval")
    finished, done = _resume_point(eval_dir, name)
    if finished:
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
    partial = paths.join(eval_dir, f"{name}.partial.jsonl")
    if done:
      print(f"[resume] {stage} {entry.name}: {len(done)} finished batches kept", flush=True)
    bar = tqdm(total=len(starts) * ev.max_turns, desc=f"{stage} {entry.name}", unit="turn",
               dynamic_ncols=True, initial=sum(i in done for i in starts) * ev.max_turns)
    watch = ctx.checkpointer.preemption if ctx.checkpointer is not None else None

    def on_turn():
      bar.update()
      if watch is not None:
        watch.check()   # Raises Preempted: this batch is dropped, the finished ones are kept.

    log = paths.Appender(partial) if primary else None
    try:
      for b, i in enumerate(starts):
        if i in done:
          continue
        batch = problems[i:i + ev.batch_size]
        lo, hi = distributed.host_range(len(batch))
        convs, stopped = [], False
        try:
          if watch is not None:
            watch.check()
          if hi > lo:
            convs = runner.run(batch[lo:hi], params, exp.teacher.params,
                               seed=rng.stream(exp.spec.seed, "eval_batch", first_problem=i),
                               repeats=ev.repeats, on_turn=on_turn, first_row=lo * ev.repeats)
        except preemption.Preempted:
          stopped = True
        if watch is not None and watch.agree(stopped):   # Every host, every batch.
          raise preemption.Preempted()
        done[i] = distributed.gather_json([transcript(c) for c in convs])
        if primary:
          log.write(json.dumps({"start": i, "transcripts": done[i]}, ensure_ascii=False) + "\n")
        bar.update((b + 1) * ev.max_turns - bar.n)
    finally:
      bar.close()
      if log is not None:
        log.close()
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
    if paths.exists(partial):
      paths.remove(partial)
    sat = metrics["success_at_turn"]
    print(f"[{stage}] {entry.name}: {len(transcripts)} conversations, success@1 {sat[0]:.3f}, "
          f"success@{len(sat)} {sat[-1]:.3f}, questions {metrics['question_rate'] or 0:.3f}, "
          f"leaks {metrics['teacher_leak_rate'] or 0:.3f} ({time.time() - t0:.0f} s)", flush=True)
    distributed.sync(f"eval {name}")
    return metrics
