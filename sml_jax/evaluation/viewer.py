"""A static, self-contained HTML page to read the evaluation conversations.

Before/after evals (`before_<x>` / `after_<x>`) are shown side by side, matched by
(task, problem_id, repeat), conversations whose outcome changed first; other evals get one
column. Roles are coloured, true flags are shown as badges, and every piece of text from a
transcript is HTML-escaped (model output is untrusted). No JavaScript: `<details>` folds.
"""

from __future__ import annotations

import html
from typing import Sequence

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.row { display: flex; gap: 1em; align-items: flex-start; }
.col { flex: 1 1 0; min-width: 0; }
.turn { border-radius: 6px; padding: 0.4em 0.6em; margin: 0.3em 0; border-left: 4px solid; }
.turn pre { white-space: pre-wrap; word-wrap: break-word; margin: 0.2em 0 0; font-size: 0.9em; }
.user { background: #f1f1f1; border-color: #999; }
.student { background: #e8f1fd; border-color: #1f77b4; }
.teacher { background: #eaf6ea; border-color: #2ca02c; }
.role { font-weight: 600; font-size: 0.85em; text-transform: uppercase; }
.flag { display: inline-block; font-size: 0.75em; padding: 0 0.4em; margin-left: 0.3em;
        border-radius: 3px; background: #ddd; }
.flag.correct { background: #2ca02c; color: #fff; } .flag.premature { background: #ff7f0e; color: #fff; }
.flag.leak { background: #d62728; color: #fff; } .flag.question { background: #9467bd; color: #fff; }
.flag.shard { background: #17becf; color: #fff; }
.flag.format_failure, .flag.not_well_formed { background: #8c564b; color: #fff; }
.flag.demo_copy, .flag.out_of_context { background: #e377c2; color: #fff; }
.meta { color: #555; font-size: 0.85em; }
.solved { color: #2ca02c; font-weight: 600; } .unsolved { color: #d62728; font-weight: 600; }
details { border-top: 1px solid #ddd; padding: 0.3em 0; } summary { cursor: pointer; }
"""


def _e(x) -> str:
  return html.escape(str(x), quote=True)


def _key(t: dict) -> tuple:
  return (str(t.get("task")), str(t["problem_id"]), int(t.get("repeat") or 0))


def _outcome(t: dict | None) -> str:
  if t is None:
    return '<span class="meta">absent</span>'
  if t["solved"]:
    return f'<span class="solved">solved at turn {_e(t["solved_turn"])}</span>'
  return '<span class="unsolved">unsolved</span>'


def _flags(flags: dict) -> str:
  badges = []
  for name, value in flags.items():
    if name == "well_formed":   # true on most turns: flag the exceptions
      if value is False:
        badges.append('<span class="flag not_well_formed">not well-formed</span>')
    elif value is True:
      badges.append(f'<span class="flag {_e(name)}">{_e(name)}</span>')
    elif value not in (False, None, "", 0):
      badges.append(f'<span class="flag">{_e(name)}={_e(value)}</span>')
  return "".join(badges)


def render_conversation(t: dict | None) -> str:
  """One conversation as HTML: a meta line, then one coloured block per turn."""
  if t is None:
    return '<p class="meta">(no conversation for this problem)</p>'
  meta = (f'{_outcome(t)} · reward {_e(round(float(t["reward"]), 4))} · teacher {_e(t.get("teacher", "?"))}'
          f' · max_turns {_e(t["max_turns"])}')
  if t.get("student_tokens") is not None:
    meta += f' · {_e(t["student_tokens"])} student-context tokens'
  if t.get("out_of_context"):
    meta += ' <span class="flag out_of_context">out of context</span>'
  turns = [f'<div class="turn {_e(turn["role"])}"><span class="role">{_e(turn["role"])}</span>'
           f'{_flags(turn.get("flags", {}))}<pre>{_e(turn.get("text", ""))}</pre></div>'
           for turn in t["turns"]]
  return f'<div class="meta">{meta}</div>' + "".join(turns)


def _changed_first(pair: tuple) -> int:
  """Sort key: improved (0), regressed (1), unchanged (2)."""
  b, a = (bool(t and t["solved"]) for t in pair)
  return 0 if a and not b else 1 if b and not a else 2


def render_section(title: str, columns: Sequence[tuple[str, list[dict]]], max_items: int) -> str:
  """Conversations of one or more evals, matched by problem and shown in columns."""
  by_key = [{_key(t): t for t in ts} for _, ts in columns]
  keys = list(dict.fromkeys(k for d in by_key for k in d))
  rows = [(k, tuple(d.get(k) for d in by_key)) for k in keys]
  if len(columns) == 2:
    rows.sort(key=lambda kr: _changed_first(kr[1]))  # stable: file order within each group
  shown = rows[:max_items]
  parts = [f'<section id="{_e(title)}"><h2>{_e(title)}</h2>',
           f'<p class="meta">{len(rows)} conversations; showing {len(shown)}. Columns: '
           f'{_e(", ".join(name for name, _ in columns))}.</p>']
  for (task, pid, rep), convs in shown:
    outcomes = " → ".join(_outcome(t) for t in convs)
    parts.append(f'<details><summary><b>{_e(pid)}</b> <span class="meta">{_e(task)} · repeat {rep}'
                 f'</span> · {outcomes}</summary><div class="row">')
    parts += [f'<div class="col"><h4>{_e(name)}</h4>{render_conversation(t)}</div>'
              for (name, _), t in zip(columns, convs)]
    parts.append("</div></details>")
  parts.append("</section>")
  return "\n".join(parts)


def render_page(sections: Sequence[tuple[str, Sequence[tuple[str, list[dict]]]]],
                max_items: int = 100) -> str:
  """The whole page. sections: [(title, [(eval name, transcripts), ...]), ...]."""
  nav = " · ".join(f'<a href="#{_e(title)}">{_e(title)}</a>' for title, _ in sections)
  body = "\n".join(render_section(title, cols, max_items) for title, cols in sections)
  if not sections:
    body = "<p>No evaluation transcripts found.</p>"
  return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>SML transcripts</title>'
          f'<style>{_CSS}</style></head><body><h1>Transcripts</h1><nav>{nav}</nav>\n{body}\n'
          f'</body></html>\n')
