"""Paired comparisons of two evaluations of the same problems (before/after, arm vs base).

Two evals of one problem set are not independent samples: the same problem is easy or hard in
both. The gain is therefore estimated per problem and bootstrapped over problems (a paired
bootstrap), which gives a much tighter and honest CI than comparing two unpaired CIs.

    d = paired_deltas(before, after, max_k=4)
    d.success_at_turn[0]      # PairedStat(delta, ci, gained, lost) for success by turn 1
    d.mean_reward             # same for the turn-discounted reward
    pick_pair(before, after)  # one problem whose outcome changed, for the console / report

Problems are matched by (task, problem_id); a problem present in only one eval is left out, and
repeats of a problem (LiC-style simulations) are averaged first. Pure numpy.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

from sml_jax.evaluation import bootstrap


@dataclasses.dataclass(frozen=True)
class PairedStat:
  """after - before for one per-problem statistic, with a paired percentile-bootstrap CI."""
  delta: float
  ci: tuple[float, float] | None
  gained: int        # problems where the statistic went up
  lost: int          # problems where it went down


@dataclasses.dataclass(frozen=True)
class PairedDeltas:
  num_problems: int
  success_at_turn: tuple[PairedStat, ...]     # [K]: success by turn k = 1..K
  success: PairedStat                         # solved at any turn
  mean_reward: PairedStat


def _key(t: dict) -> tuple[str, str]:
  return str(t.get("task")), str(t["problem_id"])


def _per_problem(transcripts: Sequence[dict], max_k: int) -> dict[tuple[str, str], np.ndarray]:
  """(task, problem_id) -> [K + 2]: success by turn 1..K, solved, reward, averaged over repeats."""
  rows: dict[tuple[str, str], list[np.ndarray]] = collections.defaultdict(list)
  ks = np.arange(1, max_k + 1)
  for t in transcripts:
    turn = t.get("solved_turn") or 0
    by_k = ((turn <= ks) if t["solved"] else np.zeros(max_k, bool)).astype(np.float64)
    rows[_key(t)].append(np.concatenate([by_k, [float(bool(t["solved"])), float(t["reward"])]]))
  return {k: np.mean(v, axis=0) for k, v in rows.items()}


def paired_deltas(before: Sequence[dict], after: Sequence[dict], max_k: int | None = None, *,
                  n_resamples: int = bootstrap.N_RESAMPLES, seed: int = 0,
                  level: float = bootstrap.LEVEL) -> PairedDeltas:
  """after - before on the problems both evals share, CIs from resampling those problems."""
  if max_k is None:
    max_k = max((t["max_turns"] for t in [*before, *after]), default=1)
  b, a = _per_problem(before, max_k), _per_problem(after, max_k)
  shared = sorted(set(b) & set(a))
  if not shared:
    raise ValueError("the two evals share no (task, problem_id): nothing to pair.")
  diff = np.stack([a[k] - b[k] for k in shared])                 # [n, K + 2]
  counts = bootstrap.resample_counts(len(shared), n_resamples, seed)
  cis = bootstrap.ratio_ci(counts, diff, level=level)            # K + 2 pairs

  def stat(j: int) -> PairedStat:
    ci = cis[j]
    return PairedStat(delta=float(diff[:, j].mean()), ci=tuple(ci) if ci else None,
                      gained=int((diff[:, j] > 0).sum()), lost=int((diff[:, j] < 0).sum()))

  return PairedDeltas(num_problems=len(shared),
                      success_at_turn=tuple(stat(j) for j in range(max_k)),
                      success=stat(max_k), mean_reward=stat(max_k + 1))


def pick_pair(before: Sequence[dict], after: Sequence[dict]) -> tuple[dict, dict] | None:
  """A (before, after) transcript pair on one problem: one that training turned from unsolved
  to solved if any, else one it turned the other way, else the first shared problem. The choice
  is the first in (task, problem_id) order, not the most flattering."""
  b = {_key(t): t for t in before}
  a = {_key(t): t for t in after}
  shared = sorted(set(b) & set(a))
  if not shared:
    return None
  for want in ((False, True), (True, False)):
    for k in shared:
      if (bool(b[k]["solved"]), bool(a[k]["solved"])) == want:
        return b[k], a[k]
  return b[shared[0]], a[shared[0]]


def format_dialogue(t: dict, width: int = 100) -> str:
  """A transcript as console text: the problem (the last paragraph of the first user turn), then
  one line per turn."""
  lines = []
  for i, turn in enumerate(t["turns"]):
    text = " ".join(str(turn["text"]).split())
    if turn["role"] == "user":
      text = str(turn["text"]).strip().split("\n\n")[-1] if i == 0 else text
      text = " ".join(text.split())
    if len(text) > width:
      text = text[:width - 1] + "…"
    lines.append(f"  {turn['role']:>7}: {text}")
  outcome = f"solved at turn {t['solved_turn']}" if t["solved"] else "not solved"
  return "\n".join(lines + [f"  ({outcome}, reward {t['reward']:.3f})"])
