"""Stages own their training settings: PPO inner steps and KL only where configured."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny_test
from sml_jax import config as config_lib
from sml_jax.experiment import Experiment
from sml_jax.stages import base, examples, kinds, rollout
from sml_jax.stages.trainer import Trainer

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_ppo_and_kl_in_rl_leave_the_sft_stage_plain(tmp_path):
  """rl.inner_steps=2 + rl.kl_beta in a run with an SFT stage: SFT trains with plain NLL (no
  old log-probs needed, no KL), and the run finishes."""
  wd = tmp_path / "wd"
  proc = subprocess.run(
      [sys.executable, "-m", "sml_jax.main", "--config=configs/tiny_test.py", f"--workdir={wd}",
       "--config.stages=sft,rl", "--config.sft.steps=2", "--config.rl.steps=1",
       "--config.rl.inner_steps=2", "--config.rl.kl_beta=0.1"],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  sft = [r for r in rows if r["stage"] == "sft"]
  assert len(sft) == 2 and all("loss" in r for r in sft)
  assert not any(k in r for r in sft for k in ("kl", "clip_fraction", "first_loss"))


@pytest.mark.parametrize("temperature, top_k", [(1.0, 0), (0.7, 0), (0.7, 40)])
def test_first_ppo_inner_step_is_on_policy(temperature, top_k):
  """The train step scores the student's tokens under the distribution that sampled them
  (logits / temperature): on the first inner step the PPO ratio is 1 (no clipping); the second
  step sees the moved policy. With top-k the old log-probs are the train step's own."""
  c = tiny_test.get_config()
  c.rl.inner_steps = 2
  c.dialogue.temperature = temperature
  c.dialogue.top_k = top_k
  spec = config_lib.to_spec(c)
  rl_spec = next(s for s in spec.stages if s.kind == "rl")
  exp = Experiment(spec)
  trainer = Trainer(exp)
  state = trainer.start_stage(trainer.initial_state())
  stage = rollout.RLStage(rl_spec)
  problems, seed = stage.problems(exp, step=0, stage_index=3)
  got = stage.collect(exp, exp.sampling_params(state), problems, seed, first_problem=0)
  # The random-init tiny model never solves a problem, so every group's rewards are equal; give
  # one conversation per group a reward to get non-zero advantages (the ratio does not depend on
  # the rewards, only on the sampler's and the train step's log-probs).
  for j, conv in enumerate(got.conversations):
    conv.reward = 1.0 if j % rl_spec.group_size == 0 else 0.0
  exs, adv = examples.rl_examples(got.conversations, rl_spec.group_size, rl_spec.adv_eps,
                                  with_logprobs=True)
  assert len(exs) == len(got.conversations) and np.all(adv != 0)
  state, m = trainer.train(state, exs, rl_spec.train, learning_rate=1e-2)
  assert m["first_log_ratio_abs_mean"] < 1e-4, m
  assert m["first_clip_fraction"] == 0.0, m
  assert m["log_ratio_abs_mean"] > 10 * m["first_log_ratio_abs_mean"], m   # The update moved it.


def test_eval_tasks_take_curriculum_entries_with_arguments(tmp_path):
  """--config.eval.tasks accepts task:weight:k=v entries: the official-format GSM8K test file is
  evaluated whole with split=test, and a Lost-in-Conversation file through lic_math."""
  gsm = tmp_path / "gsm_test.jsonl"
  gsm.write_text("".join(json.dumps({"question": f"Tom has {i} apples and buys 2 more. How many "
                                                 "apples does he have?",
                                     "answer": f"{i} + 2 = <<{i}+2={i + 2}>>{i + 2}\n#### {i + 2}"})
                         + "\n" for i in range(3)))
  lic = REPO / "tests" / "data" / "sharded_instructions_sample.json"
  # One run, both entries (Lost in Conversation's items are an evaluation set: split test too).
  wd = tmp_path / "wd"
  proc = subprocess.run(
      [sys.executable, "-m", "sml_jax.main", "--config=configs/tiny_test.py", f"--workdir={wd}",
       "--config.stages=eval_before",
       f"--config.eval.tasks=gsm8k:1:test_path={gsm},lic_math:1:path={lic};strict=false",
       "--config.eval.split=test", "--config.eval.max_turns=1"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name, n in [("gsm8k", 3), ("lic_math", None)]:
    rows = (wd / "eval" / f"before_{name}.transcripts.jsonl").read_text().splitlines()
    if n is not None:
      assert len(rows) == n
    problems = [json.loads(r)["problem_id"] for r in rows]
    assert len(problems) >= 1 and len(set(problems)) == len(problems)


def test_rl_update_with_signal_moves_rewarded_turns_up(tmp_path):
  """End to end on `tiny`: SFT on reference solutions teaches it to answer a tiny task (so its
  sampled dialogues are sometimes right and sometimes wrong), then one GRPO step on its own
  rollouts: advantages are non-zero, the update happens, the rewarded conversations' student
  tokens gain log-probability and the unrewarded ones lose it."""
  data = tmp_path / "sums.jsonl"
  data.write_text("".join(json.dumps({"question": f"What is {a} + {b}?",
                                      "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}) + "\n"
                          for a, b in [(2, 2), (3, 1), (1, 3), (4, 0)] * 4))
  c = tiny_test.get_config()
  c.curricula.math = f"gsm8k:1:path={data};eval_fraction=0.0"
  c.stages = "sft,rl"
  c.dialogue.update({"max_turns": 1, "student_max_tokens": 16, "temperature": 1.0,
                     "fewshot": False})
  # Every answer is 4: 60 SFT steps teach the random-init model "... Final answer: 4" often
  # enough that sampled groups hold both right and wrong answers.
  c.sft.update({"steps": 60, "learning_rate": 3e-2, "problems_per_step": 4})
  c.rl.update({"steps": 1, "learning_rate": 3e-3, "problems_per_step": 2, "group_size": 8})
  # One row per micro-batch: the 4 SFT examples pack into one row, and rows are padded to a
  # multiple of the micro-batch size (4 rows would unembed 4x the loss positions: ~1.3 s/step).
  c.train.micro_batch_size = 1
  spec = config_lib.to_spec(c)
  sft_spec, rl_spec = spec.stages
  exp = Experiment(spec)
  trainer = Trainer(exp)
  ctx = base.Context(exp=exp, trainer=trainer, workdir=str(tmp_path / "wd"))
  state = kinds.make_stage(sft_spec).run(ctx, trainer.initial_state())
  stage = rollout.RLStage(rl_spec)
  for step in range(10):   # The first step whose groups carry a signal.
    problems, seed = stage.problems(exp, step=step, stage_index=1)
    got = stage.collect(exp, exp.sampling_params(state), problems, seed, first_problem=0)
    exs, adv = examples.rl_examples(got.conversations, rl_spec.group_size, rl_spec.adv_eps)
    if exs:
      break
  assert exs, "tiny never earned a reward after SFT"
  assert (adv > 0).any() and (adv < 0).any()
  # Scored one conversation per row (plain), so row i is example i; training packs rows.
  batch = trainer.batch(exs, needs_old_logprobs=False, plain=True)
  score = lambda s: np.asarray(trainer._logprobs(exp.model, s.full_params(), batch, rl_spec.train))
  before = score(state)
  state, m = trainer.train(state, exs, rl_spec.train, learning_rate=rl_spec.train.learning_rate)
  assert m is not None and m["grad_norm"] > 0
  delta = ((score(state) - before) * np.asarray(batch.mask)).sum(axis=1)[:len(exs)]
  weights = np.asarray([e.weight for e in exs])
  assert delta[weights > 0].mean() > 0 and delta[weights < 0].mean() < 0, (delta, weights)


def test_iteration_rows_count_truncation_and_out_of_context(tmp_path):
  """train.max_len below the SFT examples' length: the row's truncated_rate > 0 and the cut tokens
  are counted; a KV cache that fits the opening but not a second turn: every RL and eval
  conversation ends out of context and the row / eval JSON's out_of_context_rate says so. Rows go through metrics.jsonl into the
  report's training table; transcripts carry student_tokens."""
  from sml_jax import evaluation
  from sml_jax.training.metrics import MetricsWriter
  c = tiny_test.get_config()
  c.train.max_len = 410               # the openings (few-shot demos) are ~400 tokens
  c.sampler.cache_length = 415        # room for the opening and one 8-token student turn only
  c.dialogue.qprime_q = 0.0
  c.sft.steps = c.rl.steps = 1
  spec = config_lib.to_spec(c)
  exp = Experiment(spec)
  writer = MetricsWriter(tmp_path, tensorboard=False, progress=False)
  ctx = base.Context(exp=exp, trainer=Trainer(exp), workdir=str(tmp_path), metrics=writer)
  state = ctx.trainer.initial_state()
  for i, s in enumerate(spec.stages):
    if s.kind in ("sft", "rl") or s.name == "eval_before":
      ctx.stage_index = i
      state = kinds.make_stage(s).run(ctx, state)
  writer.close()
  rows = {r["stage"]: r for r in evaluation.read_train_log(str(tmp_path))}

  i = next(i for i, s in enumerate(spec.stages) if s.kind == "sft")
  sft_examples = examples.reference_examples(
      kinds.make_stage(spec.stages[i]).problems(exp, 0, i)[0], exp.tokenizer, spec.dialogue.fewshot)
  lengths = np.array([len(e.ids) for e in sft_examples])
  assert (lengths > 410).any()
  assert rows["sft"]["truncated_rate"] == pytest.approx(np.mean(lengths > 410))
  assert rows["sft"]["time_compile_s"] > 0     # its first update compiled the step
  assert rows["sft"]["train_tokens_cut"] == float(np.maximum(lengths - 410, 0).sum()) > 0
  assert rows["sft"]["well_formed_rate"] is None    # no conversations: not measured

  convs = [json.loads(line) for line in
           (tmp_path / "rollouts" / "rl" / "step_00000.jsonl").read_text().splitlines()]
  assert convs and all(t["out_of_context"] for t in convs)
  assert all(t["student_tokens"] > 390 for t in convs)
  assert rows["rl"]["out_of_context_rate"] == 1.0
  assert "truncated_rate" in rows["rl"] and "train_tokens_cut" in rows["rl"]

  # The eval JSON: out of context counted; truncated_rate against the run's train.max_len.
  ev = evaluation.read_evals(str(tmp_path))["before_arithmetic"]
  assert ev["out_of_context_rate"] == 1.0 and ev["truncated_max_len"] == 410
  tokens = [t["student_tokens"] for t in evaluation.read_transcripts(str(tmp_path),
                                                                     "before_arithmetic")]
  assert ev["truncated_rate"] == pytest.approx(np.mean(np.array(tokens) > 410))
  evaluation.write_report(str(tmp_path))
  report = (tmp_path / "report.md").read_text()
  assert "mean truncated" in report
  sft_line = next(line for line in report.splitlines() if line.startswith("| sft |"))
  assert f"| {np.mean(lengths > 410):.3f} |" in sft_line


def test_conversation_stats_quality_rates():
  """Training rows: quality rates over the step's rollouts; a flag no transcript carries is None."""
  def t(flags, out_of_context, solved_turn=None):
    turns = [{"role": "user", "text": "q", "flags": {}}]
    turns += [{"role": "student", "text": "a", "flags": f} for f in flags]
    return {"problem_id": "p", "turns": turns, "solved": solved_turn is not None,
            "solved_turn": solved_turn, "reward": float(solved_turn is not None), "max_turns": 2,
            "num_student_turns": len(flags), "out_of_context": out_of_context}
  wf = {"well_formed": True, "format_failure": False, "demo_copy": False}
  bad = {"well_formed": False, "format_failure": True, "demo_copy": True}
  row = base.conversation_stats([t([wf, bad], True), t([wf], False, solved_turn=1),
                                 t([wf, wf], False), t([wf], False)])
  assert row["well_formed_rate"] == pytest.approx(5 / 6)
  assert row["format_failure_rate"] == row["demo_copy_rate"] == pytest.approx(1 / 6)
  assert row["out_of_context_rate"] == 0.25 and row["success_rate"] == 0.25
  assert "truncated_rate" not in row    # the iteration counts it over training examples
  old = t([{}], False)
  del old["out_of_context"]
  old = base.conversation_stats([old])
  assert old["well_formed_rate"] is None and old["out_of_context_rate"] is None


def test_hosts_other_than_process_0_answer_every_metrics_call_a_stage_makes():
  """Process 0 logs through `MetricsWriter`; the other hosts get the driver's `_NoMetrics`,
  which must answer every public method a stage may call (one it lacked, `start_progress`,
  crashed host 1 of the two-host run at its first training stage, hanging host 0)."""
  from sml_jax.stages import driver
  from sml_jax.training.metrics import MetricsWriter
  public = {n for n, v in vars(MetricsWriter).items() if callable(v) and not n.startswith("_")}
  assert public == {"write", "start_progress", "close"}
  assert all(callable(getattr(driver._NoMetrics, n, None)) for n in public)
  quiet = driver._NoMetrics()
  quiet.start_progress()
  assert quiet.write(3, {"loss": 1.0}) == {"loss": 1.0}
