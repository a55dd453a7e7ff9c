"""The experiment runner behind `python -m sml_jax.main`: stages in order, resumable.

    run(config, workdir)

  workdir/config.json          the resolved config
  workdir/checkpoints/         orbax checkpoints (train state + stage index/step): resume point
  workdir/metrics.jsonl        one line per train step (+ TensorBoard events in workdir/tb)
  workdir/eval/<stage>_<task>.json (+ .transcripts.jsonl)   each eval
  workdir/rollouts/<stage>/step_<n>.jsonl   training conversations (transcripts)
  workdir/report.md, *.png, transcripts.html

Every stage uses the same sampler (student and, when it shares the model, teacher) and the same
compiled train step. Problems and sampling seeds are functions of (seed, stage, step), so a resumed
run redoes exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import numpy as np
from tqdm.auto import tqdm

from sml_jax import config as config_lib


def _dtype(name: str):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _curriculum(config, name: str) -> list[tuple[str, float, dict]]:
  return config_lib.parse_curriculum(config.curricula[name], f"curricula.{name}")


class Experiment:
  """Everything a stage needs, built once: model, params, sampler(s), tasks, train step."""

  def __init__(self, config, workdir: str):
    import jax  # pylint: disable=g-import-not-at-top
    from sml_jax import models  # pylint: disable=g-import-not-at-top
    from sml_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    from sml_jax.parallel import rules  # pylint: disable=g-import-not-at-top
    from sml_jax.sampling import Sampler  # pylint: disable=g-import-not-at-top
    from sml_jax.tasks import registry as tasks  # pylint: disable=g-import-not-at-top

    self.config, self.workdir = config, pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.mesh = mesh_lib.mesh_from_config(config.mesh)   # training: spans every host
    # Rollouts: the same mesh on one process; each host's own devices on several.
    self.sample_mesh = self.mesh if jax.process_count() == 1 else mesh_lib.sampling_mesh(config.mesh)
    self.compute_dtype = _dtype(config.compute_dtype)
    self.tokenizer = models.load_tokenizer(config.model, config.tokenizer_path)
    self.model = models.build_model(config.model, lora_rank=config.lora_rank or None)
    base_model = models.build_model(config.model)
    self.base_params = models.load_params(config.model, config.checkpoint,
                                          dtype=_dtype(config.param_dtype), seed=config.seed)
    self.sampler = Sampler(self.model, cache_length=config.sampler.cache_length,
                           mesh=self.sample_mesh, dtype=self.compute_dtype)
    # The teacher: a frozen copy of the initial student, or another checkpoint.
    if config.teacher.model or config.teacher.checkpoint:
      t_name = config.teacher.model or config.model
      self.teacher_model = models.build_model(t_name)
      t_params = models.load_params(t_name, config.teacher.checkpoint, dtype=self.compute_dtype)
      self.teacher_sampler = Sampler(self.teacher_model, cache_length=config.sampler.cache_length,
                                     mesh=self.sample_mesh, dtype=self.compute_dtype)
    else:
      self.teacher_model, self.teacher_sampler = base_model, None
      t_params = models.cast(self.base_params, self.compute_dtype)
    self.teacher_params = rules.shard_params(t_params, self.sample_mesh)
    self.reference_model = base_model  # The frozen initial policy, for the optional KL term.
    same_copy = self.teacher_sampler is None and self.sample_mesh is self.mesh
    self._reference_params = self.teacher_params if same_copy else None
    self._tasks: dict[str, object] = {}
    self._task_kwargs = {}
    for name in config.curricula.keys():
      for t, _, kw in _curriculum(config, name):
        self._task_kwargs.setdefault(t, kw)
    self.tasks = tasks
    self.jax = jax

  def task(self, name: str):
    if name not in self._tasks:
      kw = {k: v for k, v in self._task_kwargs.get(name, {}).items() if k in ("path", "timeout",
                                                                             "allow_unsafe")}
      self._tasks[name] = self.tasks.get_task(name, **kw)
    return self._tasks[name]

  def episodes(self, **overrides):
    from sml_jax.dialogue.episode import DialogueConfig, EpisodeRunner  # pylint: disable=g-import-not-at-top
    d = dict(self.config.dialogue)
    d.update(overrides)
    d["top_p"] = d["top_p"] if d["top_p"] and d["top_p"] < 1.0 else None
    d["top_k"] = d["top_k"] or None
    return EpisodeRunner(self.sampler, self.tokenizer, self.task, DialogueConfig(**d),
                         teacher_sampler=self.teacher_sampler)

  def reference_params(self):
    """The initial student's params in the compute dtype (shared with the teacher when it is the
    frozen copy; built on first use otherwise)."""
    if self._reference_params is None:
      from sml_jax import models  # pylint: disable=g-import-not-at-top
      from sml_jax.parallel import rules  # pylint: disable=g-import-not-at-top
      self._reference_params = rules.shard_params(
          models.cast(self.base_params, self.compute_dtype), self.mesh)
    return self._reference_params

  def sampling_params(self, state):
    """The student's current params in the compute dtype (fresh every RL step: on-policy), on
    the sampling mesh."""
    from sml_jax import models  # pylint: disable=g-import-not-at-top
    from sml_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
    params = models.cast(state.full_params(), self.compute_dtype)
    return distributed.to_local_mesh(params, self.sample_mesh)


# --- eval -----------------------------------------------------------------------------------------


def run_eval(exp: Experiment, stage: str, student_params) -> dict[str, dict]:
  """Evaluates on every task of `config.eval.tasks`; writes workdir/eval/<stage>_<task>.json.

  On several hosts each runs its block of every batch (`distributed.host_range`) and process 0
  writes the gathered transcripts (the workdir is shared, as for checkpoints)."""
  from sml_jax import evaluation  # pylint: disable=g-import-not-at-top
  from sml_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  ev = exp.config.eval
  primary = distributed.is_primary()
  results = {}
  for task_name in [t.strip() for t in ev.tasks.split(",") if t.strip()]:
    # eval_before / eval_after -> before_<task> / after_<task>: the report pairs them.
    name = f"{stage.removeprefix('eval_')}_{task_name}"
    if (exp.workdir / "eval" / f"{name}.json").exists():
      print(f"[{stage}] {task_name}: already evaluated (resume), skipping", flush=True)
      continue
    problems = exp.task(task_name).problems(ev.split, limit=ev.num_problems, seed=exp.config.seed)
    runner = exp.episodes(max_turns=ev.max_turns, teacher=ev.teacher, temperature=ev.temperature,
                          qprime_q=0.0)
    t0 = time.time()
    bs = max(1, int(ev.batch_size))
    starts = range(0, len(problems), bs)
    # Finished batches are kept in <name>.partial.jsonl, so an interrupted eval resumes there.
    partial = exp.workdir / "eval" / f"{name}.partial.jsonl"
    done = _read_partial_eval(partial)
    if done:
      print(f"[resume] {stage} {task_name}: {len(done)} finished batches kept", flush=True)
    bar = tqdm(total=len(starts) * ev.max_turns, desc=f"{stage} {task_name}", unit="turn",
               dynamic_ncols=True, initial=sum(i in done for i in starts) * ev.max_turns)
    for b, i in enumerate(starts):
      if i in done:
        continue
      batch = problems[i:i + bs]
      lo, hi = distributed.host_range(len(batch))
      convs = runner.run(batch[lo:hi], student_params, exp.teacher_params,
                         seed=exp.config.seed + i, repeats=ev.repeats, on_turn=lambda: bar.update(),
                         first_row=lo * ev.repeats) if hi > lo else []
      done[i] = distributed.gather_json([c.to_json() for c in convs])
      if primary:
        partial.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "a", encoding="utf-8") as f:
          f.write(json.dumps({"start": i, "transcripts": done[i]}, ensure_ascii=False) + "\n")
      bar.update((b + 1) * ev.max_turns - bar.n)
    bar.close()
    transcripts = [t for i in starts for t in done[i]]
    if not primary:
      distributed.sync(f"eval {name}")   # Process 0 writes the results.
      continue
    metrics = evaluation.write_eval(
        exp.workdir, name, transcripts,
        extra={"model": exp.config.model, "checkpoint": exp.config.checkpoint, "task": task_name,
               "teacher_kind": ev.teacher, "seconds": round(time.time() - t0, 1),
               # Where this run's time went (batches kept from an interrupted run excluded).
               **{f"time_{k}_s": round(v, 1) for k, v in runner.seconds.items()}})
    partial.unlink(missing_ok=True)
    results[name] = metrics
    sat = metrics["success_at_turn"]
    print(f"[{stage}] {task_name}: {len(transcripts)} conversations, success@1 {sat[0]:.3f}, "
          f"success@{len(sat)} {sat[-1]:.3f}, questions {metrics['question_rate'] or 0:.3f}, "
          f"leaks {metrics['teacher_leak_rate'] or 0:.3f} ({time.time() - t0:.0f} s)", flush=True)
    distributed.sync(f"eval {name}")
  return results


def _read_partial_eval(path: pathlib.Path) -> dict[int, list[dict]]:
  """{first problem index of a batch: its transcripts} of an interrupted eval ({} if none).
  A line cut short by the interruption is dropped (that batch runs again)."""
  if not path.exists():
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


# --- training -------------------------------------------------------------------------------------


def _stage_seed(config, stage_index: int, step: int) -> int:
  return (config.seed * 1_000_003 + stage_index * 10_007 + step) % (1 << 31)


def collect_examples(exp: Experiment, kind: str, st, state, problems, seed: int,
                     first_problem: int = 0):
  """Rollouts with the current student -> (examples, conversations, {part: seconds}).
  `problems` may be one host's block of the step's problems, starting at `first_problem`."""
  from sml_jax.training import rollouts  # pylint: disable=g-import-not-at-top
  if kind == "sft":  # Reference solutions: nothing to roll out.
    return rollouts.reference_examples(problems, exp.tokenizer, exp.config.dialogue.fewshot), [], {}
  params = exp.sampling_params(state)
  if kind == "rl":
    runner = exp.episodes(qprime_q=0.0)
    convs = runner.run(problems, params, exp.teacher_params, seed=seed, repeats=st.group_size,
                       first_row=first_problem * st.group_size)
    examples, _ = rollouts.rl_examples(convs, st.group_size, st.eps,
                                       with_logprobs=st.get("inner_steps", 1) > 1)
  elif kind == "offline_sml":
    runner = exp.episodes(qprime_q=0.0)
    convs = runner.run(problems, params, exp.teacher_params, seed=seed,
                       repeats=st.rollouts_per_problem,
                       first_row=first_problem * st.rollouts_per_problem)
    examples = rollouts.offline_sml_examples(convs)
  elif kind == "qprime_sft":
    runner = exp.episodes()
    convs = runner.run(problems, params, exp.teacher_params, seed=seed,
                       repeats=st.rollouts_per_problem,
                       first_row=first_problem * st.rollouts_per_problem)
    examples = rollouts.qprime_examples(convs)
  else:
    raise ValueError(f"stage kind {kind!r} does not roll out")
  return examples, convs, {f"time_{k}_s": v for k, v in runner.seconds.items()}


def run(config, workdir: str) -> None:
  from sml_jax.training import loop  # pylint: disable=g-import-not-at-top
  stages = config_lib.stage_list(config)
  wd = pathlib.Path(workdir)
  wd.mkdir(parents=True, exist_ok=True)
  from sml_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  if distributed.is_primary():
    (wd / "config.json").write_text(config.to_json_best_effort(indent=2))
  t_start = time.time()
  exp = Experiment(config, workdir)
  loop.run_stages(exp, stages, run_eval=run_eval, collect_examples=collect_examples,
                  stage_seed=lambda i, s: _stage_seed(config, i, s))
  if not distributed.is_primary():
    return
  from sml_jax import evaluation  # pylint: disable=g-import-not-at-top
  table = evaluation.write_report(wd)
  print("\n" + table)
  print(f"\nReport: {wd / 'report.md'}  |  transcripts: {wd / 'transcripts.html'}  |  "
        f"total {time.time() - t_start:.0f} s", flush=True)
