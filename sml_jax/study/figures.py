"""The study's plots (matplotlib's object API on the Agg canvas, as `evaluation/plots.py`).

  success_by_turn.png  success by student turn k (k = 1..K) per arm, one panel per eval suite,
                       seeds pooled, 95% CI bands (bootstrap over conversations)
  training.png         reward, success, well-formed and format-failure rates over training
                       iterations, one line per (arm, seed)
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from sml_jax.evaluation import plots

TRAIN_KEYS = (("reward_mean", "mean reward"), ("success_rate", "success rate"),
              ("well_formed_rate", "well-formed student turns"),
              ("format_failure_rate", "format failures"), ("question_rate", "question rate"),
              ("demo_copy_rate", "demo copies"))


def plot_success_by_turn(metrics: Mapping[str, Mapping[str, dict]], path: str,
                         train_turns: int | None = None) -> str | None:
  """`metrics`: suite -> arm -> eval metrics (`compute_metrics` of its pooled transcripts)."""
  suites = [s for s in metrics if metrics[s]]
  if not suites:
    return None
  fig = Figure(figsize=(4.8 * min(len(suites), 3), 3.8), layout="constrained")
  for ax, suite in zip(plots._grid(fig, len(suites)), suites):  # pylint: disable=protected-access
    for i, (arm, m) in enumerate(metrics[suite].items()):
      plots._success_curve(ax, m, arm, f"C{i}")  # pylint: disable=protected-access
    if train_turns:
      ax.axvline(train_turns, color="k", lw=0.8, ls=":", label=f"training horizon ({train_turns})")
    ax.set(title=suite, xlabel="student turn k", ylabel="solved by turn k", ylim=(-0.02, 1.02))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
  fig.savefig(path, dpi=110)
  return path


def plot_training(logs: Mapping[str, Sequence[dict]], path: str) -> str | None:
  """`logs`: "<arm> seed<k>" -> its metrics.jsonl rows. None if nothing was logged."""
  keys = [(k, label) for k, label in TRAIN_KEYS
          if any(r.get(k) is not None for log in logs.values() for r in log)]
  if not keys:
    return None
  cols = min(len(keys), 3)
  fig = Figure(figsize=(4.4 * cols, 3.4 * -(-len(keys) // cols)), layout="constrained")
  for ax, (key, label) in zip(plots._grid(fig, len(keys), max_cols=cols), keys):  # pylint: disable=protected-access
    for i, (name, log) in enumerate(logs.items()):
      xs = plots.global_steps(log)
      ys = plots._finite([r.get(key) for r in log])  # pylint: disable=protected-access
      ok = np.isfinite(ys)
      if ok.any():
        ax.plot(xs[ok], ys[ok], marker=".", label=name, color=f"C{i % 10}")
    ax.set(title=label, xlabel="training iteration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
  fig.savefig(path, dpi=110)
  return path
