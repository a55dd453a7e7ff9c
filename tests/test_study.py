"""`python -m sml_jax.study` end to end at the smoke scale (the tiny model, 2 arms): results.md
with the five claim rows, plots, eval JSONs and a student adapter; a rerun skips every finished
run; the eval command written in results.md, rerun on the committed student, gives the same
greedy numbers."""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from sml_jax.models import adapters

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(args, timeout=1800):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _command_after(md: str, header: str) -> list[str]:
  lines = md.splitlines()
  i = lines.index(header)
  return shlex.split(lines[i + 1])


def test_bad_arm_or_scale_fails_at_start(tmp_path):
  proc = _run(["-m", "sml_jax.study", f"--workdir={tmp_path}", "--arms=base,nope"], timeout=120)
  assert proc.returncode == 2 and "unknown study arm 'nope'" in proc.stderr
  proc = _run(["-m", "sml_jax.study", f"--workdir={tmp_path}", "--scale=huge"], timeout=120)
  assert proc.returncode == 2 and "unknown study scale 'huge'" in proc.stderr
  proc = _run(["-m", "sml_jax.study", f"--workdir={REPO / 'study_runs'}"], timeout=120)
  assert proc.returncode == 2 and "inside the repository" in proc.stderr


@pytest.mark.slow
def test_smoke_study_end_to_end_resume_and_rerun(tmp_path):
  wd, res = tmp_path / "wd", tmp_path / "results"
  args = ["-m", "sml_jax.study", f"--workdir={wd}", "--arms=base,online_sml", "--seeds=0",
          "--scale=smoke", f"--results={res}"]
  proc = _run(args)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

  md = (res / "results.md").read_text()
  claims = [l for l in md.splitlines() if re.match(r"\| \([a-e]\) ", l)]
  assert [l[3] for l in claims] == list("abcde")
  for key in "acd":   # base and online_sml ran: a paired CI and a verdict from the numbers
    row = next(l for l in claims if l.startswith(f"| ({key})"))
    assert "not run" not in row and re.search(r"\[[-+]\d\.\d{3}, [-+]\d\.\d{3}\]", row), row
  # (e) compares online_sml with base (no Q-primed arm); the tiny model never answers, so the
  # premature answer rate has no attempts to count: undefined, not "not run" nor 0.
  assert "| undefined |" in next(l for l in claims if l.startswith("| (e)"))
  assert "not run" in next(l for l in claims if l.startswith("| (b)"))   # needs offline_sml
  for png in ("success_by_turn.png", "training.png"):
    assert (res / png).stat().st_size > 1000
  for arm in ("base", "online_sml"):
    for suite in ("math", "code", "sharded"):
      m = json.loads((res / "evals" / arm / "seed0" / f"{suite}.json").read_text())
      assert m["study"]["arm"] == arm and len(m["success_at_turn"]) == 2
      assert (res / "evals" / arm / "seed0" / f"{suite}.transcripts.jsonl").exists()
  student = res / "students" / "online_sml"
  meta = adapters.read_meta(str(student))
  assert meta.model == "tiny" and meta.lora_rank == 4
  size = sum(f.stat().st_size for f in student.iterdir())
  assert 0 < size <= adapters.MAX_BYTES
  assert f"{size / 2**20:.2f}" in md
  assert "## Wall time" in md and "online_sml" in md.split("## Wall time")[1]

  # Rerun: every run is finished, nothing runs again.
  again = _run(args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "running" not in again.stdout
  assert again.stdout.count("finished earlier, skipped") == 1 + 1 + 3 + 3   # train, export, evals

  # The eval command of results.md on the committed student reproduces the reported numbers.
  cmd = _command_after(md, "# online_sml seed 0: eval math")
  assert f"--config.checkpoint={student}" in cmd and cmd[:3] == ["python", "-m", "sml_jax.main"]
  rerun_wd = tmp_path / "rerun"
  cmd = [a if not a.startswith("--workdir=") else f"--workdir={rerun_wd}" for a in cmd]
  proc = _run(cmd[1:])
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads((rerun_wd / "eval" / "eval_arithmetic.json").read_text())
  want = json.loads((res / "evals" / "online_sml" / "seed0" / "math.json").read_text())
  for key in ("success_at_turn", "question_rate", "well_formed_rate", "format_failure_rate",
              "num_conversations", "mean_student_turns"):
    assert got[key] == want[key], key
  texts = lambda ts: [[t["text"] for t in c["turns"]] for c in ts]
  orig = [json.loads(l) for l in open(wd / "online_sml/seed0/eval_math/eval/eval_arithmetic"
                                           ".transcripts.jsonl")]
  new = [json.loads(l) for l in open(rerun_wd / "eval" / "eval_arithmetic.transcripts.jsonl")]
  assert texts(new) == texts(orig)


def _eval_done(step, solved_turns):
  """Writes a finished eval run for `step`: one conversation per problem, solved at the given
  turn (None: unsolved after 2 attempts)."""
  from sml_jax.evaluation import store
  from sml_jax.study import runner
  ts = []
  for i, k in enumerate(solved_turns):
    turns = [{"role": "user", "text": f"Solve {i} + 1.", "flags": {}}]
    for j in range(k or 2):
      right = j + 1 == k
      turns.append({"role": "student", "text": f"Final answer: {i + right}",
                    "flags": {"attempt": True, "question": False, "correct": right,
                              "premature": False, "well_formed": True}})
      if not right and j + 1 < (k or 2):
        turns.append({"role": "teacher", "text": "Too low.", "flags": {"leak": False}})
    ts.append({"problem_id": f"p{i}", "task": "arithmetic", "domain": "math", "turns": turns,
               "solved": k is not None, "solved_turn": k, "reward": 0.7 ** (k - 1) if k else 0.0,
               "max_turns": 2, "repeat": 0})
  store.write_eval(step.workdir, "eval_arithmetic", ts, max_k=2)
  with open(os.path.join(step.workdir, runner.DONE_FILE), "w") as f:
    f.write("{}")


def test_an_eval_of_an_earlier_sitting_enters_the_claims_from_its_committed_outcomes(tmp_path):
  """Sitting 1 evaluates base and online_sml; its workdir is then lost. Sitting 2 (a new workdir,
  online_sml only) writes into the same results: claim (a) still pairs the two arms over the same
  problems, from base's committed outcomes (texts removed), with the same numbers."""
  import shutil
  from sml_jax.study import results, runner, scales
  res = str(tmp_path / "results")
  steps = runner.plan(str(tmp_path / "wd1"), ["base", "online_sml"], [0], scales.get_scale("smoke"))
  math = {s.arm: s for s in steps if s.kind == "eval" and s.suite.name == "math"}
  n = 40
  _eval_done(math["base"], [1 if i < 4 else None for i in range(n)])
  _eval_done(math["online_sml"], [1 if i < 4 else (2 if i < 24 else None) for i in range(n)])
  md1 = open(results.write_results(steps, scales.get_scale("smoke"), [0], res, "cmd")).read()
  row = lambda md: next(l for l in md.splitlines() if l.startswith("| (a) "))
  assert "supported" in row(md1)
  record = os.path.join(res, "evals", "base", "seed0", "math" + results.OUTCOMES_SUFFIX)
  kept = results.read_outcomes(record)
  assert len(kept) == n and all("text" not in t for c in kept for t in c["turns"])
  assert [c["solved_turn"] for c in kept][:5] == [1, 1, 1, 1, None]
  # Flags that hold text (an unfinished turn's sampled end) are dropped too; the others are kept.
  turn = {"role": "student", "text": "Final answer: 21",
          "flags": {"unfinished": True, "sampled_end": "Final answer: 21", "well_formed": False}}
  (got,) = results.outcomes([{"problem_id": "p", "turns": [turn]}])
  assert got["turns"] == [{"role": "student", "flags": {"unfinished": True, "well_formed": False}}]
  assert turn["flags"]["sampled_end"]   # the transcript itself is not changed

  shutil.rmtree(tmp_path / "wd1")
  steps2 = runner.plan(str(tmp_path / "wd2"), ["base", "online_sml"], [0],
                       scales.get_scale("smoke"))
  _eval_done(next(s for s in steps2 if s.arm == "online_sml" and s.kind == "eval"
                  and s.suite.name == "math"),
             [1 if i < 4 else (2 if i < 24 else None) for i in range(n)])
  before = open(record, "rb").read()
  md2 = open(results.write_results(steps2, scales.get_scale("smoke"), [0], res, "cmd")).read()
  assert row(md2) == row(md1)
  assert open(record, "rb").read() == before        # same outcomes, same bytes
  earlier = next(l for l in md2.splitlines() if l.startswith("From an earlier sitting"))
  assert "`base_seed0_eval_math`" in earlier and "online_sml_seed0_eval_math" not in earlier
  assert "| base |" in md2.split("## Success by turn k")[1].split("## Dialogue")[0]

  # A run in the workdir wins over the record: base now solves what online_sml solves.
  base2 = next(s for s in steps2 if s.arm == "base" and s.kind == "eval" and s.suite.name == "math")
  _eval_done(base2, [1 if i < 4 else (2 if i < 24 else None) for i in range(n)])
  md_run = open(results.write_results(steps2, scales.get_scale("smoke"), [0], res, "cmd")).read()
  assert "not shown" in row(md_run) and "+0.000" in row(md_run)
  assert "From an earlier sitting" not in md_run or "base_seed0_eval_math" not in next(
      l for l in md_run.splitlines() if l.startswith("From an earlier sitting"))
  shutil.rmtree(base2.workdir)
  # A record of another command (here: more turns) is not paired with this run.
  meta = json.loads(open(record.replace(results.OUTCOMES_SUFFIX, ".json")).read())
  meta["study"]["command"] = meta["study"]["command"].replace(
      "--config.eval.max_turns=", "--config.eval.max_turns=9")
  with open(record.replace(results.OUTCOMES_SUFFIX, ".json"), "w") as f:
    json.dump(meta, f)
  md3 = open(results.write_results(steps2, scales.get_scale("smoke"), [0], res, "cmd")).read()
  assert "not run" in row(md3) and "`base_seed0_eval_math`" in md3.split("## Claims")[0]


def test_an_eval_record_holds_the_command_its_run_ran(tmp_path):
  """results.md's eval JSONs carry the command the run's last attempt recorded, not the one the
  current scale would give (a scale changed since), nor one of an earlier attempt."""
  from sml_jax.study import results, runner, scales
  smoke = scales.get_scale("smoke")
  steps = runner.plan(str(tmp_path / "wd"), ["base"], [0], smoke)
  step = next(s for s in steps if s.suite.name == "math")
  assert runner.ran_command(step) == step.command()        # no attempt recorded yet
  _eval_done(step, [1, None])
  assert runner.ran_command(step) == step.command()        # a done file without a command
  # An older runner recorded no command per attempt, only in its done file.
  older = step.command().replace("--config.train.max_len=", "--config.train.max_len=9")
  with open(os.path.join(step.workdir, runner.DONE_FILE), "w") as f:
    json.dump({"command": older, "seconds": 1.0}, f)
  with open(os.path.join(step.workdir, runner.ATTEMPTS_FILE), "w") as f:
    f.write(json.dumps({"seconds": 3.0, "returncode": 0}) + "\n")
  assert runner.ran_command(step) == older
  with open(os.path.join(step.workdir, runner.ATTEMPTS_FILE), "w") as f:
    last = step.command().replace("--config.train.max_len=", "--config.train.max_len=7")
    for cmd in ("first", last):
      f.write(json.dumps({"seconds": 3.0, "returncode": 0, "command": cmd}) + "\n")
  results.write_results(steps, smoke, [0], str(tmp_path / "res"), "cmd")
  study = json.loads((tmp_path / "res/evals/base/seed0/math.json").read_text())["study"]
  assert "--config.train.max_len=7" in study["command"] and study["seconds"] == 6.0


def test_plan_equal_budgets_suites_and_seeds():
  from sml_jax.study import runner, scales
  full = scales.FULL
  steps = runner.plan("/runs", list(scales.DEFAULT_ARMS), [0, 1, 2], full,
                      all_seeds_arms=["online_sml"])
  trained = {(s.arm, s.seed) for s in steps if s.kind == "train"}
  assert trained == {("offline_sml", 0), ("online_sml", 0), ("online_sml", 1),
                     ("online_sml", 2), ("qprime_online_sml", 0)}
  evals = {(s.arm, s.seed, s.suite.name): s for s in steps if s.kind == "eval"}
  assert evals[("base", 0, "math")].suite.num_problems >= 200                  # claim (a)
  assert evals[("online_sml", 2, "math")].suite.num_problems >= 200
  assert evals[("offline_sml", 0, "math")].suite.num_problems == 100           # a prefix
  assert ("offline_sml", 0, "sharded") not in evals and ("qprime_online_sml", 0, "code") not in evals
  assert all(s.suite.max_turns == 10 for s in evals.values())
  base = evals[("base", 0, "math")]
  assert f"--config.lora_rank={full.lora_rank}" in base.args and base.checkpoint is None
  online = evals[("online_sml", 1, "code")]
  assert online.checkpoint == "/runs/online_sml/seed1/student"
  assert "--config.dialogue.student_line_stop=False" in online.args
  # Equal rollout budgets: offline samples as many dialogues per step as online's groups.
  from configs.study.arm import get_config
  off, on = get_config("offline_sml,full"), get_config("online_sml,full")
  assert (off.offline_sml.steps * off.offline_sml.problems_per_step
          * off.offline_sml.rollouts_per_problem
          == on.rl.steps * on.rl.problems_per_step * on.rl.group_size == full.rollouts_per_arm)
  assert on.rl.group_size == 8 and on.dialogue.gamma == 0.7 and on.dialogue.max_turns <= 4
  assert get_config("qprime_online_sml,full").stages == "qprime_sft,rl"
