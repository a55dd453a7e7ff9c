"""Seeded percentile-bootstrap confidence intervals for ratios of sums.

Every metric here is a ratio of sums over units (conversations, or problems for the LiC summary):
rate = sum_i num_i / sum_i den_i (a plain mean is den_i = 1). One bootstrap resample draws n
units with replacement; representing it by how often each unit was drawn (a multinomial count
vector c, [n]) turns each resampled statistic into (c @ num) / (c @ den), so all metrics share
the same resamples and a whole batch is one matmul.

Hand-written rather than `scipy.stats.bootstrap`, which returns NaN as soon as one resample's
statistic is undefined (e.g. no solved conversation in the resample for mean turns to success)
and refuses a single unit; here undefined resamples are dropped.
"""

from __future__ import annotations

import numpy as np

N_RESAMPLES = 1000
LEVEL = 0.95


def resample_counts(n: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
  """How often each of n units is drawn in each resample: int64 [n_resamples, n], rows sum to n."""
  if n <= 0:
    return np.zeros((n_resamples, 0), np.int64)
  rng = np.random.default_rng(seed)
  return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples)


def ratio_ci(counts: np.ndarray, num, den=None, level: float = LEVEL):
  """Percentile CI of sum(num) / sum(den) under the resamples `counts` [B, n].

  num, den: [n] or [n, K] (den defaults to ones: the mean of num). Returns [lo, hi] for [n]
  inputs, a list of K such pairs for [n, K]; None (or None items) when the statistic is
  undefined in every resample (e.g. no units, or den all zero).
  """
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}.")
  num = np.asarray(num, np.float64)
  den = np.ones_like(num) if den is None else np.asarray(den, np.float64)
  if num.shape != den.shape or num.shape[:1] != counts.shape[1:]:
    raise ValueError(f"num {num.shape}, den {den.shape} and counts {counts.shape} disagree on units.")
  counts = counts.astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    stats = (counts @ num) / (counts @ den)            # [B] or [B, K]
  stats = stats.reshape(stats.shape[0], -1)           # [B, K]
  q = [50 * (1 - level), 50 * (1 + level)]
  cis = []
  for col in stats.T:
    col = col[np.isfinite(col)]
    cis.append(None if col.size == 0 else [float(v) for v in np.percentile(col, q)])
  return cis if num.ndim == 2 else cis[0]


def ratio_diff_ci(counts: np.ndarray, num_a, den_a, num_b, den_b, level: float = LEVEL):
  """Paired percentile CI of sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b): both ratios are taken
  over the same resampled units (`counts` [B, n]), e.g. the same problems under two models.
  All inputs [n]. Returns [lo, hi], or None when undefined in every resample."""
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}.")
  arrays = [np.asarray(x, np.float64) for x in (num_a, den_a, num_b, den_b)]
  if any(x.shape != counts.shape[1:] for x in arrays):
    raise ValueError(f"inputs {[x.shape for x in arrays]} and counts {counts.shape} disagree on units.")
  c = counts.astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    diff = (c @ arrays[0]) / (c @ arrays[1]) - (c @ arrays[2]) / (c @ arrays[3])   # [B]
  diff = diff[np.isfinite(diff)]
  if diff.size == 0:
    return None
  return [float(v) for v in np.percentile(diff, [50 * (1 - level), 50 * (1 + level)])]
