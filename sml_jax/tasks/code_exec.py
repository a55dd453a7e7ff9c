"""Run programs against their tests in the sandbox and turn the outcome into teacher feedback.

    reports = run_tests([program], [("assert f(1) == 2",)], timeout=5.0)
    reports[0].passed, reports[0].feedback

Each run is one sandbox process executing `code_harness` (see there for the event protocol).
Standard library only (no jax): verifiers call this from worker threads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from typing import Sequence

from sml_jax import sandbox

_HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "code_harness.py")
FEEDBACK_CHARS = 3000      # cap on the whole feedback text
_SHOWN_FAILURES = 3        # failing tests described in the feedback
_ERROR_TAIL_LINES = 12     # traceback lines kept per failure
_OUTPUT_CHARS = 500        # program output quoted in the feedback


@dataclasses.dataclass(frozen=True)
class TestOutcome:
  index: int
  ok: bool
  kind: str = ""           # for failures: "assert" (a test assertion failed) or "error" (raised)
  assertion: str = ""      # the failing assert statement
  got: str = ""            # repr of its left side, for `assert left == right`
  error: str = ""          # traceback, for kind "error"


@dataclasses.dataclass(frozen=True)
class TestReport:
  passed: bool                     # every test ran and passed
  outcomes: tuple[TestOutcome, ...]  # the tests that finished, in order
  num_tests: int
  stage_error: str = ""            # "program" / "setup": it raised before the tests
  error: str = ""                  # that traceback
  timed_out: bool = False
  running: int | None = None       # the test running when the run ended (timeout / crash)
  exit_code: int = 0
  output: str = ""                 # what the program printed (its stdout and stderr)
  feedback: str = ""               # the teacher's view: what failed and how, capped


def _harness_source() -> str:
  with open(_HARNESS, encoding="utf-8") as f:
    return f.read()


def _tail(text: str, lines: int = _ERROR_TAIL_LINES) -> str:
  return "\n".join(text.rstrip("\n").split("\n")[-lines:])


def _events(stdout: str, nonce: str) -> list[dict]:
  events = []
  for line in stdout.splitlines():
    if line.startswith(nonce):
      try:
        events.append(json.loads(line[len(nonce):]))
      except json.JSONDecodeError:
        pass  # cut by the output cap
  return events


def feedback_text(report: TestReport, tests: Sequence[str], timeout: float) -> str:
  """Human-readable verifier output (capped): what the teacher sees."""
  n = report.num_tests
  if report.passed:
    return f"All {n} test{'s' * (n != 1)} passed."
  parts = []
  if report.stage_error:
    where = "The program" if report.stage_error == "program" else "The test setup"
    parts.append(f"{where} raised an error before any test ran:\n{_tail(report.error)}")
  failed = [o for o in report.outcomes if not o.ok]
  if failed:
    parts.append(f"{len(failed)} of {n} tests failed.")
  for o in failed[:_SHOWN_FAILURES]:
    if o.kind == "assert":
      text = f"Failed: {o.assertion}"
      if o.got:
        text += f"\n  the left side evaluated to: {o.got}"
    else:
      test = tests[o.index] if "\n" not in tests[o.index].strip() else f"test {o.index + 1}"
      text = f"Error in {test}:\n{_tail(o.error)}"
    parts.append(text)
  if len(failed) > _SHOWN_FAILURES:
    parts.append(f"({len(failed) - _SHOWN_FAILURES} more failing tests not shown.)")
  if report.running is not None:
    test = tests[report.running].strip()
    test = test if "\n" not in test else f"test {report.running + 1}"
    if report.timed_out:
      parts.append(f"Timed out (limit {timeout:g} s) while running: {test}")
    else:
      parts.append(f"The program crashed (exit code {report.exit_code}) while running: {test}")
  elif not report.stage_error and len(report.outcomes) < n:
    if report.timed_out:
      parts.append(f"Timed out (limit {timeout:g} s) before the tests ran.")
    else:
      parts.append(f"The program exited (code {report.exit_code}) before the tests ran; "
                   "do not call exit() or read input.")
  if report.output.strip():
    out = report.output.strip()
    out = out if len(out) <= _OUTPUT_CHARS else "..." + out[-_OUTPUT_CHARS:]
    parts.append(f"Program output:\n{out}")
  text = "\n".join(parts)
  return text if len(text) <= FEEDBACK_CHARS else text[:FEEDBACK_CHARS - 15] + "\n[truncated]"


def _report(result: sandbox.RunResult, nonce: str, tests: Sequence[str], timeout: float) -> TestReport:
  events = _events(result.stdout, nonce)
  outcomes, stage_error, error, running, done = [], "", "", None, False
  for e in events:
    kind = e.get("event")
    if kind == "error":
      stage_error, error = e.get("stage", "program"), e.get("error", "")
    elif kind == "start":
      running = e["test"]
    elif kind == "test":
      outcomes.append(TestOutcome(index=e["test"], ok=e["ok"], kind=e.get("kind", ""),
                                  assertion=e.get("assertion", ""), got=e.get("got", ""),
                                  error=e.get("error", "")))
      running = None
    elif kind == "done":
      done = True
  passed = done and len(outcomes) == len(tests) and all(o.ok for o in outcomes)
  report = TestReport(passed=passed, outcomes=tuple(outcomes), num_tests=len(tests),
                      stage_error=stage_error, error=error, timed_out=result.timed_out,
                      running=running, exit_code=result.exit_code, output=result.stderr)
  return dataclasses.replace(report, feedback=feedback_text(report, tests, timeout))


def run_tests(programs: Sequence[str], tests: Sequence[Sequence[str]],
              setups: Sequence[str] | None = None, *, timeout: float = 5.0,
              allow_unsafe: bool = False, workers: int | None = None,
              entry_points: Sequence[str | None] | None = None) -> list[TestReport]:
  """Runs programs[i], then setups[i], then each of tests[i] (python statements, usually asserts),
  each program in its own sandbox, `workers` at a time. `timeout`: wall-clock seconds per program
  (all its tests together). `entry_points[i]`: the function tests[i] call (it may shadow a
  builtin, like MBPP's `sum`; other names of the program that shadow builtins are hidden from the
  tests). Returns one TestReport per program, in order."""
  if len(tests) != len(programs) or (setups is not None and len(setups) != len(programs)):
    raise ValueError(f"Got {len(programs)} programs, {len(tests)} test lists and "
                     f"{'no' if setups is None else len(setups)} setups; they must match.")
  setups = setups if setups is not None else [""] * len(programs)
  entry_points = entry_points if entry_points is not None else [None] * len(programs)
  nonces = [secrets.token_hex(16) for _ in programs]
  stdins = [json.dumps({"nonce": nonce, "program": p, "setup": s, "tests": list(t),
                        "entry_point": e})
            for nonce, p, s, t, e in zip(nonces, programs, setups, tests, entry_points)]
  harness = _harness_source()
  results = sandbox.run_many([harness] * len(programs), timeout, stdins=stdins, workers=workers,
                             allow_unsafe=allow_unsafe)
  return [_report(r, nonce, t, timeout) for r, nonce, t in zip(results, nonces, tests)]
