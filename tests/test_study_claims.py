"""The study's paired comparisons (sml_jax/study/claims.py) and the paired bootstrap CI."""

import numpy as np
import pytest

from sml_jax.evaluation import bootstrap
from sml_jax.study import claims


def _conv(pid, solved_turn=None, turns=4, task="arithmetic", student_flags=()):
  """A transcript: `turns` student turns (flags per turn from `student_flags`), solved at
  `solved_turn` (None: unsolved)."""
  ts = [{"role": "user", "text": "q", "flags": {}}]
  n = solved_turn or turns
  for i in range(n):
    flags = dict(student_flags[i]) if i < len(student_flags) else {}
    ts.append({"role": "student", "text": "a", "flags": flags})
    if i + 1 < n:
      ts.append({"role": "teacher", "text": "hint", "flags": {}})
  return {"problem_id": pid, "task": task, "turns": ts, "solved": solved_turn is not None,
          "solved_turn": solved_turn, "reward": 0.7 ** (solved_turn - 1) if solved_turn else 0.0,
          "max_turns": turns}


def test_ratio_diff_ci_matches_a_direct_resample():
  rng = np.random.default_rng(1)
  n = 30
  na, nb = rng.integers(0, 2, n), rng.integers(0, 2, n)
  da, db = np.ones(n), np.ones(n)
  counts = bootstrap.resample_counts(n, 500, seed=3)
  ci = bootstrap.ratio_diff_ci(counts, na, da, nb, db)
  direct = [(c @ na) / n - (c @ nb) / n for c in counts]
  assert ci == pytest.approx(list(np.percentile(direct, [2.5, 97.5])))
  with pytest.raises(ValueError, match="disagree"):
    bootstrap.ratio_diff_ci(counts, na[:3], da[:3], nb[:3], db[:3])


def test_learning_from_feedback_is_supported_when_the_arm_solves_later_turns():
  n = 40
  base = [_conv(f"p{i}", 1 if i < 4 else None) for i in range(n)]
  # The trained arm: the same turn-1 successes plus 20 problems solved at turn 3.
  online = [_conv(f"p{i}", 1 if i < 4 else (3 if i < 24 else None)) for i in range(n)]
  rows = claims.claim_rows({("base", 0, "math"): base, ("online_sml", 0, "math"): online},
                           eval_turns=4, train_turns=4)
  a = rows[0]
  assert a.key == "a" and a.verdict == "supported"
  assert a.primary.measure == "gain success@4 - success@1"
  assert a.primary.arm_est.value == pytest.approx(0.5) and a.primary.ref_est.value == 0.0
  assert a.primary.diff == pytest.approx(0.5) and a.primary.diff_ci[0] > 0
  assert rows[1].verdict == "not run"    # (b) needs offline_sml


def test_identical_arms_are_not_shown_and_worse_is_contradicted():
  n = 30
  base = [_conv(f"p{i}", 2 if i % 3 == 0 else None) for i in range(n)]
  same = claims.compare({("base", 0, "math"): base, ("online_sml", 0, "math"): base}, "math",
                        "online_sml", "base", claims.solved_by(4), "s@4")
  assert same.diff == 0.0 and same.diff_ci == [0.0, 0.0]
  worse = [_conv(f"p{i}", None) for i in range(n)]
  rows = claims.claim_rows({("base", 0, "math"): base, ("online_sml", 0, "math"): worse},
                           eval_turns=4, train_turns=4)
  assert rows[0].verdict == "contradicted"


def test_seeds_are_averaged_per_problem_and_pairing_uses_common_problems():
  base = [_conv("p0", None), _conv("p1", None), _conv("p2", 1)]
  s0 = [_conv("p0", 2), _conv("p1", None), _conv("p2", 1)]
  s1 = [_conv("p0", None), _conv("p1", None), _conv("p2", 1), _conv("extra", 1)]
  c = claims.compare({("base", 0, "math"): base, ("online_sml", 0, "math"): s0,
                      ("online_sml", 1, "math"): s1}, "math", "online_sml", "base",
                     claims.solved_by(4), "s@4")
  assert c.arm_est.n == 3                       # "extra" is not in seed 0 nor the base
  assert c.arm_est.value == pytest.approx((0.5 + 0 + 1) / 3)
  assert c.diff == pytest.approx(0.5 / 3)


def test_premature_answers_and_questions_on_sharded_problems():
  prem = {"attempt": True, "premature": True}
  ask = {"question": True}
  n = 30
  base = [_conv(f"s{i}", None, turns=3, task="gsm8k_sharded", student_flags=[prem, prem, prem])
          for i in range(n)]
  qprime = [_conv(f"s{i}", None, turns=3, task="gsm8k_sharded",
                  student_flags=[ask, ask, {"attempt": True}]) for i in range(n)]
  rows = claims.claim_rows({("base", 0, "sharded"): base,
                            ("qprime_online_sml", 0, "sharded"): qprime},
                           eval_turns=3, train_turns=4)
  e = rows[4]
  assert e.primary.measure == "premature answer rate"
  assert e.primary.ref_est.value == 1.0 and e.primary.arm_est.value == 0.0
  assert e.verdict == "supported"               # lower is the claim
  q = [c for c in e.details if c.measure == "question rate"][0]
  assert q.arm_est.value == pytest.approx(2 / 3) and q.diff == pytest.approx(2 / 3)


@pytest.mark.parametrize("ci, direction, verdict", [
    ([+0.022, +0.268], -1, "contradicted"),        # claimed lower, clearly higher
    ([-0.048, +0.126], -1, "not shown (CI includes 0)"),   # the qprime row of Dec 5
    ([-0.200, -0.010], -1, "supported"),
    ([+0.015, +0.075], +1, "supported"),
    ([-0.090, +0.050], +1, "not shown (CI includes 0)"),
    ([-0.090, -0.010], +1, "contradicted"),
])
def test_verdict_reads_the_ci_in_the_claimed_direction(ci, direction, verdict):
  """A CI that straddles 0 is "not shown" whichever direction the claim has (with -1 the flipped
  ends swap; reading them unsorted called [-0.048, +0.126] "supported" for a lower-is-better
  claim)."""
  est = claims.Estimate(value=0.0, ci=None, n=32)
  comp = claims.Comparison(measure="m", arm="a", ref="b", arm_est=est, ref_est=est, diff=0.0,
                           diff_ci=ci)
  assert claims.Claim("e", "t", comp, direction, (comp,)).verdict == verdict
