"""`write_results`: the study's runs -> results/study/ (results.md, plots, eval JSONs, students).

    results/study/results.md                        claims (a)-(e), commands, wall times, quality
    results/study/success_by_turn.png, training.png
    results/study/evals/<arm>/seed<k>/<suite>.json  each eval's metrics (+ where it came from)
    results/study/evals/<arm>/seed<k>/<suite>.transcripts.jsonl   a fixed sample of its dialogues
    results/study/evals/<arm>/seed<k>/<suite>.outcomes.jsonl.gz   every dialogue, texts removed
    results/study/students/<arm>/                   the first seed's LoRA adapter (bfloat16)
    results/study/students/<arm>_seed<k>/           the other seeds'

Numbers come only from the runs' own files (eval transcripts, metrics.jsonl, attempt times).
A study spans sittings, and a sitting's workdir may be gone by the next one: an eval whose run is
not in the workdir but whose outcomes an earlier sitting committed (`<suite>.outcomes.jsonl.gz`:
each conversation's problem, result and per-turn flags, all a claim reads) enters the claims from
that record, so comparisons stay paired over problems across sittings; likewise a student
committed earlier stands for its training. A record counts only if its eval had the step's
model, problems and turns (`_SAME_PROBLEMS`; keeping the commit fixed is the study's job, see
results.md's commands). The runner still runs every step its workdir lacks, so write a
sitting's results with `--only_results` and the earlier sittings' seeds (`--seeds=0,1`).
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
import random
import shlex
import shutil
from typing import Sequence

from sml_jax.evaluation import metrics as metrics_lib
from sml_jax.evaluation import store
from sml_jax.models import adapters
from sml_jax.study import claims as claims_lib
from sml_jax.study import figures
from sml_jax.study import tables
from sml_jax.study.runner import REPO, Step, is_done, ran_command, seconds
from sml_jax.study.scales import ARMS, Scale

TRANSCRIPTS_KEPT = 24
OUTCOMES_SUFFIX = ".outcomes.jsonl.gz"


def _rel(path: str) -> str:
  """`path` relative to the repository when inside it (commands in results.md run from there)."""
  path = os.path.abspath(path)
  return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def student_dir(results_dir: str, arm: str, seed: int, seeds: Sequence[int]) -> str:
  return os.path.join(results_dir, "students", arm if seed == seeds[0] else f"{arm}_seed{seed}")


def _read_eval(step: Step) -> tuple[dict, list[dict]]:
  evals = store.read_evals(step.workdir)
  if len(evals) != 1:
    raise ValueError(f"{step.workdir}: expected one eval, found {sorted(evals)}")
  (name, metrics), = evals.items()
  return metrics, store.read_transcripts(step.workdir, name)


_TEXT_FLAGS = ("sampled_end",)   # flags that hold text (an unfinished turn's sampled end)


def outcomes(transcripts: Sequence[dict]) -> list[dict]:
  """The transcripts without their texts: problem, result and every turn's role and flags (not
  the flags that hold text, `_TEXT_FLAGS`)."""
  def turn_outcome(turn):
    out = {k: v for k, v in turn.items() if k != "text"}
    if any(k in turn.get("flags", {}) for k in _TEXT_FLAGS):
      out["flags"] = {k: v for k, v in turn["flags"].items() if k not in _TEXT_FLAGS}
    return out
  return [{**{k: v for k, v in t.items() if k != "turns"},
           "turns": [turn_outcome(turn) for turn in t["turns"]]} for t in transcripts]


def write_outcomes(path: str, transcripts: Sequence[dict]) -> None:
  """Atomically (a killed write leaves no truncated record); mtime=0: the same outcomes give the
  same bytes (no churn in the repository)."""
  tmp = path + ".tmp"
  with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
    f.write("".join(json.dumps(o, ensure_ascii=False) + "\n"
                    for o in outcomes(transcripts)).encode("utf-8"))
  os.replace(tmp, path)


def read_outcomes(path: str) -> list[dict]:
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def eval_dir(results_dir: str, step: Step) -> str:
  return os.path.join(results_dir, "evals", step.arm, f"seed{step.seed}")


# What makes two evals comparable problem by problem: the same model, problems and turns.
_SAME_PROBLEMS = ("--config.model=", "--config.eval.tasks=", "--config.eval.num_problems=",
                  "--config.eval.max_turns=", "--config.eval.split=", "--config.eval.teacher=")


def _same_problems(command: str, other: str) -> bool:
  keep = lambda c: sorted(a for a in shlex.split(c) if a.startswith(_SAME_PROBLEMS))
  return keep(command) == keep(other)


def _earlier_record(step: Step, results_dir: str) -> tuple[list[dict], float] | None:
  """(outcomes, seconds) an earlier sitting committed for eval `step`, or None if there is none or
  it evaluated other problems, turns or model (`_SAME_PROBLEMS`)."""
  base = os.path.join(eval_dir(results_dir, step), step.suite.name)
  if not (os.path.isfile(base + OUTCOMES_SUFFIX) and os.path.isfile(base + ".json")):
    return None
  with open(base + ".json", encoding="utf-8") as f:
    study = json.load(f).get("study", {})
  if not _same_problems(study.get("command", ""), step.command()):
    return None
  return read_outcomes(base + OUTCOMES_SUFFIX), float(study.get("seconds", 0.0))


def _copy_eval(step: Step, metrics: dict, transcripts: list[dict], out_dir: str) -> str:
  """The eval's metrics JSON, a fixed sample of its transcripts and every conversation's
  outcome, under out_dir."""
  os.makedirs(out_dir, exist_ok=True)
  kept = sorted(random.Random(0).sample(range(len(transcripts)),
                                        min(TRANSCRIPTS_KEPT, len(transcripts))))
  base = os.path.join(out_dir, step.suite.name)
  with open(base + ".transcripts.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(transcripts[i], ensure_ascii=False) + "\n" for i in kept)
  write_outcomes(base + OUTCOMES_SUFFIX, transcripts)
  record = {**metrics, "study": {"arm": step.arm, "seed": step.seed, "suite": step.suite.name,
                                 "transcripts_kept": f"{len(kept)} of {len(transcripts)}",
                                 "command": ran_command(step), "seconds": seconds(step)}}
  with open(base + ".json", "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1, ensure_ascii=False)
    f.write("\n")
  return base + ".json"


def _adapter_size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(path, n))
             for n in (adapters.FACTORS_FILE, adapters.META_FILE))


def _copy_student(src: str, dst: str) -> int:
  """Copies an adapter directory; returns its size in bytes (checked against the limit)."""
  adapters.read_meta(src)
  os.makedirs(dst, exist_ok=True)
  for name in (adapters.FACTORS_FILE, adapters.META_FILE):   # adapter.json last: complete
    shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
  size = _adapter_size(dst)
  if size > adapters.MAX_BYTES:
    raise ValueError(f"{dst}: {size / 2**20:.1f} MB, over the {adapters.MAX_BYTES / 2**20:.0f} MB "
                     "limit for a committed student.")
  return size


def write_results(steps: Sequence[Step], scale: Scale, seeds: Sequence[int], results_dir: str,
                  study_command: str) -> str:
  """Writes results_dir (see the module docstring) from the finished `steps` and the records of
  earlier sittings; returns the path of results.md. Other steps are listed as missing, never
  guessed."""
  os.makedirs(results_dir, exist_ok=True)
  evals, missing, committed, earlier_s = {}, [], [], {}
  students = {}
  for step in steps:
    if step.kind == "export":
      dst = student_dir(results_dir, step.arm, step.seed, seeds)
      if is_done(step):
        students[(step.arm, step.seed)] = (dst, _copy_student(step.workdir, dst))
      elif adapters.is_adapter_dir(dst):   # committed by an earlier sitting
        students[(step.arm, step.seed)] = (dst, _adapter_size(dst))
  for step in steps:
    if step.kind != "eval":
      if not is_done(step):
        (committed if (step.arm, step.seed) in students else missing).append(step.name)
      continue
    key = (step.arm, step.seed, step.suite.name)
    if is_done(step):
      metrics, transcripts = _read_eval(step)
      evals[key] = transcripts
      _copy_eval(step, metrics, transcripts, eval_dir(results_dir, step))
    elif (record := _earlier_record(step, results_dir)) is not None:
      evals[key], earlier_s[step.name] = record
      committed.append(step.name)
    else:
      missing.append(step.name)

  # Seeds pooled per (suite, arm), for the plots and the quality table.
  arms = list(dict.fromkeys(s.arm for s in steps))
  pooled = {}
  for suite in scale.suites:
    by_arm = {}
    for arm in arms:
      ts = [t for (a, _, s), tr in sorted(evals.items()) if a == arm and s == suite.name for t in tr]
      if ts:
        by_arm[arm] = metrics_lib.compute_metrics(ts, max_k=suite.max_turns)
    pooled[suite.name] = by_arm
  logs = {}
  for step in steps:
    if step.kind == "train" and is_done(step):
      logs[f"{step.arm} seed{step.seed}"] = store.read_train_log(step.workdir)
  K = max(s.max_turns for s in scale.suites)
  claims = claims_lib.claim_rows(evals, eval_turns=K, train_turns=scale.max_turns)
  join = lambda name: os.path.join(results_dir, name)
  png_turn = figures.plot_success_by_turn(pooled, join("success_by_turn.png"),
                                          train_turns=scale.max_turns)
  png_train = figures.plot_training(logs, join("training.png"))

  times: dict[str, dict[str, float]] = {}
  for step in steps:
    if step.kind != "export":
      key = "train" if step.kind == "train" else f"eval_{step.suite.name}"
      times.setdefault(step.arm, {}).setdefault(key, 0.0)
      times[step.arm][key] += earlier_s.get(step.name) or seconds(step)

  md = _markdown(steps, scale, seeds, results_dir, study_command, claims, pooled, logs, times,
                 students, missing, committed, png_turn, png_train)
  path = join("results.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write(md)
  return path


def _markdown(steps, scale: Scale, seeds, results_dir, study_command, claims, pooled, logs, times,
              students, missing, committed, png_turn, png_train) -> str:
  arms = list(dict.fromkeys(s.arm for s in steps))
  def per_arm(suite):
    return ", ".join(f"{st.arm} {st.suite.num_problems}" for st in steps
                     if st.kind == "eval" and st.suite.name == suite and st.seed == seeds[0])
  suites = "\n".join(f"- `{s.name}`: `{s.tasks}`, up to {s.max_turns} student turns, greedy, "
                     f"hint teacher; held-out problems (eval split, a prefix of one list): "
                     f"{per_arm(s.name) or 'not run'}" for s in scale.suites)
  arm_seeds = {a: sorted({s.seed for s in steps if s.arm == a}) for a in arms}
  out = [
      "# CPU-scale study: the paper's claims on a small model\n",
      f"Scale `{scale.name}`: model `{scale.model}`, LoRA rank {scale.lora_rank}; arms and seeds: "
      + "; ".join(f"`{a}` {', '.join(map(str, ss))}" for a, ss in arm_seeds.items())
      + " (the base arm is evaluated once: greedy decoding on fixed problems). Written "
      f"{datetime.datetime.now().isoformat(timespec='seconds')}.\n",
      "```bash\n" + study_command + "\n```\n",
  ]
  if missing:
    out.append("**Incomplete**: these runs have not finished (rerun the study command to resume): "
               + ", ".join(f"`{m}`" for m in missing) + "\n")
  if committed:
    out.append("From an earlier sitting (not in this workdir; read from the committed "
               f"`evals/<arm>/seed<k>/<suite>{OUTCOMES_SUFFIX}` and `students/`): "
               + ", ".join(f"`{m}`" for m in committed) + "\n")
  out += [
      "## Claims\n",
      "Each row: the claim's primary measure, both arms with 95% bootstrap CIs, and the difference "
      "with a paired 95% CI (1,000 resamples of problems; seeds averaged per problem). Verdict: "
      "*supported* when the CI excludes 0 in the claimed direction, *contradicted* when it "
      "excludes 0 the other way, else *not shown*. Definitions: `sml_jax/study/claims.py`, "
      "`sml_jax/evaluation/metrics.py`.\n",
      tables.claims_table(claims) + "\n",
  ]
  for cl in claims:
    out += [f"### ({cl.key}) {cl.title}\n", (cl.note + "\n") if cl.note else "",
            tables.claim_details(cl) + "\n"]
  out += ["## Success by turn k\n"]
  for suite, by_arm in pooled.items():
    out += [f"`{suite}` (seeds pooled):\n", tables.success_by_turn_table(by_arm) + "\n"]
  out += [f"![success by turn](success_by_turn.png)\n" if png_turn else "_(no plot)_\n",
          "## Dialogue quality\n", "At evaluation (seeds pooled; 95% CI over conversations):\n",
          tables.eval_quality_table(pooled) + "\n",
          "Over training (per run and stage: first → last iteration, and the mean):\n",
          tables.training_quality_table(logs) + "\n",
          "![training curves](training.png)\n" if png_train else "_(no training plot)_\n",
          "## Setup\n",
          f"- Training: dialogues of at most {scale.max_turns} student turns, hint teacher, "
          f"strict reward, temperature {scale.temperature} top-k {scale.top_k}; curriculum "
          f"`{scale.math_curriculum}` (code arm: `{scale.code_curriculum}`).",
          f"- Equal rollout budgets: offline_sml and online_sml each sample {scale.rl_steps} x "
          f"{scale.problems_per_step} problems x {scale.group_size} = {scale.rollouts_per_arm} "
          f"dialogues; qprime_online_sml samples {scale.qprime_steps * scale.problems_per_step * scale.group_size} "
          "more in its Q-priming stage.",
          "- Arms: " + "; ".join(f"`{a}`: {ARMS[a].description}" for a in arms),
          "- Eval suites (configs/eval.py; arms share problems, so differences are paired):\n" + suites + "\n",
          "## Wall time (2 CPU cores)\n", tables.wall_time_table(times) + "\n",
          *(["Training of earlier sittings (" + ", ".join(f"`{m}`" for m in committed
                                                          if m.endswith("_train"))
             + ") is not counted: its workdir is gone.\n"]
            if any(m.endswith("_train") for m in committed) else []),
          "## Commands\n",
          "Every run is an ordinary `python -m sml_jax.main` run (from the repository root). "
          "The evals below read the committed students; greedy decoding reproduces the numbers "
          "in `evals/` at the commit the study ran from (later changes to the dialogue's prompts "
          "or hints change the conversations).\n"]
  cmds = []
  for step in steps:
    if step.kind == "train":
      cmds.append(f"# {step.arm} seed {step.seed}: training\n{step.command()}")
    elif step.kind == "eval":
      ckpt = (_rel(students[(step.arm, step.seed)][0]) if (step.arm, step.seed) in students
              else None)
      wd = f"/tmp/sml_rerun/{step.arm}_seed{step.seed}_{step.suite.name}"
      cmds.append(f"# {step.arm} seed {step.seed}: eval {step.suite.name}\n"
                  + step.command(checkpoint=ckpt, workdir=wd))
  out.append("```bash\n" + "\n".join(cmds) + "\n```\n")
  if students:
    out += ["## Students\n", tables.md_table(
        ["arm", "seed", "adapter", "size (MB)"],
        [[a, str(s), f"`{_rel(d)}`", f"{size / 2**20:.2f}"] for (a, s), (d, size) in
         sorted(students.items())]) + "\n"]
  return "\n".join(out)
