"""PNG plots for the report, drawn with matplotlib's object API on the Agg canvas.

`matplotlib.figure.Figure` is used directly instead of pyplot: no global backend or figure
state, so plotting is safe in threads and never tries to open a window.

  success_by_turn.png  success by student turn k, before vs after (95% CI bands), one panel per pair
  rates.png            question / premature-answer / teacher-leak rates (+ the dialogue-quality
                       rates some eval measured), before vs after
  training.png         reward, success rate, loss, well-formed rate and truncated fraction over
                       training steps (panels with no logged value are left out), by stage
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from sml_jax import paths

RATE_KEYS = (("question_rate", "question rate"), ("premature_answer_rate", "premature answers"),
             ("teacher_leak_rate", "teacher leaks"))
# Dialogue-quality rates: drawn only when some eval of the report measured them.
QUALITY_RATE_KEYS = (("well_formed_rate", "well-formed"),
                     ("format_failure_rate", "format failures"), ("demo_copy_rate", "demo copies"), ("out_of_context_rate", "out of context"),
                     ("truncated_rate", "> train.max_len"))
TRAIN_KEYS = (("reward_mean", "mean reward"), ("success_rate", "success rate"), ("loss", "loss"),
              ("well_formed_rate", "well-formed student turns"),
              ("truncated_rate", "examples cut at train.max_len"))
COLORS = {"before": "tab:gray", "after": "tab:blue"}


def _save(fig: Figure, path: str) -> None:
  """PNG to a local path or a gs:// URL (rendered in memory, written in one piece)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  paths.write_bytes(path, buf.getvalue())


def _finite(values) -> np.ndarray:
  """Floats with None -> NaN, so matplotlib leaves gaps instead of failing."""
  return np.array([np.nan if v is None else v for v in values], np.float64)


def _grid(fig: Figure, n: int, max_cols: int = 3):
  cols = min(n, max_cols)
  rows = -(-n // cols)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax in axes[n:]:
    ax.set_visible(False)
  return axes[:n]


def _success_curve(ax, m: dict, label: str, color: str | None) -> None:
  ys = _finite(m.get("success_at_turn") or [])
  if not ys.size:
    return
  ks = np.arange(1, ys.size + 1)
  ax.plot(ks, ys, marker="o", label=f"{label} (n={m.get('num_conversations')})", color=color)
  cis = m.get("success_at_turn_ci") or []
  if len(cis) == ys.size:
    lo = _finite([c[0] if c else None for c in cis])
    hi = _finite([c[1] if c else None for c in cis])
    ax.fill_between(ks, lo, hi, alpha=0.2, color=ax.lines[-1].get_color())


def plot_success_by_turn(evals: dict[str, dict], pairs: Sequence[tuple[str, str, str]],
                         singles: Sequence[str], path: str) -> str | None:
  """One panel per before/after pair (or one panel with every unpaired eval). None if no evals."""
  panels = [(x, [(evals[b], "before"), (evals[a], "after")]) for x, b, a in pairs]
  if not panels and singles:
    panels = [("evaluations", [(evals[s], s) for s in singles])]
  if not panels:
    return None
  fig = Figure(figsize=(4.8 * min(len(panels), 3), 3.6 * -(-len(panels) // 3)), layout="constrained")
  for ax, (title, curves) in zip(_grid(fig, len(panels)), panels):
    for m, label in curves:
      _success_curve(ax, m, label, COLORS.get(label))
    ax.set(title=title, xlabel="student turn k", ylabel="solved by turn k", ylim=(-0.02, 1.02))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
  _save(fig, path)
  return path


def plot_rates(evals: dict[str, dict], pairs: Sequence[tuple[str, str, str]], path: str) -> str | None:
  """Grouped bars (with CI whiskers) of the behaviour rates, one panel per pair. None if no pairs."""
  if not pairs:
    return None
  names = [n for _, b, a in pairs for n in (b, a)]
  rate_keys = RATE_KEYS + tuple((k, label) for k, label in QUALITY_RATE_KEYS
                                if any(evals[n].get(k) is not None for n in names))
  fig = Figure(figsize=(max(4.8, 0.9 * len(rate_keys)) * min(len(pairs), 3),
                        3.4 * -(-len(pairs) // 3)), layout="constrained")
  xs = np.arange(len(rate_keys))
  for ax, (title, b, a) in zip(_grid(fig, len(pairs)), pairs):
    top = 0.0
    for offset, (name, label) in ((-0.2, (b, "before")), (0.2, (a, "after"))):
      m = evals[name]
      ys = _finite([m.get(k) for k, _ in rate_keys])
      cis = [m.get(f"{k}_ci") for k, _ in rate_keys]
      err = np.array([[y - c[0], c[1] - y] if c and np.isfinite(y) else [0, 0]
                      for y, c in zip(ys, cis)]).T
      ax.bar(xs + offset, np.nan_to_num(ys), width=0.4, yerr=np.clip(err, 0, None), capsize=3,
             label=label, color=COLORS[label])
      top = max(top, float(np.nanmax(np.append(ys + err[1], 0))))
      for x in xs[~np.isfinite(ys)]:  # undefined (e.g. no underspecified problem): say so, not 0
        ax.text(x + offset, 0, "n/a", ha="center", va="bottom", fontsize="small")
    tilt = len(rate_keys) > 3
    ax.set_xticks(xs, [label for _, label in rate_keys], fontsize="small",
                  rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set(title=title, ylabel="rate", ylim=(0, min(1.02, max(0.05, 1.2 * top))))
    ax.legend(fontsize="small")
  _save(fig, path)
  return path


def global_steps(log: Sequence[dict]) -> np.ndarray:
  """x positions [len(log)]: `step`, except that a stage whose counter restarts (its first step is
  not past the previous x) is shifted to follow the previous stage."""
  xs, offset, last, prev_stage = [], 0.0, None, None
  for i, r in enumerate(log):
    step = float(r.get("step", i))
    if i and r.get("stage") != prev_stage:
      offset = 0.0 if step > last else last + 1 - step
    last, prev_stage = step + offset, r.get("stage")
    xs.append(last)
  return np.array(xs, np.float64)


def plot_training(log: Sequence[dict], path: str) -> str | None:
  """TRAIN_KEYS against step, one colour per stage. None if nothing logged."""
  keys = [(k, label) for k, label in TRAIN_KEYS if any(r.get(k) is not None for r in log)]
  if not keys:
    return None
  xs = global_steps(log)
  stages = list(dict.fromkeys(str(r.get("stage", "train")) for r in log))
  cols = min(len(keys), 3)
  fig = Figure(figsize=(4.4 * cols, 3.4 * -(-len(keys) // cols)), layout="constrained")
  for ax, (key, label) in zip(_grid(fig, len(keys), max_cols=cols), keys):
    for color, stage in enumerate(stages):
      rows = [(x, r.get(key)) for x, r in zip(xs, log) if str(r.get("stage", "train")) == stage]
      x, y = np.array([p[0] for p in rows]), _finite([p[1] for p in rows])
      ok = np.isfinite(y)
      if ok.any():
        ax.plot(x[ok], y[ok], marker="." if ok.sum() < 50 else None, label=stage,
                color=f"C{color % 10}")  # same stage, same colour in every panel
    ax.set(title=label, xlabel="step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  _save(fig, path)
  return path
