"""The transcript record (one conversation, one JSONL line) and its validation.

    {"problem_id": "gsm8k/eval/123", "task": "gsm8k", "domain": "math", "teacher": "llm",
     "max_turns": 4, "repeat": 0,
     "turns": [{"role": "user", "text": "...", "flags": {}},
               {"role": "student", "text": "...", "flags": {"attempt": true, "question": false,
                                                            "correct": false, "premature": false,
                                                            "qprime": false}},
               {"role": "teacher", "text": "...", "flags": {"leak": false, "shard": false}}, ...],
     "solved": true, "solved_turn": 2, "num_student_turns": 2, "reward": 0.7}

`solved_turn` is the 1-based index of the correct student turn (null when unsolved). Optional:
`"underspecified": true` marks a sharded problem even when no turn carries a shard/premature flag;
`"out_of_context": bool` (ended early: another turn would not fit the KV cache);
`"student_tokens": int` (length of the student's token context, for `truncated_rate`).
Optional dialogue-quality flags (`QUALITY_FLAGS`, bool; absent = not measured): student turns
`format_failure`, `well_formed`, `demo_copy`; teacher turns `demo_copy`. A student turn whose
answer the token budget cut off (not read) also has `"unfinished": true` and `"sampled_end"` (its
last characters as sampled, before the turn was cut at its answer).
Validation is structural (types, required keys, index ranges): it catches a broken writer early
with the offending record named, instead of a wrong number in a report.
"""

from __future__ import annotations

from typing import Any, Iterable

ROLES = ("user", "student", "teacher")
QUALITY_FLAGS = ("format_failure", "well_formed", "demo_copy")
REQUIRED_KEYS = ("problem_id", "turns", "solved", "solved_turn", "reward", "max_turns")


def _where(t: dict, i: int) -> str:
  return f"transcript {i} (problem_id={t.get('problem_id')!r})"


def validate_transcript(t: Any, i: int = 0) -> dict:
  """Returns `t` unchanged if it is a well-formed transcript record, else raises ValueError."""
  if not isinstance(t, dict):
    raise ValueError(f"transcript {i} must be a dict, got {type(t).__name__}.")
  where = _where(t, i)
  missing = [k for k in REQUIRED_KEYS if k not in t]
  if missing:
    raise ValueError(f"{where} is missing keys {missing}.")
  if not isinstance(t["turns"], list):
    raise ValueError(f"{where}: 'turns' must be a list.")
  for j, turn in enumerate(t["turns"]):
    if not isinstance(turn, dict) or turn.get("role") not in ROLES:
      raise ValueError(f"{where}, turn {j}: expected a dict with role in {ROLES}, got {turn!r:.200}.")
    if not isinstance(turn.get("text", ""), str) or not isinstance(turn.get("flags", {}), dict):
      raise ValueError(f"{where}, turn {j}: 'text' must be a str and 'flags' a dict.")
    for name in QUALITY_FLAGS:
      value = turn.get("flags", {}).get(name)
      if value is not None and not isinstance(value, bool):
        raise ValueError(f"{where}, turn {j}: flag {name!r} must be a bool, got {value!r:.100}.")
  if not isinstance(t["max_turns"], int) or t["max_turns"] < 1:
    raise ValueError(f"{where}: 'max_turns' must be a positive int, got {t['max_turns']!r}.")
  if not isinstance(t["reward"], (int, float)) or isinstance(t["reward"], bool):
    raise ValueError(f"{where}: 'reward' must be a number, got {t['reward']!r}.")
  if not isinstance(t["solved"], bool):
    raise ValueError(f"{where}: 'solved' must be a bool, got {t['solved']!r}.")
  if t.get("out_of_context") is not None and not isinstance(t["out_of_context"], bool):
    raise ValueError(f"{where}: 'out_of_context' must be a bool, got {t['out_of_context']!r}.")
  st_tok = t.get("student_tokens")
  if st_tok is not None and (not isinstance(st_tok, int) or isinstance(st_tok, bool) or st_tok < 0):
    raise ValueError(f"{where}: 'student_tokens' must be a non-negative int, got {st_tok!r}.")
  n_student = sum(turn["role"] == "student" for turn in t["turns"])
  st = t["solved_turn"]
  if t["solved"]:
    if not isinstance(st, int) or isinstance(st, bool) or not 1 <= st <= n_student:
      raise ValueError(f"{where}: solved, so 'solved_turn' must be an int in [1, {n_student}] "
                       f"(its number of student turns), got {st!r}.")
  elif st is not None:
    raise ValueError(f"{where}: unsolved, so 'solved_turn' must be null, got {st!r}.")
  return t


def validate_transcripts(transcripts: Iterable[Any]) -> list[dict]:
  return [validate_transcript(t, i) for i, t in enumerate(transcripts)]


def flag(turn: dict, name: str) -> bool:
  return bool(turn.get("flags", {}).get(name, False))


def is_underspecified(t: dict) -> bool:
  """A sharded conversation: marked so, or some turn reveals a shard or is a premature attempt."""
  return bool(t.get("underspecified")) or any(
      flag(turn, "shard") or flag(turn, "premature") for turn in t["turns"])
