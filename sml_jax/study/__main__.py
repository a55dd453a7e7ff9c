r"""Runs the CPU-scale study (issue 17), resumably, then writes results/study/.

    python -m sml_jax.study --workdir=/data/study [--arms=base,offline_sml,online_sml,qprime_online_sml]
        [--seeds=0,1,2 [--all_seeds_arms=online_sml]] [--results=results/study] [--scale=full]

Every arm is an ordinary `python -m sml_jax.main` run with its own config
(`configs/study/arm.py:<arm>,<scale>`), its LoRA adapter is exported in bfloat16, and every eval
suite runs `configs/eval.py` on that adapter (`runner.py`). Runs go one after another (2 cores);
rerunning the same command skips finished runs and resumes the interrupted one from its
checkpoint, so a study can span several sittings. Keep --workdir outside the repository.
Scales (`scales.py`): smoke (the tiny model, for tests), pilot (the 270M, minutes), full.
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the study's runs (outside the repo).")
_ARMS = flags.DEFINE_list("arms", ["base", "offline_sml", "online_sml", "qprime_online_sml"],
                          "Arms to run (sml_jax/study/scales.py: ARMS).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Training seeds (the base arm runs once).")
_ALL_SEEDS_ARMS = flags.DEFINE_list(
    "all_seeds_arms", [], "Arms that run every seed of --seeds; the others run only the first "
    "(default: every trained arm runs every seed). E.g. --seeds=0,1,2 --all_seeds_arms=online_sml.")
_RESULTS = flags.DEFINE_string("results", "results/study", "Where results.md, plots, evals and "
                               "students go.")
_SCALE = flags.DEFINE_string("scale", "full", "smoke | pilot | full (sml_jax/study/scales.py).")
_ONLY_RESULTS = flags.DEFINE_bool("only_results", False, "Write results from finished runs "
                                  "without running anything.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from sml_jax.study import results, runner, scales  # pylint: disable=g-import-not-at-top
  try:
    scale = scales.get_scale(_SCALE.value)
    for arm in [*_ARMS.value, *_ALL_SEEDS_ARMS.value]:
      scales.get_arm(arm)
    seeds = [int(s) for s in _SEEDS.value]
    workdir = os.path.abspath(_WORKDIR.value)
    if workdir == runner.REPO or workdir.startswith(runner.REPO + os.sep):
      raise ValueError(f"--workdir={_WORKDIR.value} is inside the repository; keep the runs "
                       "(checkpoints, logs) outside it: only --results is committed.")
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  steps = runner.plan(_WORKDIR.value, _ARMS.value, seeds, scale, _ALL_SEEDS_ARMS.value)
  command = shlex.join(["python", "-m", "sml_jax.study", f"--workdir={_WORKDIR.value}",
                        f"--arms={','.join(_ARMS.value)}", f"--seeds={','.join(map(str, seeds))}",
                        *([f"--all_seeds_arms={','.join(_ALL_SEEDS_ARMS.value)}"]
                          if _ALL_SEEDS_ARMS.value else []),
                        f"--results={_RESULTS.value}", f"--scale={scale.name}"])
  failed = None
  if not _ONLY_RESULTS.value:
    logs = f"{_WORKDIR.value}/logs"
    for step in steps:
      try:
        runner.execute(step, logs)
      except RuntimeError as e:
        failed = e
        break
  path = results.write_results(steps, scale, seeds, _RESULTS.value, command)
  print(f"[study] results: {path}", flush=True)
  if failed is not None:
    print(f"error: {failed}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
