"""Metrics over a set of conversation transcripts (format: `schema.py`). Pure python + numpy.

`compute_metrics(transcripts, max_k=None)` returns a JSON-ready dict. n = number of
conversations; K = `max_k`, or the largest `max_turns` among them. Rates are fractions in [0, 1]
pooled over turns (a ratio of sums, not a mean of per-conversation ratios); a value is None when
its denominator is empty.

  num_conversations            n.
  max_k                        K.
  success_at_turn              [K] list; item k-1 = fraction of conversations solved at a student
                               turn <= k. A conversation that stopped before k (fewer turns,
                               smaller max_turns) keeps its outcome: unsolved stays unsolved.
  single_turn_accuracy         success_at_turn[0].
  success_rate, num_solved     fraction / number solved at any turn (ignores K).
  mean_turns_to_success        mean `solved_turn` over solved conversations.
  mean_student_turns           mean number of student turns per conversation.
  mean_reward                  mean of the `reward` field (gamma^(solved_turn-1), or 0).
  premature_answer_rate        premature attempts / all attempts, over the student turns of the
                               underspecified conversations (`schema.is_underspecified`). An
                               attempt is a student turn flagged `attempt` (or `premature`).
  premature_conversation_rate  fraction of underspecified conversations with >= 1 premature attempt.
  num_underspecified           number of underspecified conversations.
  question_rate                student turns flagged `question` / all student turns.
  teacher_leak_rate            teacher turns flagged `leak` / all teacher turns.

Dialogue quality (issue 14). A flag or field that a transcript does not carry is "not measured",
never False: each rate counts only the turns / conversations that carry it, and is None when none
do (transcripts written before the flag existed still load and give None, not 0).
  well_formed_rate             student turns flagged `well_formed` (an anchored answer attempt or a
                               question about the problem) / student turns carrying the flag.
  format_failure_rate          student turns flagged `format_failure` (an answer without the
                               `Final answer:` / `\\boxed{}` anchor, or one cut off by the token
                               budget inside its number, flag `unfinished`) / turns carrying it.
  demo_copy_rate               turns of any party flagged `demo_copy` (reproduces a line of an
                               in-context demonstration) / turns of any party carrying it.
  out_of_context_rate          conversations with `out_of_context` true (ended early: another turn
                               would not fit the sampler's KV cache) / conversations carrying it.
  truncated_rate               conversations whose student context (`student_tokens`) is longer
                               than `max_len` / conversations carrying `student_tokens`; None when
                               no `max_len` is given. Evaluation trains nothing, so nothing is cut:
                               with `max_len` = the run's `train.max_len` (what the eval stage
                               passes) it is the fraction of eval dialogues that training would cut,
                               i.e. how far the eval horizon reaches past what training sees. The
                               cut by the KV cache during the dialogue is `out_of_context_rate`.
  truncated_max_len            the `max_len` used (None: not given).

Lost-in-Conversation summary (Laban et al. 2025, arXiv:2505.06120), over the problems simulated
at least twice (grouped by (task, problem_id); others are left out): each simulation scores
S = 100 if solved else 0 (LiC's binary-task score; the turn discount is left to mean_reward).
Per problem, over its simulations: P = mean(S), A = percentile_90(S), U = percentile_90(S) -
percentile_10(S) (numpy's linear interpolation). Reported, averaged over problems, on a 0-100 scale:
  lic_mean_p, lic_aptitude, lic_unreliability, lic_num_problems, lic_mean_repeats
(all None when no problem has several simulations).

95% percentile-bootstrap CIs (`bootstrap.py`, seeded, deterministic) as `<key>_ci: [lo, hi]`
(`success_at_turn_ci` is a list of K pairs): resampling conversations for the conversation
metrics and problems for the `lic_*` ones; None when undefined.
"""

from __future__ import annotations

import collections
from typing import Any, Sequence

import numpy as np

from sml_jax.evaluation import bootstrap
from sml_jax.evaluation import schema

LIC_LOW, LIC_HIGH = 10, 90


def _ratio(num, den) -> float | None:
  den = float(np.sum(den))
  return None if den == 0 else float(np.sum(num)) / den


def _turn_counts(t: dict) -> dict[str, int]:
  """Per-conversation counts of the flagged turns the rates are built from."""
  student = [x for x in t["turns"] if x["role"] == "student"]
  teacher = [x for x in t["turns"] if x["role"] == "teacher"]
  attempts = [x for x in student if schema.flag(x, "attempt") or schema.flag(x, "premature")]
  return {
      "student": len(student),
      "question": sum(schema.flag(x, "question") for x in student),
      "teacher": len(teacher),
      "leak": sum(schema.flag(x, "leak") for x in teacher),
      "attempt": len(attempts),
      "premature": sum(schema.flag(x, "premature") for x in attempts),
  }


def turn_counts(t: dict) -> dict[str, int]:
  """Counts of a transcript's turns: student, question, teacher, leak, attempt, premature (the
  numerators and denominators of the turn rates above)."""
  return _turn_counts(t)


QUALITY_FLAGS = {"well_formed": ("student",), "format_failure": ("student",),
                 "demo_copy": ("user", "student", "teacher")}
QUALITY_KEYS = ("well_formed_rate", "format_failure_rate", "demo_copy_rate", "out_of_context_rate",
                "truncated_rate")


def _measured(value) -> bool:
  return value is not None


def quality_counts(t: dict, max_len: int | None = None) -> dict[str, tuple[int, int]]:
  """Per-conversation (numerator, denominator) of each quality rate of the module docstring
  (`<name>_rate` = sum of numerators / sum of denominators over conversations)."""
  out = {}
  for name, roles in QUALITY_FLAGS.items():
    values = [turn.get("flags", {}).get(name) for turn in t["turns"] if turn["role"] in roles]
    values = [bool(v) for v in values if _measured(v)]
    out[name] = (sum(values), len(values))
  ooc = t.get("out_of_context")
  out["out_of_context"] = (int(bool(ooc)), 1) if _measured(ooc) else (0, 0)
  n_tok = t.get("student_tokens")
  out["truncated"] = ((int(n_tok > max_len), 1) if max_len is not None and _measured(n_tok)
                      else (0, 0))
  return out


def quality_rates(transcripts: Sequence[dict],
                  max_len: int | None = None) -> dict[str, float | None]:
  """The quality rates (`QUALITY_KEYS`) of `transcripts`, without CIs (for training rows)."""
  per_conv = [quality_counts(t, max_len) for t in transcripts]
  return {f"{name}_rate": _ratio([c[name][0] for c in per_conv], [c[name][1] for c in per_conv])
          for name in (*QUALITY_FLAGS, "out_of_context", "truncated")}


def lic_scores(transcripts: Sequence[dict]) -> list[np.ndarray]:
  """Per problem simulated >= 2 times, its simulations' scores (100 * solved): list of [R_i]."""
  groups = collections.defaultdict(list)
  for t in transcripts:
    groups[(t.get("task"), t["problem_id"])].append(100.0 * t["solved"])
  return [np.asarray(s) for s in groups.values() if len(s) >= 2]


def lic_per_problem(scores: list[np.ndarray]) -> dict[str, np.ndarray]:
  """P, A, U for each problem: dict of float [num_problems]."""
  lo_hi = np.array([np.percentile(s, [LIC_LOW, LIC_HIGH]) for s in scores]).reshape(-1, 2)
  return {"lic_mean_p": np.array([s.mean() for s in scores]),
          "lic_aptitude": lo_hi[:, 1],
          "lic_unreliability": lo_hi[:, 1] - lo_hi[:, 0]}


def compute_metrics(transcripts: Sequence[dict], max_k: int | None = None, *,
                    max_len: int | None = None, n_resamples: int = bootstrap.N_RESAMPLES,
                    seed: int = 0, level: float = bootstrap.LEVEL) -> dict[str, Any]:
  """The metrics documented in the module docstring, for `transcripts` (validated first)."""
  ts = schema.validate_transcripts(transcripts)
  if max_k is not None and (not isinstance(max_k, int) or max_k < 1):
    raise ValueError(f"max_k must be a positive int or None, got {max_k!r}.")
  if max_len is not None and (not isinstance(max_len, int) or isinstance(max_len, bool)
                              or max_len < 1):
    raise ValueError(f"max_len must be a positive int or None, got {max_len!r}.")
  n = len(ts)
  k_max = max_k if max_k is not None else max((t["max_turns"] for t in ts), default=0)

  solved = np.array([t["solved"] for t in ts], np.float64)                        # [n]
  solved_turn = np.array([t["solved_turn"] or 0 for t in ts], np.float64)         # [n], 0 if not
  reward = np.array([t["reward"] for t in ts], np.float64)                        # [n]
  ks = np.arange(1, k_max + 1)
  success = (solved[:, None] > 0) & (solved_turn[:, None] <= ks[None, :])         # [n, K]
  success = success.astype(np.float64)
  per_conv = [_turn_counts(t) for t in ts]
  c = {key: np.array([x[key] for x in per_conv], np.float64).reshape(n)
       for key in ("student", "question", "teacher", "leak", "attempt", "premature")}
  quality = [quality_counts(t, max_len) for t in ts]
  q = {name: (np.array([x[name][0] for x in quality], np.float64).reshape(n),
              np.array([x[name][1] for x in quality], np.float64).reshape(n))
       for name in (*QUALITY_FLAGS, "out_of_context", "truncated")}
  under = np.array([schema.is_underspecified(t) for t in ts], np.float64).reshape(n)
  ones = np.ones(n)

  # name -> (num, den): each metric is sum(num) / sum(den) over conversations.
  ratios = {
      "success_rate": (solved, ones),
      "mean_turns_to_success": (solved_turn, solved),
      "mean_student_turns": (c["student"], ones),
      "mean_reward": (reward, ones),
      "premature_answer_rate": (c["premature"] * under, c["attempt"] * under),
      "premature_conversation_rate": ((c["premature"] > 0) * under, under),
      "question_rate": (c["question"], c["student"]),
      "teacher_leak_rate": (c["leak"], c["teacher"]),
      **{f"{name}_rate": num_den for name, num_den in q.items()},
  }
  counts = bootstrap.resample_counts(n, n_resamples, seed)
  out: dict[str, Any] = {"num_conversations": n, "max_k": k_max}
  out["success_at_turn"] = [_ratio(success[:, j], ones) for j in range(k_max)]
  out["success_at_turn_ci"] = bootstrap.ratio_ci(counts, success, level=level) if k_max else []
  out["single_turn_accuracy"] = out["success_at_turn"][0] if k_max else None
  out["single_turn_accuracy_ci"] = out["success_at_turn_ci"][0] if k_max else None
  for key, (num, den) in ratios.items():
    out[key] = _ratio(num, den)
    out[f"{key}_ci"] = bootstrap.ratio_ci(counts, num, den, level) if out[key] is not None else None
  out["num_solved"] = int(solved.sum())
  out["num_underspecified"] = int(under.sum())
  out["truncated_max_len"] = max_len

  scores = lic_scores(ts)
  lic = lic_per_problem(scores) if scores else {}
  for key in ("lic_mean_p", "lic_aptitude", "lic_unreliability"):
    out[key] = float(lic[key].mean()) if scores else None
  out["lic_num_problems"] = len(scores)
  out["lic_mean_repeats"] = float(np.mean([len(s) for s in scores])) if scores else None

  problem_counts = bootstrap.resample_counts(len(scores), n_resamples, seed)
  for key in ("lic_mean_p", "lic_aptitude", "lic_unreliability"):
    out[f"{key}_ci"] = bootstrap.ratio_ci(problem_counts, lic[key], level=level) if scores else None
  out.update(ci_level=level, ci_resamples=n_resamples, ci_seed=seed)
  # Point estimates first, then their CIs: easier to read in the JSON file.
  return dict(sorted(out.items(), key=lambda kv: kv[0].endswith("_ci")))
