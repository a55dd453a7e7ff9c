"""Evaluation metrics on hand-written transcripts, checked against hand computation."""

import numpy as np
import pytest

from sml_jax.evaluation import bootstrap
from sml_jax.evaluation import metrics

S_ATTEMPT = {"attempt": True}
S_CORRECT = {"attempt": True, "correct": True}
S_QUESTION = {"question": True}
T_PLAIN, T_LEAK, T_SHARD = {}, {"leak": True}, {"shard": True}


def conv(pid, turns, *, max_turns=4, repeat=0, task="gsm8k", gamma=0.7, **extra):
  """A transcript from [("student"|"teacher", flags), ...]; solved_turn from the `correct` flag."""
  out = [{"role": "user", "text": f"problem {pid}", "flags": {}}]
  solved_turn, k = None, 0
  for role, flags in turns:
    k += role == "student"
    out.append({"role": role, "text": f"{role} says something", "flags": dict(flags)})
    if role == "student" and flags.get("correct") and solved_turn is None:
      solved_turn = k
  return {"problem_id": pid, "task": task, "domain": "math", "teacher": "scripted",
          "max_turns": max_turns, "repeat": repeat, "turns": out, "solved": solved_turn is not None,
          "solved_turn": solved_turn, "num_student_turns": k,
          "reward": 0.0 if solved_turn is None else gamma ** (solved_turn - 1), **extra}


def four_conversations():
  s, t = "student", "teacher"
  return [
      conv("a", [(s, S_CORRECT)]),                                                     # solved at 1
      conv("b", [(s, S_ATTEMPT), (t, T_PLAIN), (s, S_QUESTION), (t, T_LEAK), (s, S_CORRECT)]),  # at 3
      conv("c", [(s, S_ATTEMPT), (t, T_PLAIN), (s, S_ATTEMPT), (t, T_PLAIN), (s, S_QUESTION),
                 (t, T_PLAIN), (s, S_ATTEMPT)]),                                       # unsolved, 4 turns
      conv("d", [(s, S_ATTEMPT), (t, T_PLAIN), (s, S_ATTEMPT)], max_turns=2),          # unsolved, 2 turns
  ]


def test_metrics_match_hand_computation():
  m = metrics.compute_metrics(four_conversations())
  assert m["num_conversations"] == 4 and m["max_k"] == 4
  assert m["success_at_turn"] == [0.25, 0.25, 0.5, 0.5]
  assert m["single_turn_accuracy"] == 0.25
  assert m["success_rate"] == 0.5 and m["num_solved"] == 2
  assert m["mean_turns_to_success"] == 2.0                      # (1 + 3) / 2
  assert m["mean_reward"] == pytest.approx((1.0 + 0.49) / 4)
  assert m["mean_student_turns"] == 2.5                         # (1 + 3 + 4 + 2) / 4
  assert m["question_rate"] == pytest.approx(2 / 10)            # b, c ask once; 10 student turns
  assert m["teacher_leak_rate"] == pytest.approx(1 / 6)         # 0 + 2 + 3 + 1 teacher turns
  assert m["premature_answer_rate"] is None and m["num_underspecified"] == 0
  assert m["lic_mean_p"] is None and m["lic_num_problems"] == 0  # every problem simulated once
  for key in ("single_turn_accuracy", "success_rate", "mean_reward", "question_rate", "teacher_leak_rate"):
    lo, hi = m[f"{key}_ci"]
    assert lo <= m[key] <= hi, key
  assert len(m["success_at_turn_ci"]) == 4
  assert m["single_turn_accuracy_ci"] == m["success_at_turn_ci"][0]


def test_horizon_beyond_and_below_max_turns():
  convs = four_conversations()
  # K = 6 > every max_turns: stopped conversations keep their outcome (d stays unsolved).
  assert metrics.compute_metrics(convs, max_k=6)["success_at_turn"] == [0.25, 0.25, 0.5, 0.5, 0.5, 0.5]
  assert metrics.compute_metrics(convs, max_k=2)["success_at_turn"] == [0.25, 0.25]
  # K defaults to the largest max_turns present.
  assert metrics.compute_metrics(convs[3:])["success_at_turn"] == [0.0, 0.0]


def test_no_conversations():
  m = metrics.compute_metrics([])
  assert m["num_conversations"] == 0 and m["success_at_turn"] == [] and m["success_at_turn_ci"] == []
  for key in ("single_turn_accuracy", "mean_turns_to_success", "mean_reward", "question_rate",
              "teacher_leak_rate", "premature_answer_rate", "lic_mean_p"):
    assert m[key] is None and m[f"{key}_ci"] is None, key
  m = metrics.compute_metrics([], max_k=3)
  assert m["success_at_turn"] == [None] * 3 and m["success_at_turn_ci"] == [None] * 3


def test_none_solved():
  convs = four_conversations()[2:]
  m = metrics.compute_metrics(convs)
  assert m["success_at_turn"] == [0.0] * 4 and m["single_turn_accuracy"] == 0.0
  assert m["single_turn_accuracy_ci"] == [0.0, 0.0]
  assert m["mean_turns_to_success"] is None and m["mean_turns_to_success_ci"] is None
  assert m["mean_reward"] == 0.0 and m["num_solved"] == 0


def test_premature_answers_on_underspecified_conversations():
  s, t = "student", "teacher"
  convs = [
      conv("u1", [(s, {"attempt": True, "premature": True}), (t, T_SHARD), (s, S_QUESTION),
                  (t, T_SHARD), (s, S_CORRECT)]),
      # An answer the verifier extracted but the classifier did not call an attempt: still one.
      conv("u2", [(s, S_QUESTION), (t, T_SHARD), (s, {"attempt": False, "premature": True}),
                  (t, T_SHARD), (s, S_ATTEMPT)]),
      conv("u3", [(s, S_QUESTION), (t, T_SHARD), (s, S_ATTEMPT)]),
      conv("u4", [(s, S_QUESTION)], max_turns=1, underspecified=True),  # marked, no flags at all
      conv("full", [(s, S_ATTEMPT), (t, T_PLAIN), (s, S_ATTEMPT)]),     # not sharded: not counted
  ]
  m = metrics.compute_metrics(convs)
  assert m["num_underspecified"] == 4
  assert m["premature_answer_rate"] == pytest.approx(2 / 5)      # attempts: u1 2, u2 2, u3 1
  assert m["premature_conversation_rate"] == pytest.approx(2 / 4)
  assert m["question_rate"] == pytest.approx(4 / 11)            # student turns: 3 + 3 + 2 + 1 + 2
  lo, hi = m["premature_answer_rate_ci"]
  assert 0 <= lo <= 0.4 <= hi <= 1


def test_lost_in_conversation_summary():
  s = "student"
  win, lose = [(s, S_CORRECT)], [(s, S_ATTEMPT)]
  convs = ([conv("p1", win if r == 0 else lose, repeat=r) for r in range(4)]    # S = 100, 0, 0, 0
           + [conv("p2", win, repeat=0), conv("p2", lose, repeat=1)]            # S = 100, 0
           + [conv("p2", win, task="mbpp")]                                     # another task: once
           + [conv("p3", win)])                                                 # once: left out
  m = metrics.compute_metrics(convs)
  # p1: sorted [0, 0, 0, 100] -> P 25, p90 = 70 (index 2.7), p10 = 0; p2: P 50, p90 90, p10 10.
  assert m["lic_num_problems"] == 2 and m["lic_mean_repeats"] == 3.0
  assert m["lic_mean_p"] == pytest.approx((25 + 50) / 2)
  assert m["lic_aptitude"] == pytest.approx((70 + 90) / 2)
  assert m["lic_unreliability"] == pytest.approx((70 + 80) / 2)
  lo, hi = m["lic_mean_p_ci"]                      # resampling 2 problems: means of {25, 50}
  assert 25 <= lo <= hi <= 50
  # Success metrics still count every simulation as a conversation.
  assert m["num_conversations"] == 8 and m["success_rate"] == pytest.approx(4 / 8)


def test_bootstrap_is_seeded_and_calibrated():
  x = (np.random.default_rng(1).random(400) < 0.3).astype(float)
  counts = bootstrap.resample_counts(400, 2000, seed=0)
  assert counts.shape == (2000, 400) and (counts.sum(1) == 400).all()
  lo, hi = bootstrap.ratio_ci(counts, x)
  assert lo < x.mean() < hi
  half = 1.96 * np.sqrt(x.mean() * (1 - x.mean()) / 400)    # normal approximation
  assert hi - lo == pytest.approx(2 * half, rel=0.15)
  assert bootstrap.ratio_ci(bootstrap.resample_counts(400, 2000, seed=0), x) == [lo, hi]
  assert bootstrap.ratio_ci(bootstrap.resample_counts(400, 2000, seed=1), x) != [lo, hi]
  m1, m2 = (metrics.compute_metrics(four_conversations()) for _ in range(2))
  assert m1 == m2


def test_bootstrap_drops_undefined_resamples():
  counts = bootstrap.resample_counts(2, 500, seed=0)
  assert bootstrap.ratio_ci(counts, [1.0, 0.0], [1.0, 0.0]) == [1.0, 1.0]   # defined only with unit 0
  assert bootstrap.ratio_ci(counts, [0.0, 0.0], [0.0, 0.0]) is None
  with pytest.raises(ValueError, match="disagree"):
    bootstrap.ratio_ci(counts, [1.0, 0.0, 1.0])


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.pop("reward"), "missing keys"),
    (lambda t: t["turns"].append({"role": "assistant", "text": ""}), "role in"),
    (lambda t: t.update(solved_turn=None), "solved_turn"),
    (lambda t: t.update(solved_turn=5), r"in \[1, 3\]"),
    (lambda t: t.update(solved=False), "must be null"),
    (lambda t: t.update(max_turns=0), "max_turns"),
    (lambda t: t["turns"][1]["flags"].update(well_formed="yes"), "well_formed"),
    (lambda t: t["turns"][2]["flags"].update(demo_copy=1), "demo_copy"),
    (lambda t: t.update(out_of_context="no"), "out_of_context"),
    (lambda t: t.update(student_tokens=-1), "student_tokens"),
])
def test_malformed_transcripts_are_rejected(mutate, message):
  t = four_conversations()[1]
  mutate(t)
  with pytest.raises(ValueError, match=message):
    metrics.compute_metrics([four_conversations()[0], t])


def test_bad_max_k_and_max_len():
  with pytest.raises(ValueError, match="max_k"):
    metrics.compute_metrics(four_conversations(), max_k=0)
  with pytest.raises(ValueError, match="max_len"):
    metrics.compute_metrics(four_conversations(), max_len=0)


QUALITY = ("well_formed_rate", "format_failure_rate", "demo_copy_rate", "out_of_context_rate",
           "truncated_rate")


def test_quality_rates_are_not_measured_on_old_transcripts():
  """Transcripts without the quality flags (written before they existed): every quality rate is
  None (not measured), not 0, and the keys are there."""
  m = metrics.compute_metrics(four_conversations(), max_len=10)
  for key in QUALITY:
    assert key in m and m[key] is None and m[f"{key}_ci"] is None, key
  assert m["truncated_max_len"] == 10
  assert metrics.compute_metrics([])["truncated_rate"] is None


def quality_conversations():
  s, t = "student", "teacher"
  good = {"attempt": True, "well_formed": True, "format_failure": False, "demo_copy": False}
  bare = {"attempt": True, "well_formed": False, "format_failure": True, "demo_copy": False}
  copy = {"question": True, "well_formed": True, "format_failure": False, "demo_copy": True}
  t_copy, t_ok = {"demo_copy": True}, {"demo_copy": False}
  return [
      conv("a", [(s, bare), (t, t_copy), (s, copy), (t, t_ok), (s, {**good, "correct": True})],
           out_of_context=False, student_tokens=120),
      conv("b", [(s, bare), (t, t_ok), (s, good)], max_turns=2, out_of_context=False,
           student_tokens=90),
      conv("c", [(s, good), (t, t_ok)], out_of_context=True, student_tokens=300),
      # An old transcript among new ones: its turns and its conversation are not counted.
      conv("old", [(s, S_ATTEMPT), (t, T_PLAIN), (s, S_ATTEMPT)]),
  ]


def test_quality_rates_match_hand_computation():
  m = metrics.compute_metrics(quality_conversations(), max_len=100)
  # Student turns with the flags: a 3, b 2, c 1 -> 6; well-formed: all but the two bare ones.
  assert m["well_formed_rate"] == pytest.approx(4 / 6)
  assert m["format_failure_rate"] == pytest.approx(2 / 6)
  # demo_copy over turns of any party: 6 student + 4 teacher turns; copies: a's question and a's
  # first teacher reply.
  assert m["demo_copy_rate"] == pytest.approx(2 / 10)
  assert m["out_of_context_rate"] == pytest.approx(1 / 3)          # "old" carries no such key
  assert m["truncated_rate"] == pytest.approx(2 / 3)               # 120 and 300 > 100
  assert m["truncated_max_len"] == 100
  for key in QUALITY:
    lo, hi = m[f"{key}_ci"]
    assert 0 <= lo <= m[key] <= hi <= 1, key
  # No max_len: truncation is not measured, the other rates are unchanged.
  m2 = metrics.compute_metrics(quality_conversations())
  assert m2["truncated_rate"] is None and m2["truncated_max_len"] is None
  assert m2["well_formed_rate"] == m["well_formed_rate"]
  # The training rows' rates (no CIs) are the same numbers.
  q = metrics.quality_rates(quality_conversations(), max_len=100)
  assert q == {key: m[key] for key in QUALITY}
