"""`write_report(workdir)`: report.md (before/after table, training summary), PNGs, transcripts.html.

Reads what `store.py` lays out (workdir/eval/*.json, their transcripts, workdir/metrics.jsonl)
and writes, in workdir (local or gs://, `sml_jax.paths`):

    report.md  success_by_turn.png  rates.png  training.png  transcripts.html

Plots with nothing to show (no before/after pair, no training log) are skipped and the report
says so. Returns the markdown evaluation table(s), which the demo prints.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from sml_jax import paths
from sml_jax.evaluation import metrics as metrics_lib
from sml_jax.evaluation import paired as paired_lib
from sml_jax.evaluation import plots
from sml_jax.evaluation import store
from sml_jax.evaluation import viewer

SHOW_K = (1, 4, 10)   # success@k rows: single turn, the training horizon, the long-dialogue horizon
# (key, label, kind): kind picks the number format; rows with no value in any column are dropped.
ROWS = (
    ("success_rate", "solved (any turn)", "rate"),
    ("mean_turns_to_success", "mean turns to success", "num"),
    ("mean_reward", "mean reward", "num"),
    ("question_rate", "question rate", "rate"),
    ("premature_answer_rate", "premature answer rate", "rate"),
    ("premature_conversation_rate", "conversations with a premature answer", "rate"),
    ("teacher_leak_rate", "teacher leak rate", "rate"),
    ("well_formed_rate", "well-formed student turns", "rate"),
    ("format_failure_rate", "student answers without an anchor (format failures)", "rate"),
    ("demo_copy_rate", "turns copying a demonstration", "rate"),
    ("out_of_context_rate", "conversations ended by the KV cache (out of context)", "rate"),
    ("truncated_rate", "conversations longer than train.max_len (cut if trained)", "rate"),
    ("lic_mean_p", "LiC mean P (0-100)", "pct"),
    ("lic_aptitude", "LiC aptitude A90 (0-100)", "pct"),
    ("lic_unreliability", "LiC unreliability U90-10 (0-100)", "pct"),
    ("num_conversations", "conversations", "int"),
)
_DIGITS = {"rate": 3, "num": 3, "pct": 1, "one": 1, "int": 0}


def _fmt(v, kind: str) -> str:
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "–"
  return f"{int(v)}" if kind == "int" else f"{v:.{_DIGITS[kind]}f}"


def _cell(m: dict, key: str, kind: str, k: int | None = None) -> str:
  """"value [lo, hi]" for metric `key` (item k-1 of a per-turn list when k is given)."""
  v, ci = m.get(key), m.get(f"{key}_ci")
  if k is not None:
    v = v[k - 1] if v and k <= len(v) else None
    ci = ci[k - 1] if ci and k <= len(ci) else None
  s = _fmt(v, kind)
  return s if v is None or not ci else f"{s} [{_fmt(ci[0], kind)}, {_fmt(ci[1], kind)}]"


def _value(m: dict, key: str, k: int | None = None):
  v = m.get(key)
  return (v[k - 1] if v and k <= len(v) else None) if k is not None else v


def _rows(evals: Sequence[dict], show_k: Sequence[int]) -> list[tuple[str, str, str, int | None]]:
  """(label, key, kind, k) rows with a value in at least one of `evals`."""
  k_max = max((m.get("max_k") or 0 for m in evals), default=0)
  ks = sorted({k for k in show_k if k <= k_max} | ({k_max} if k_max else set()))
  rows = [(f"success by turn {k}" + (" (single-turn accuracy)" if k == 1 else ""),
           "success_at_turn", "rate", k) for k in ks]
  rows += [(label, key, kind, None) for key, label, kind in ROWS]
  return [r for r in rows if any(_value(m, r[1], r[3]) is not None for m in evals)]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = [header, ["---"] * len(header), *rows]
  return "\n".join("| " + " | ".join(r) + " |" for r in lines)


def _paired_cell(d, key: str, k: int | None) -> str | None:
  """"+0.125 [+0.042, +0.229] (6 up, 0 down)" from a paired bootstrap, for the metrics that are
  per-problem outcomes; None for the others (pooled turn rates: their Δ stays unpaired)."""
  if d is None:
    return None
  st = {"success_at_turn": d.success_at_turn[k - 1] if k and k <= len(d.success_at_turn) else None,
        "success_rate": d.success, "mean_reward": d.mean_reward}.get(key)
  if st is None:
    return None
  ci = f" [{st.ci[0]:+.3f}, {st.ci[1]:+.3f}]" if st.ci else ""
  return f"{st.delta:+.3f}{ci} ({st.gained} up, {st.lost} down)"


def before_after_table(evals: dict[str, dict], pairs, show_k: Sequence[int] = SHOW_K,
                       paired: dict | None = None) -> str:
  """Markdown: one row per (eval pair, metric); before, after (95% CI) and after - before.

  paired: eval name x -> `paired.PairedDeltas`; where given, success and reward rows show the
  paired 95% CI of the difference (bootstrap over the problems both evals share)."""
  rows = []
  for x, b, a in pairs:
    mb, ma = evals[b], evals[a]
    for label, key, kind, k in _rows([mb, ma], show_k):
      vb, va = _value(mb, key, k), _value(ma, key, k)
      delta = _paired_cell((paired or {}).get(x), key, k)
      if delta is None:
        delta = f"{va - vb:+.{_DIGITS[kind]}f}" if vb is not None and va is not None else "–"
      rows.append([x, label, _cell(mb, key, kind, k), _cell(ma, key, kind, k), delta])
  return _md_table(["eval", "metric", "before", "after", "Δ after − before [paired 95% CI]"], rows)


def evals_table(evals: dict[str, dict], names: Sequence[str], show_k: Sequence[int] = SHOW_K) -> str:
  """Markdown: one row per metric, one column per eval in `names`."""
  ms = [evals[n] for n in names]
  rows = [[label] + [_cell(m, key, kind, k) for m in ms] for label, key, kind, k in _rows(ms, show_k)]
  return _md_table(["metric"] + list(names), rows)


def training_table(log: Sequence[dict]) -> str:
  """Markdown: per stage, its steps, last loss / reward / success / well-formed rate, the mean
  fraction of training examples cut at train.max_len, and where the time went."""
  stages = list(dict.fromkeys(str(r.get("stage", "train")) for r in log))

  def col(rs, key):
    return np.array([r[key] for r in rs if isinstance(r.get(key), (int, float))], np.float64)

  def agg(v: np.ndarray, f, kind: str) -> str:
    return _fmt(float(f(v)) if v.size else None, kind)

  rows = []
  for stage in stages:
    rs = [r for r in log if str(r.get("stage", "train")) == stage]
    rows.append([stage, str(len(rs)),
                 *(agg(col(rs, k), lambda v: v[-1], "num")
                   for k in ("loss", "reward_mean", "success_rate", "well_formed_rate")),
                 agg(col(rs, "truncated_rate"), np.mean, "rate"),
                 agg(col(rs, "tokens_per_s"), np.mean, "one"),
                 agg(col(rs, "time_sampling_s"), np.sum, "one"),
                 agg(col(rs, "time_training_s"), np.sum, "one")])
  return _md_table(["stage", "logged steps", "last loss", "last reward", "last success",
                    "last well-formed", "mean truncated", "mean tokens/s", "sampling s",
                    "training s"], rows)


def _extras(m: dict, metric_keys: set[str]) -> str:
  """The `extra` fields write_eval stored beside the metrics (model, checkpoint, task, ...)."""
  return ", ".join(f"{k}={m[k]}" for k in m if k not in metric_keys) or "–"


def example_pair_text(workdir: str) -> str:
  """One held-out problem before and after training, as console text ("" with no before/after
  pair): a problem whose outcome training changed, if any (`paired.pick_pair`)."""
  evals = store.read_evals(workdir)
  for x, b, a in store.pair_names(list(evals))[0]:
    pair = paired_lib.pick_pair(store.read_transcripts(workdir, b), store.read_transcripts(workdir, a))
    if pair is not None:
      return (f"The same held-out problem ({x}, {pair[0]['problem_id']}) before and after training:\n"
              f"before:\n{paired_lib.format_dialogue(pair[0])}\n"
              f"after:\n{paired_lib.format_dialogue(pair[1])}")
  return ""


def write_report(workdir: str, *, show_k: Sequence[int] = SHOW_K, max_viewer_items: int = 100) -> str:
  """Writes report.md, the PNGs and transcripts.html into `workdir`; returns the eval table(s)."""
  if not paths.isdir(workdir):
    raise ValueError(f"workdir {workdir!r} does not exist.")
  evals = store.read_evals(workdir)
  pairs, singles = store.pair_names(list(evals))
  log = store.read_train_log(workdir)
  join = lambda name: paths.join(workdir, name)
  metric_keys = set(metrics_lib.compute_metrics([])) | {"name"}

  transcripts = {n: store.read_transcripts(workdir, n) for n in evals}
  paired = {}
  for x, b, a in pairs:
    try:
      paired[x] = paired_lib.paired_deltas(transcripts[b], transcripts[a],
                                           max(evals[b].get("max_k") or 1, evals[a].get("max_k") or 1))
    except ValueError:   # no shared problems (or no transcripts): the unpaired Δ stays
      pass
  tables = []
  if pairs:
    tables.append(before_after_table(evals, pairs, show_k, paired))
  if singles:
    tables.append(evals_table(evals, singles, show_k))
  table_text = "\n\n".join(tables) if tables else "(no evaluations found in eval/)"

  pngs = {
      "success_by_turn.png": plots.plot_success_by_turn(evals, pairs, singles, join("success_by_turn.png")),
      "rates.png": plots.plot_rates(evals, pairs, join("rates.png")),
      "training.png": plots.plot_training(log, join("training.png")),
  }
  for name, written in pngs.items():  # a plot from an earlier run would no longer match the report
    if not written and paths.exists(join(name)):
      paths.remove(join(name))
  sections = [(x, [(b, transcripts[b]), (a, transcripts[a])]) for x, b, a in pairs]
  sections += [(s, [(s, transcripts[s])]) for s in singles]
  paths.write_text_atomic(join("transcripts.html"), viewer.render_page(sections, max_viewer_items))

  def image(name, alt):
    return f"![{alt}]({name})" if pngs[name] else f"_(no {alt} plot: nothing to show)_"

  md = [f"# SML report\n\nWorkdir: `{paths.resolve(workdir)}`\n",
        "## Evaluation\n",
        "Cells: value [95% bootstrap CI, resampling conversations (problems for LiC)]. Rates are "
        "fractions of turns (out-of-context and truncated: of conversations); a quality flag a "
        "transcript does not carry is not measured (–), not counted as false; truncated: longer "
        "than train.max_len, i.e. would be cut if trained (eval trains nothing). LiC scores are "
        "0-100 over repeated simulations of a problem. "
        "Definitions: `sml_jax/evaluation/metrics.py`.\n",
        table_text + "\n",
        image("success_by_turn.png", "success by turn"),
        image("rates.png", "behaviour rates") + "\n",
        "Runs: " + "; ".join(f"`{n}`: {_extras(m, metric_keys)}" for n, m in evals.items()) + "\n" if evals else "",
        "Conversations: [transcripts.html](transcripts.html)\n",
        "## Training\n",
        (training_table(log) + "\n\n" + image("training.png", "training")) if log
        else "_(no workdir/metrics.jsonl: no training logged)_",
        ""]
  paths.write_text_atomic(join("report.md"), "\n".join(md))
  return table_text
