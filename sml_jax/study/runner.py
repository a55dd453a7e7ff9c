"""The study's runs, in order, each an ordinary `python -m sml_jax.main` process; resumable.

    steps = plan(workdir, arms=("base", "online_sml"), seeds=(0,), scale=SCALES["smoke"])
    for step in steps:
      execute(step)          # skips a finished step; a killed one resumes (checkpoints, eval partials)

Per (arm, seed), under the study's --workdir DIR:

  DIR/<arm>/seed<k>/train/          the training run (configs/study/arm.py:<arm>,<scale>)
  DIR/<arm>/seed<k>/student/        its LoRA adapter, exported in bfloat16 (`models.adapters`)
  DIR/<arm>/seed<k>/eval_<suite>/   one eval run per suite (configs/eval.py + overrides)
  DIR/logs/<arm>_seed<k>_<step>.log the runs' console output

A step is finished when its workdir holds `study_done.json` (written once the process exited 0
with every stage done: the driver wrote its report.md) or, for an export, when the adapter's `adapter.json` exists. The wall time of every attempt is
appended to `study_attempts.jsonl` in the step's workdir; a step's time is their sum, so a study
spread over several sittings still reports what each arm cost. The base arm is evaluated once
(seed 0): greedy decoding on fixed problems gives the same dialogues whatever the seed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Sequence

from sml_jax.models import adapters
from sml_jax.study.scales import Arm, EvalSuite, Scale, get_arm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DONE_FILE = "study_done.json"
ATTEMPTS_FILE = "study_attempts.jsonl"


@dataclasses.dataclass(frozen=True)
class Step:
  arm: str
  seed: int
  kind: str                        # "train" | "export" | "eval"
  workdir: str                     # the run's workdir (export: the adapter directory)
  args: tuple[str, ...] = ()       # sml_jax.main arguments after the module (train / eval)
  suite: EvalSuite | None = None
  checkpoint: str | None = None    # eval: the student adapter (None: the base model)

  @property
  def name(self) -> str:
    return f"{self.arm}_seed{self.seed}_{self.kind}" + (f"_{self.suite.name}" if self.suite else "")

  @property
  def argv(self) -> list[str]:
    return [sys.executable, "-m", "sml_jax.main", *self.args]

  def command(self, checkpoint: str | None = None, workdir: str | None = None) -> str:
    """The shell command of this step (export: none), optionally with another adapter path
    (e.g. the committed copy) or workdir."""
    if self.kind == "export":
      return ""
    args = [a for a in self.args if not a.startswith(("--workdir=", "--config.checkpoint="))]
    ckpt = checkpoint or self.checkpoint
    extra = [f"--config.checkpoint={ckpt}"] if ckpt else []
    return shlex.join(["python", "-m", "sml_jax.main", *args[:1],
                       f"--workdir={workdir or self.workdir}", *extra, *args[1:]])


def arm_dir(workdir: str, arm: str, seed: int) -> str:
  return os.path.join(workdir, arm, f"seed{seed}")


def arm_seeds(arm: Arm, seeds: Sequence[int], all_seeds_arms: Sequence[str] = ()) -> list[int]:
  """The seeds `arm` runs: all of `seeds`, or only the first for the base arm (greedy eval) and,
  when `all_seeds_arms` is given, for every arm not in it."""
  if not arm.stages or (all_seeds_arms and arm.name not in all_seeds_arms):
    return list(seeds[:1])
  return list(seeds)


def plan(workdir: str, arms: Sequence[str], seeds: Sequence[int], scale: Scale,
         all_seeds_arms: Sequence[str] = ()) -> list[Step]:
  """Every step of the study, in the order it runs (arm by arm, seed by seed)."""
  from sml_jax.study.scales import eval_overrides  # pylint: disable=g-import-not-at-top
  if not seeds:
    raise ValueError("--seeds is empty.")
  workdir = os.path.abspath(workdir)   # The runs' processes start in the repository.
  steps = []
  for name in arms:
    arm = get_arm(name)
    for seed in arm_seeds(arm, seeds, all_seeds_arms):
      root = arm_dir(workdir, arm.name, seed)
      student = None
      if arm.stages:
        train = os.path.join(root, "train")
        steps.append(Step(arm.name, seed, "train", train, (
            f"--config=configs/study/arm.py:{arm.name},{scale.name}", f"--workdir={train}",
            f"--config.seed={seed}")))
        student = os.path.join(root, "student")
        steps.append(Step(arm.name, seed, "export", student))
      for suite in [s for s in scale.suites if s.name in arm.suites]:
        if suite.name == "math" and arm.math_share < 1:
          suite = dataclasses.replace(
              suite, num_problems=max(1, round(suite.num_problems * arm.math_share)))
        wd = os.path.join(root, f"eval_{suite.name}")
        # The base model is evaluated like the students: frozen (bfloat16) under a LoRA adapter
        # whose B factors are zero (it adds exactly 0), so every arm samples from the same base
        # numerics (and the eval keeps no full-size optimizer state).
        ckpt = ([f"--config.checkpoint={student}"] if student else
                [f"--config.lora_rank={scale.lora_rank}"])
        steps.append(Step(arm.name, seed, "eval", wd, (
            "--config=configs/eval.py", f"--workdir={wd}", *ckpt,
            *eval_overrides(scale, suite)), suite=suite, checkpoint=student))
  return steps


def is_done(step: Step) -> bool:
  if step.kind == "export":
    return adapters.is_adapter_dir(step.workdir)
  return os.path.isfile(os.path.join(step.workdir, DONE_FILE))


def seconds(step: Step) -> float:
  """Wall time of all attempts of `step` so far (0 if none recorded)."""
  path = os.path.join(step.workdir, ATTEMPTS_FILE)
  if not os.path.isfile(path):
    return 0.0
  with open(path, encoding="utf-8") as f:
    return sum(json.loads(line)["seconds"] for line in f if line.strip())


def _record(step: Step, dt: float, rc: int | None) -> None:
  os.makedirs(step.workdir, exist_ok=True)
  with open(os.path.join(step.workdir, ATTEMPTS_FILE), "a", encoding="utf-8") as f:
    f.write(json.dumps({"seconds": round(dt, 1), "returncode": rc, "end": time.time(),
                        "command": step.command()}) + "\n")


def ran_command(step: Step) -> str:
  """The command `step`'s last attempt ran (it may differ from `step.command()` when the study's
  scale changed since); for attempts that did not record one (older runners), the command its
  `study_done.json` names, else `step.command()`."""
  path = os.path.join(step.workdir, ATTEMPTS_FILE)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      commands = [json.loads(l).get("command") for l in f if l.strip()]
    if commands and commands[-1]:
      return commands[-1]
  done = os.path.join(step.workdir, DONE_FILE)
  if os.path.isfile(done):
    with open(done, encoding="utf-8") as f:
      command = json.load(f).get("command")
    if command:
      return command
  return step.command()


def _tail(path: str, lines: int = 40) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return "".join(f.readlines()[-lines:])


def execute(step: Step, logs_dir: str) -> bool:
  """Runs `step` unless finished. True if it ran now. Raises RuntimeError (with the log's tail)
  when its process fails; on Ctrl-C the run gets SIGTERM (its driver checkpoints) first."""
  if is_done(step):
    print(f"[study] {step.name}: finished earlier, skipped", flush=True)
    return False
  t0 = time.time()
  if step.kind == "export":
    src = os.path.join(os.path.dirname(step.workdir), "train")
    adapters.export_from_workdir(src, step.workdir)
    _record(step, time.time() - t0, 0)
    print(f"[study] {step.name}: adapter -> {step.workdir}", flush=True)
    return True
  os.makedirs(logs_dir, exist_ok=True)
  log = os.path.join(logs_dir, f"{step.name}.log")
  print(f"[study] {step.name}: running (log: {log})\n  {step.command()}", flush=True)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [REPO, *filter(None, [os.environ.get("PYTHONPATH")])]))
  with open(log, "a", encoding="utf-8") as out:
    proc = subprocess.Popen(step.argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
      rc = proc.wait()
    except BaseException:
      proc.send_signal(signal.SIGTERM)   # The driver saves a checkpoint and exits.
      proc.wait()
      _record(step, time.time() - t0, None)
      raise
  dt = time.time() - t0
  _record(step, dt, rc)
  if rc != 0:
    raise RuntimeError(f"{step.name} failed (exit {rc}); rerun the study to resume. Log tail "
                       f"({log}):\n{_tail(log)}")
  if not os.path.isfile(os.path.join(step.workdir, "report.md")):
    # The driver writes its report only when every stage finished (a SIGTERM stops it early).
    raise RuntimeError(f"{step.name} stopped before its last stage; rerun the study to resume.")
  with open(os.path.join(step.workdir, DONE_FILE), "w", encoding="utf-8") as f:
    json.dump({"command": step.command(), "seconds": round(seconds(step), 1)}, f, indent=1)
  print(f"[study] {step.name}: done in {dt:.0f} s", flush=True)
  return True
