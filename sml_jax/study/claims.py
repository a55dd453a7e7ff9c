"""The paper's five claims as paired comparisons over problems, with 95% bootstrap CIs.

    evals = {("online_sml", 0, "math"): transcripts, ...}      # (arm, seed, suite) -> transcripts
    rows = claim_rows(evals, eval_turns=10, train_turns=4)     # one `Claim` per claim (a)-(e)

Every measure is a ratio of sums over problems: a problem's numerator and denominator (e.g.
solved by turn k: 0/1 over 1; premature answers over answer attempts) are averaged over an arm's
seeds, then summed over problems. A difference between two arms resamples the same problems for
both (`bootstrap.ratio_diff_ci`: paired, 1,000 resamples, seeded), so it is exact about which
problems moved. Arms are compared on the problems both were evaluated on (the same ones by
construction: every eval runs with config.seed 0).

A claim's verdict reads its primary comparison's CI: "supported" when it excludes 0 in the
claimed direction, "contradicted" when it excludes 0 the other way, else "not shown".
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from sml_jax.evaluation import bootstrap
from sml_jax.evaluation import metrics as metrics_lib

Transcripts = Sequence[dict]
Evals = Mapping[tuple[str, int, str], Transcripts]
# A measure: transcript -> (numerator, denominator) of that conversation.
Measure = Callable[[dict], tuple[float, float]]


def solved_by(k: int) -> Measure:
  return lambda t: (float(t["solved"] and t["solved_turn"] <= k), 1.0)


def gain(k1: int, k2: int) -> Measure:
  """Solved by turn k2 but not by turn k1: success@k2 - success@k1."""
  return lambda t: (solved_by(k2)(t)[0] - solved_by(k1)(t)[0], 1.0)


def premature(t: dict) -> tuple[float, float]:
  c = metrics_lib.turn_counts(t)
  return float(c["premature"]), float(c["attempt"])


def questions(t: dict) -> tuple[float, float]:
  c = metrics_lib.turn_counts(t)
  return float(c["question"]), float(c["student"])


@dataclasses.dataclass(frozen=True)
class Estimate:
  value: float | None
  ci: list[float] | None
  n: int                           # problems


@dataclasses.dataclass(frozen=True)
class Comparison:
  measure: str                     # "success@10", "premature answer rate", ...
  arm: str
  ref: str                         # the arm it is compared with (usually base)
  arm_est: Estimate
  ref_est: Estimate
  diff: float | None               # arm - ref
  diff_ci: list[float] | None      # paired over problems


@dataclasses.dataclass(frozen=True)
class Claim:
  key: str                         # "a" .. "e"
  title: str
  primary: Comparison | None       # what the verdict reads (None: an arm or suite was not run)
  direction: int                   # +1: the claim says arm > ref; -1: arm < ref
  details: tuple[Comparison, ...]
  note: str = ""

  @property
  def verdict(self) -> str:
    if self.primary is None:
      return "not run"
    ci = self.primary.diff_ci
    if ci is None:
      return "undefined"
    lo, hi = sorted((ci[0] * self.direction, ci[1] * self.direction))   # -1 swaps the ends
    if lo > 0:
      return "supported"
    if hi < 0:
      return "contradicted"
    return "not shown (CI includes 0)"


def per_problem(runs: Sequence[Transcripts], measure: Measure) -> dict[tuple, tuple[float, float]]:
  """(task, problem id) -> (numerator, denominator) averaged over `runs` (an arm's seeds); only
  problems present in every run."""
  tables = []
  for transcripts in runs:
    table: dict[tuple, list[float]] = {}
    for t in transcripts:
      num, den = measure(t)
      acc = table.setdefault((t.get("task"), t["problem_id"]), [0.0, 0.0])
      acc[0] += num
      acc[1] += den
    tables.append(table)
  keys = set.intersection(*(set(t) for t in tables)) if tables else set()
  return {k: (float(np.mean([t[k][0] for t in tables])), float(np.mean([t[k][1] for t in tables])))
          for k in keys}


def _estimate(table: Mapping[tuple, tuple[float, float]], keys, counts) -> Estimate:
  num = np.array([table[k][0] for k in keys])
  den = np.array([table[k][1] for k in keys])
  value = float(num.sum() / den.sum()) if den.sum() else None
  ci = bootstrap.ratio_ci(counts, num, den) if keys and value is not None else None
  return Estimate(value, ci, len(keys))


def compare(evals: Evals, suite: str, arm: str, ref: str, measure: Measure,
            label: str, seed: int = 0) -> Comparison | None:
  """`arm` against `ref` on `suite` (None if either was not evaluated on it)."""
  runs = lambda name: [ts for (a, _, s), ts in sorted(evals.items()) if a == name and s == suite]
  if not runs(arm) or not runs(ref):
    return None
  ta, tb = per_problem(runs(arm), measure), per_problem(runs(ref), measure)
  keys = sorted(set(ta) & set(tb))
  counts = bootstrap.resample_counts(len(keys), seed=seed)
  ea, eb = _estimate(ta, keys, counts), _estimate(tb, keys, counts)
  diff, ci = None, None
  if keys and ea.value is not None and eb.value is not None:
    diff = ea.value - eb.value
    ci = bootstrap.ratio_diff_ci(counts, *(np.array([t[k][i] for k in keys])
                                           for t in (ta, tb) for i in (0, 1)))
  return Comparison(label, arm, ref, ea, eb, diff, ci)


def _all(*xs):
  return tuple(x for x in xs if x is not None)


def claim_rows(evals: Evals, eval_turns: int, train_turns: int) -> list[Claim]:
  """Claims (a)-(e) of issue 17 from the evals present (missing arms give "not run" rows)."""
  K, T = eval_turns, min(train_turns, eval_turns)
  s1, sK, gK = solved_by(1), solved_by(K), gain(1, K)
  c = lambda suite, arm, ref, m, label: compare(evals, suite, arm, ref, m, label)
  a = [c("math", "online_sml", "base", m, l)
       for m, l in ((s1, "success@1"), (sK, f"success@{K}"), (gK, f"gain success@{K} - success@1"))]
  b = [c("math", arm, ref, m, l) for arm, ref in (("offline_sml", "base"),
                                                   ("online_sml", "offline_sml"))
       for m, l in ((s1, "success@1"), (sK, f"success@{K}"), (gK, f"gain success@{K} - success@1"))]
  by_turn = [c("math", arm, "base", solved_by(k), f"success@{k}")
             for arm in ("offline_sml", "online_sml", "qprime_online_sml") for k in range(1, K + 1)]
  beyond = [c("math", arm, "base", gain(T, K), f"gain success@{K} - success@{T}")
            for arm in ("online_sml", "offline_sml", "qprime_online_sml")]
  d = [c("code", arm, "base", m, l) for arm in ("online_sml", "offline_sml", "qprime_online_sml")
       for m, l in ((s1, "code success@1"), (sK, f"code success@{K}"),
                    (gK, f"code gain success@{K} - success@1"))]
  d_back = [c("math", "code_online_sml", "base", m, l)
            for m, l in ((sK, f"math success@{K}"), (gK, f"math gain success@{K} - success@1"))]
  e = [c("sharded", arm, "base", m, l) for arm in ("online_sml", "qprime_online_sml")
       for m, l in ((premature, "premature answer rate"), (questions, "question rate"))]
  e_q = c("sharded", "qprime_online_sml", "online_sml", premature, "premature answer rate")
  e_primary = e[2] or e[0]   # Q-primed against base; without that arm, online_sml against base
  return [
      Claim("a", "learning from feedback (math, base vs online_sml)", a[2], +1, _all(*a)),
      Claim("b", "online > offline at equal rollout budget (math)", b[4], +1, _all(*b)),
      Claim("c", f"trained at <= {train_turns} turns, helps in longer dialogues (success by "
            f"turn k = 1..{K})", beyond[0], +1, _all(*beyond, *by_turn),
            note=f"primary: success gained after turn {T} (online_sml minus base)"),
      Claim("d", "transfer: math-trained students on the code family (test-output feedback)",
            d[1], +1, _all(*d, *d_back)),
      Claim("e", "underspecified (sharded) problems: fewer premature answers, more questions",
            e_primary, -1, _all(*e, e_q), note="primary: premature answer rate, "
            "qprime_online_sml (else online_sml) minus base (lower is the claim)"),
  ]
