"""Eval files, report.md, PNG plots and the HTML viewer contain what they claim."""

import html.parser
import json
import os

import numpy as np
import pytest
from matplotlib import image as mpimg

from sml_jax import evaluation
from sml_jax.evaluation import plots
from sml_jax.evaluation import store

EVIL = "<script>alert('x')</script>"


def conv(pid, solved_turn, max_turns=4, repeat=0, text="I think it is 5."):
  """A transcript that is solved at `solved_turn` (None: fails every turn)."""
  turns = [{"role": "user", "text": f"Problem {pid}: 2 + 3 = ? {EVIL}", "flags": {}}]
  for k in range(1, (solved_turn or max_turns) + 1):
    if k > 1:
      turns.append({"role": "teacher", "text": "Check the addition.", "flags": {"leak": False}})
    correct = k == solved_turn
    turns.append({"role": "student", "text": "5" if correct else text,
                  "flags": {"attempt": True, "question": False, "correct": correct}})
  return {"problem_id": pid, "task": "gsm8k", "domain": "math", "teacher": "scripted",
          "max_turns": max_turns, "repeat": repeat, "turns": turns, "solved": solved_turn is not None,
          "solved_turn": solved_turn, "num_student_turns": solved_turn or max_turns,
          "reward": 0.7 ** (solved_turn - 1) if solved_turn else 0.0}


def before_after(workdir):
  """before: 1 of 4 solved at turn 1; after: 3 of 4 solved at turn 1 (one also fails)."""
  before = [conv("p0", 1), conv("p1", None, text=EVIL), conv("p2", None), conv("p3", 3)]
  after = [conv("p0", 1), conv("p1", 1), conv("p2", 1), conv("p3", None)]
  evaluation.write_eval(workdir, "before_gsm8k", before, extra={"model": "gemma3_270m", "checkpoint": None})
  evaluation.write_eval(workdir, "after_gsm8k", after, extra={"model": "gemma3_270m", "checkpoint": "ckpt/7"})
  return before, after


def write_train_log(workdir):
  rows = [{"step": s, "stage": "qprime_sft", "loss": 2.0 - 0.1 * s, "tokens_per_s": 50.0,
           "time_training_s": 1.5, "truncated_rate": 0.2, "well_formed_rate": None}
          for s in range(5)]
  rows += [{"step": s, "stage": "rl", "loss": 0.1, "reward_mean": 0.1 * s, "success_rate": 0.1 * s,
            "well_formed_rate": 0.5 + 0.05 * s, "truncated_rate": 0.0,
            "tokens_per_s": 20.0, "time_sampling_s": 3.0, "time_training_s": 2.0} for s in range(6)]
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
    f.write('{"step": 6, "stage": "r')                  # a writer mid-line: ignored
  return rows


def assert_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  img = mpimg.imread(path)
  assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
  assert img[..., :3].std() > 0.05                       # not a blank canvas


def test_write_eval_files(tmp_path):
  before, _ = before_after(str(tmp_path))
  with open(tmp_path / "eval" / "before_gsm8k.json") as f:
    m = json.load(f)
  assert m["name"] == "before_gsm8k" and m["model"] == "gemma3_270m" and m["checkpoint"] is None
  assert m["success_at_turn"] == [0.25, 0.25, 0.5, 0.5] and m["num_conversations"] == 4
  for key in ("single_turn_accuracy", "premature_answer_rate", "question_rate", "teacher_leak_rate"):
    assert key in m
  assert store.read_transcripts(str(tmp_path), "before_gsm8k") == before
  assert set(store.read_evals(str(tmp_path))) == {"before_gsm8k", "after_gsm8k"}


def test_write_eval_rejects_bad_input(tmp_path):
  with pytest.raises(ValueError, match="Eval name"):
    evaluation.write_eval(str(tmp_path), "../escape", [conv("p", 1)])
  with pytest.raises(ValueError, match="collide"):
    evaluation.write_eval(str(tmp_path), "x", [conv("p", 1)], extra={"mean_reward": 1.0})
  with pytest.raises(ValueError, match="missing keys"):
    evaluation.write_eval(str(tmp_path), "x", [{"problem_id": "p"}])
  assert not (tmp_path / "eval" / "x.json").exists()


def test_pair_names():
  pairs, singles = store.pair_names(["after_a", "before_a", "before_b", "transfer", "after_c"])
  assert pairs == [("a", "before_a", "after_a")]
  assert singles == ["after_c", "before_b", "transfer"]


def test_report_table_plots_and_viewer(tmp_path):
  workdir = str(tmp_path)
  before_after(workdir)
  write_train_log(workdir)
  table = evaluation.write_report(workdir)

  # The table has the hand-computed numbers: before 1/4 -> after 3/4 at turn 1, 2/4 -> 3/4 at turn 4.
  row1 = next(line for line in table.splitlines() if "single-turn accuracy" in line)
  cells = [c.strip() for c in row1.strip("|").split("|")]
  assert cells[0] == "gsm8k" and cells[2].startswith("0.250 [") and cells[3].startswith("0.750 [")
  # Paired over the 4 problems: p1, p2 gained at turn 1; p3 (solved at turn 3 before) lost by turn 4.
  assert cells[4].startswith("+0.500 [") and cells[4].endswith("(2 up, 0 down)")
  row4 = next(line for line in table.splitlines() if "success by turn 4" in line)
  assert "0.500 [" in row4 and "0.750 [" in row4 and "+0.250 [" in row4 and "(2 up, 1 down)" in row4
  assert "mean turns to success | 2.000 [" in table                     # before: (1 + 3) / 2
  assert "premature" not in table                                       # undefined: row dropped
  assert "well-formed" not in table and "out of context" not in table   # not measured: dropped

  report = (tmp_path / "report.md").read_text()
  assert table in report and "checkpoint=ckpt/7" in report
  for png in ("success_by_turn.png", "rates.png", "training.png"):
    assert f"]({png})" in report
    assert_png(tmp_path / png)
  assert "| qprime_sft | 5 | 1.600 | – | – | – | 0.200 | 50.0 | – | 7.5 |" in report
  assert "| rl | 6 | 0.100 | 0.500 | 0.500 | 0.750 | 0.000 | 20.0 | 18.0 | 12.0 |" in report

  page = (tmp_path / "transcripts.html").read_text()
  html.parser.HTMLParser().feed(page)
  assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
  # Side by side: each problem has a before and an after column; improved ones come first.
  assert page.count('<div class="col"><h4>before_gsm8k</h4>') == 4
  assert page.count('<div class="col"><h4>after_gsm8k</h4>') == 4
  order = [page.index(f"<b>{p}</b>") for p in ("p1", "p2", "p3", "p0")]
  assert order == sorted(order)
  assert '<div class="turn teacher">' in page and '<span class="flag correct">correct</span>' in page


def test_report_without_pairs_or_training(tmp_path):
  workdir = str(tmp_path)
  (tmp_path / "rates.png").write_bytes(b"stale, from an earlier run")
  evaluation.write_eval(workdir, "mbpp_llm", [conv("p0", 2), conv("p1", None)])
  table = evaluation.write_report(workdir)
  assert table.splitlines()[0] == "| metric | mbpp_llm |"
  assert "| success by turn 1 (single-turn accuracy) | 0.000 [0.000, 0.000] |" in table
  assert "| success by turn 4 | 0.500 [" in table
  assert_png(tmp_path / "success_by_turn.png")
  assert not (tmp_path / "rates.png").exists() and not (tmp_path / "training.png").exists()
  assert "no training logged" in (tmp_path / "report.md").read_text()
  empty = tmp_path / "empty"
  empty.mkdir()
  assert "no evaluations" in evaluation.write_report(str(empty))
  assert "No evaluation transcripts" in (empty / "transcripts.html").read_text()


def test_training_steps_follow_restarted_stage_counters():
  log = [{"step": 0, "stage": "sft"}, {"step": 1, "stage": "sft"},
         {"step": 0, "stage": "rl"}, {"step": 1, "stage": "rl"}, {"step": 5, "stage": "eval"}]
  np.testing.assert_array_equal(plots.global_steps(log), [0, 1, 2, 3, 5])
  assert store.read_train_log("/nonexistent") == []


def test_evaluation_imports_no_jax():
  import subprocess
  import sys
  code = ("import sys, sml_jax.evaluation.report, sml_jax.evaluation as e; e.compute_metrics([]); "
          "assert not {'jax', 'gemma', 'tensorflow'} & set(sys.modules), sorted(sys.modules)")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def quality_conv(pid, solved_turn, well_formed, out_of_context=False, student_tokens=50):
  """`conv` with the dialogue-quality flags on every turn and the conversation fields."""
  t = conv(pid, solved_turn)
  for turn in t["turns"]:
    if turn["role"] == "student":
      turn["flags"].update(well_formed=well_formed, format_failure=not well_formed,
                           demo_copy=False)
    elif turn["role"] == "teacher":
      turn["flags"]["demo_copy"] = not well_formed
  return {**t, "out_of_context": out_of_context, "student_tokens": student_tokens}


def test_report_shows_quality_rows(tmp_path):
  """before: no well-formed turn, one copying teacher reply per exchange, one conversation out of
  context; after: all well-formed. Rows with CIs and a delta; rates.png gets the quality bars;
  transcripts.html marks the exceptions."""
  workdir = str(tmp_path)
  before = [quality_conv("p0", None, False, out_of_context=True, student_tokens=500),
            quality_conv("p1", 1, False)]
  after = [quality_conv("p0", 1, True), quality_conv("p1", 1, True)]
  mb = evaluation.write_eval(workdir, "before_gsm8k", before, max_len=100)
  evaluation.write_eval(workdir, "after_gsm8k", after, max_len=100)
  assert mb["well_formed_rate"] == 0.0 and mb["format_failure_rate"] == 1.0
  assert mb["demo_copy_rate"] == pytest.approx(3 / 8)    # 3 teacher turns copy; 5 student + 3
  assert mb["out_of_context_rate"] == 0.5 and mb["truncated_rate"] == 0.5
  table = evaluation.write_report(workdir)

  def row(label):
    return [c.strip() for c in next(line for line in table.splitlines()
                                    if f"| {label} |" in line).strip("|").split("|")]
  assert row("well-formed student turns")[2:] == ["0.000 [0.000, 0.000]", "1.000 [1.000, 1.000]",
                                                  "+1.000"]
  assert row("student answers without an anchor (format failures)")[4] == "-1.000"
  assert row("turns copying a demonstration")[2].startswith("0.375 [")
  assert row("conversations ended by the KV cache (out of context)")[2].startswith("0.500 [")
  assert row("conversations longer than train.max_len (cut if trained)")[2:] == [
      "0.500 [0.000, 1.000]", "0.000 [0.000, 0.000]", "-0.500"]
  assert "truncated_max_len" not in (tmp_path / "report.md").read_text().split("Runs:")[1]
  assert_png(tmp_path / "rates.png")
  page = (tmp_path / "transcripts.html").read_text()
  assert '<span class="flag not_well_formed">not well-formed</span>' in page
  assert '<span class="flag format_failure">format_failure</span>' in page
  assert '<span class="flag out_of_context">out of context</span>' in page
  assert "500 student-context tokens" in page


def test_training_plot_shows_well_formed_rate(tmp_path):
  log = write_train_log(str(tmp_path))
  assert [k for k, _ in plots.TRAIN_KEYS][:4] == ["reward_mean", "success_rate", "loss",
                                                   "well_formed_rate"]
  assert plots.plot_training(log, str(tmp_path / "t.png"))
  assert_png(tmp_path / "t.png")


def test_paired_deltas_match_by_problem_and_are_tighter_than_unpaired():
  from sml_jax.evaluation import paired
  # 40 problems; the same 20 are hard in both evals; training solves 6 more (at turn 1), loses 1.
  before = [conv(f"p{i}", 1 if i < 20 else None) for i in range(40)]
  after = [conv(f"p{i}", 1 if (i < 19 or 20 <= i < 26) else None) for i in range(40)]
  after.append(conv("only_after", 1))                      # unmatched: left out
  d = paired.paired_deltas(before, after, max_k=4)
  assert d.num_problems == 40
  s1 = d.success_at_turn[0]
  assert s1.delta == pytest.approx(5 / 40) and (s1.gained, s1.lost) == (6, 1)
  assert s1.ci[0] < s1.delta < s1.ci[1]
  # The unpaired CIs of the two rates overlap, while the paired CI of the gain excludes 0.
  mb = evaluation.compute_metrics(before, 4)
  ma = evaluation.compute_metrics(after[:40], 4)
  assert mb["success_at_turn_ci"][0][1] > ma["success_at_turn_ci"][0][0]
  assert s1.ci[0] > 0
  assert d.mean_reward.delta == pytest.approx(5 / 40)
  with pytest.raises(ValueError, match="share no"):
    paired.paired_deltas(before[:1], [conv("other", 1)])


def test_pick_pair_prefers_a_problem_training_changed():
  from sml_jax.evaluation import paired
  before = [conv("a", 1), conv("b", None), conv("c", 2)]
  after = [conv("a", 1), conv("b", 2), conv("c", None)]
  b, a = paired.pick_pair(before, after)
  assert b["problem_id"] == a["problem_id"] == "b"
  b, a = paired.pick_pair(before[2:], after[2:])           # only a loss: shown, not hidden
  assert (b["solved"], a["solved"]) == (True, False)
  text = paired.format_dialogue(a)
  assert text.splitlines()[0].strip().startswith("user: Problem c") and "not solved" in text
