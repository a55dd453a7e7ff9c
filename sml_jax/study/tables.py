"""Markdown tables of the study: claims, success by turn, dialogue quality, wall times."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from sml_jax.study.claims import Claim, Comparison, Estimate


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = [list(header), ["---"] * len(header), *rows]
  return "\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in lines)


def fmt(v: float | None, signed: bool = False, digits: int = 3) -> str:
  if v is None or not np.isfinite(v):
    return "–"
  return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def fmt_ci(v: float | None, ci, signed: bool = False) -> str:
  s = fmt(v, signed)
  return s if v is None or not ci else f"{s} [{fmt(ci[0], signed)}, {fmt(ci[1], signed)}]"


def _est(e: Estimate) -> str:
  return fmt_ci(e.value, e.ci)


def _cmp_row(c: Comparison) -> list[str]:
  return [c.measure, f"{c.arm} {_est(c.arm_est)}", f"{c.ref} {_est(c.ref_est)}",
          fmt_ci(c.diff, c.diff_ci, signed=True), str(c.arm_est.n)]


def claims_table(claims: Sequence[Claim]) -> str:
  """One row per claim: its primary comparison and verdict."""
  rows = []
  for cl in claims:
    p = cl.primary
    if p is None:
      rows.append([f"({cl.key}) {cl.title}", "–", "–", "–", "–", "–", cl.verdict])
      continue
    rows.append([f"({cl.key}) {cl.title}", p.measure, f"{p.arm} {_est(p.arm_est)}",
                 f"{p.ref} {_est(p.ref_est)}", fmt_ci(p.diff, p.diff_ci, signed=True),
                 str(p.arm_est.n), cl.verdict])
  return md_table(["claim", "measure", "arm [95% CI]", "compared with [95% CI]",
                   "difference [paired 95% CI]", "problems", "verdict"], rows)


def claim_details(claim: Claim) -> str:
  if not claim.details:
    return "_(not run: an arm or eval suite this claim needs is missing)_"
  return md_table(["measure", "arm [95% CI]", "compared with [95% CI]",
                   "difference [paired 95% CI]", "problems"],
                  [_cmp_row(c) for c in claim.details])


def success_by_turn_table(metrics: Mapping[str, dict]) -> str:
  """Rows: arms; columns: success@k (seeds pooled)."""
  if not metrics:
    return "_(no evaluations)_"
  k_max = max(len(m.get("success_at_turn") or []) for m in metrics.values())
  rows = [[arm] + [fmt(v) for v in (m.get("success_at_turn") or [])] for arm, m in metrics.items()]
  return md_table(["arm"] + [f"k={k}" for k in range(1, k_max + 1)], rows)


EVAL_QUALITY = (("success_rate", "solved"), ("question_rate", "questions"),
                ("premature_answer_rate", "premature answers"),
                ("well_formed_rate", "well-formed"), ("format_failure_rate", "format failures"),
                ("demo_copy_rate", "demo copies"), ("teacher_leak_rate", "teacher leaks"),
                ("out_of_context_rate", "out of context"), ("num_conversations", "conversations"))


def eval_quality_table(metrics: Mapping[str, Mapping[str, dict]]) -> str:
  """suite -> arm -> metrics: one row per (suite, arm) with the dialogue-quality rates."""
  rows = []
  for suite, by_arm in metrics.items():
    for arm, m in by_arm.items():
      rows.append([suite, arm] + [
          str(m.get(k)) if k == "num_conversations" else fmt_ci(m.get(k), m.get(f"{k}_ci"))
          for k, _ in EVAL_QUALITY])
  return md_table(["suite", "arm"] + [label for _, label in EVAL_QUALITY], rows)


TRAIN_QUALITY = (("reward_mean", "reward"), ("success_rate", "success"),
                 ("well_formed_rate", "well-formed"), ("format_failure_rate", "format failures"),
                 ("demo_copy_rate", "demo copies"), ("question_rate", "questions"),
                 ("out_of_context_rate", "out of context"), ("truncated_rate", "cut at max_len"))


def training_quality_table(logs: Mapping[str, Sequence[dict]]) -> str:
  """"<arm> seed<k>" -> metrics.jsonl rows: per stage, first -> last value and the mean."""
  rows = []
  for name, log in logs.items():
    for stage in dict.fromkeys(str(r.get("stage")) for r in log):
      rs = [r for r in log if str(r.get("stage")) == stage]
      cells = []
      for key, _ in TRAIN_QUALITY:
        v = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
        cells.append(f"{fmt(v[0])} → {fmt(v[-1])} (mean {fmt(float(np.mean(v)))})" if v else "–")
      rows.append([name, stage, str(len(rs)), *cells])
  if not rows:
    return "_(no training logged)_"
  return md_table(["run", "stage", "iterations"] + [f"{label}: first → last" for _, label in
                                                     TRAIN_QUALITY], rows)


def wall_time_table(times: Mapping[str, Mapping[str, float]]) -> str:
  """arm -> {"train": s, "eval_math": s, ...} (summed over seeds) -> one row per arm."""
  cols = sorted({k for t in times.values() for k in t}, key=lambda k: (k != "train", k))
  rows = [[arm] + [f"{t.get(k, 0.0) / 60:.1f}" for k in cols] + [f"{sum(t.values()) / 60:.1f}"]
          for arm, t in times.items()]
  total = sum(sum(t.values()) for t in times.values())
  rows.append(["**all**"] + [f"{sum(t.get(k, 0.0) for t in times.values()) / 60:.1f}"
                             for k in cols] + [f"**{total / 60:.1f}**"])
  return md_table(["arm"] + [f"{k} (min)" for k in cols] + ["total (min)"], rows)
