"""Code tasks: program extraction, MBPP / HumanEval loading and splits, sandboxed verification with
failing-test feedback, leak check, and the reference solutions over the full datasets."""

import dataclasses
import json
import re
import subprocess
import sys

import pytest

from sml_jax.tasks import code, code_exec
from sml_jax.tasks.code_extract import extract_program, is_function_body


@pytest.fixture(scope="module")
def mbpp():
  return code.MBPPTask(timeout=10.0)


@pytest.fixture(scope="module")
def humaneval():
  return code.HumanEvalTask(timeout=10.0)


def by_id(task, pid):
  return next(p for p in task.all_problems() if p.id == pid)


# -- extraction --------------------------------------------------------------------------------

def test_extracts_fenced_python():
  text = "Here:\n```python\ndef f(x):\n    return x\n```\nand a usage:\n```\nprint(f(2))\n```"
  assert extract_program(text, "f") == "def f(x):\n    return x"
  # The later block defining the entry point is the revision; other languages are ignored.
  text = ("```py\ndef f(x):\n    return 1\n```\nOops, fixed:\n```python3\ndef f(x):\n    return 2\n```"
          "\n```bash\npython f.py\n```")
  assert extract_program(text, "f") == "def f(x):\n    return 2"
  # No block defines the entry point: the largest one.
  assert extract_program("```\nx = 1\n```\n```\nimport os\ny = 2\nz = 3\n```", "g") == \
      "import os\ny = 2\nz = 3"
  # A fence the sampler left open; an indented fence (inside a list).
  assert extract_program("Sure!\n```python\ndef f():\n    return [", "f") == "def f():\n    return ["
  assert extract_program("1. Code:\n   ```python\n   def f():\n       pass\n   ```", "f") == \
      "def f():\n    pass"


def test_extracts_unfenced_code_like_block():
  text = ("I think this works.\nimport math\n\ndef area(r):\n    return math.pi * r ** 2\n\n"
          "print(area(1))\nThis computes the area. Is that right?")
  assert extract_program(text, "area") == ("import math\n\ndef area(r):\n    return math.pi * r ** 2"
                                           "\n\nprint(area(1))")
  # Lines that break the parse at the end are dropped.
  assert extract_program("def f(x):\n    return x\n  which returns x.", "f") == "def f(x):\n    return x"


def test_no_program_in_prose():
  for text in ["", "What should the function return for an empty list?",
               "Define the function first. Then return the sum.", "```text\nhello\n```"]:
    assert extract_program(text, "f") is None, text
  with pytest.raises(TypeError):
    extract_program(None)


def test_function_body_detection():
  assert is_function_body("    return sorted(x)", "f")
  assert is_function_body("result = []\nfor v in x:\n    result.append(v)\nreturn result", "f")
  assert not is_function_body("def f(x):\n    return x", "f")
  assert not is_function_body("def helper(x):\n    return x", "f")


# -- loading -------------------------------------------------------------------------------------

def test_mbpp_splits_and_statements(mbpp):
  train, evals = mbpp.problems("train"), mbpp.problems("eval")
  assert (len(train), len(evals), len(mbpp.all_problems())) == (474, 500, 974)
  assert sorted(p.meta["task_id"] for p in evals) == list(range(11, 511))
  assert {p.meta["task_id"] for p in train} == set(range(1, 11)) | set(range(511, 975))
  p = by_id(mbpp, "mbpp/2")
  assert (p.task, p.domain, p.entry_point) == ("mbpp", "code", "similar_elements")
  assert p.statement.startswith("Write a function to find the similar elements")
  assert p.tests[0] in p.statement and p.tests[1] not in p.statement  # one test shown
  assert "def similar_elements" in p.privileged and "\r" not in p.privileged
  assert all(p.entry_point and len(p.tests) >= 3 for p in mbpp.all_problems())
  assert "root = Node(1)" in by_id(mbpp, "mbpp/367").statement  # setup the shown test needs
  # Seeded, deterministic subsets.
  assert [p.id for p in mbpp.problems("eval", limit=5, seed=1)] == \
      [p.id for p in mbpp.problems("eval", limit=5, seed=1)]
  assert [p.id for p in mbpp.problems("eval", limit=5, seed=1)] != \
      [p.id for p in mbpp.problems("eval", limit=5, seed=2)]
  with pytest.raises(ValueError, match="unknown split"):
    mbpp.problems("test")


def test_humaneval_is_eval_only(humaneval):
  problems = humaneval.problems("eval")
  assert len(problems) == 164 and len({p.id for p in problems}) == 164
  p = by_id(humaneval, "HumanEval/0")
  assert p.entry_point == "has_close_elements" and "def has_close_elements" in p.statement
  assert p.privileged.startswith(p.meta["prompt"]) and "check(has_close_elements)" in p.tests[0]
  with pytest.raises(ValueError, match="no problems in split 'train'"):
    humaneval.problems("train")


def test_malformed_files_name_file_and_line(tmp_path):
  good = {"task_id": 1, "text": "t", "code": "def f():\n  return 1", "test_list": ["assert f() == 1"]}
  cases = {
      "Expecting property name": "{oops",
      "missing or mistyped field(s) test_list": json.dumps({**good, "test_list": "assert 1"}),
      "duplicate task_id 1": json.dumps(good),
      "test_list must be non-empty": json.dumps({**good, "task_id": 2, "test_list": []}),
  }
  for message, bad_line in cases.items():
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + bad_line + "\n")
    with pytest.raises(ValueError, match=rf"mbpp.jsonl:3: malformed MBPP line: .*{re.escape(message)}"):
      code.MBPPTask(path=str(path)).all_problems()
  he = tmp_path / "he.jsonl"
  he.write_text(json.dumps({"task_id": "X/0", "prompt": "def g():\n", "canonical_solution": "",
                            "test": "", "entry_point": "f"}) + "\n")
  with pytest.raises(ValueError, match=r"he.jsonl:1: .*does not define entry_point 'f'"):
    code.HumanEvalTask(path=str(he)).all_problems()
  with pytest.raises(FileNotFoundError, match="MBPP file not found"):
    code.MBPPTask(path=str(tmp_path / "nope.jsonl")).all_problems()
  with pytest.raises(ValueError, match="timeout"):
    code.MBPPTask(timeout=0)


def test_user_path_is_read(tmp_path):
  rows = [{"task_id": i, "text": f"Return {i}.", "code": f"def f():\n  return {i}",
           "test_list": [f"assert f() == {i}"] * 3} for i in (5, 20)]
  path = tmp_path / "mine.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  task = code.MBPPTask(path=str(path))
  assert [p.id for p in task.problems("train")] == ["mbpp/5"]
  assert [p.id for p in task.problems("eval")] == ["mbpp/20"]


# -- verification ----------------------------------------------------------------------------------

def test_verify_correct_wrong_and_no_attempt(mbpp):
  p = by_id(mbpp, "mbpp/2")
  right = f"Here is my solution:\n```python\n{p.privileged}\n```"
  wrong = ("```python\ndef similar_elements(a, b):\n    print('checking', a)\n"
           "    return tuple(set(a) | set(b))\n```")
  crash = "def similar_elements(a, b):\n    return a[10]\n"
  question = "Should the result be sorted?"
  v_right, v_wrong, v_crash, v_q = mbpp.verify_batch([p] * 4, [right, wrong, crash, question])
  assert v_right.attempted and v_right.correct and v_right.feedback == "All 3 tests passed."
  assert v_wrong.attempted and not v_wrong.correct
  # The teacher sees the failing assertion, what the left side gave, and the program's prints.
  assert "3 of 3 tests failed" in v_wrong.feedback and p.tests[0] in v_wrong.feedback
  assert "evaluated to: (3, 4, 5, 6, 7, 10)" in v_wrong.feedback
  assert "checking (3, 4, 5, 6)" in v_wrong.feedback
  assert not v_crash.correct and "IndexError: tuple index out of range" in v_crash.feedback
  assert 'File "solution.py", line 2, in similar_elements' in v_crash.feedback
  assert (v_q.attempted, v_q.correct, v_q.extracted) == (False, False, None)
  assert mbpp.verify(p, right) == v_right


def test_cheap_hacks_do_not_pass(mbpp):
  p = by_id(mbpp, "mbpp/2")
  hacks = {
      "exit": "```python\nimport sys\ndef similar_elements(a, b):\n    return 0\nsys.exit(0)\n```",
      "os_exit": "```python\nimport os\ndef similar_elements(a, b):\n    return 0\nos._exit(0)\n```",
      "fake_events": ("```python\nprint('{\"event\": \"done\"}')\nimport os\n"
                      "os.write(1, b'{\"event\": \"test\", \"test\": 0, \"ok\": true}\\n')\n"
                      "def similar_elements(a, b):\n    return 0\n```"),
      "timeout": "```python\ndef similar_elements(a, b):\n    while True: pass\n```",
  }
  task = code.MBPPTask(timeout=2.0)
  verdicts = task.verify_batch([p] * len(hacks), list(hacks.values()))
  feedback = dict(zip(hacks, (v.feedback for v in verdicts)))
  assert not any(v.correct for v in verdicts), feedback
  assert "SystemExit: 0" in feedback["exit"]
  assert "exited (code 0) before the tests ran" in feedback["os_exit"]
  assert "Timed out (limit 2 s) while running: " + p.tests[0] in feedback["timeout"]


def test_humaneval_accepts_whole_function_or_body(humaneval):
  p = by_id(humaneval, "HumanEval/0")  # prompt imports List; the reply may omit the import
  whole = ("```python\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
           "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)"
           " for b in numbers[i + 1:])\n```")
  body = ("```python\nfor i, a in enumerate(numbers):\n    for b in numbers[i + 1:]:\n"
          "        if abs(a - b) < threshold:\n            return True\nreturn False\n```")
  wrong = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
  v = humaneval.verify_batch([p] * 3, [whole, body, wrong])
  assert [x.correct for x in v] == [True, True, False], [x.feedback for x in v]
  assert "Failed: assert candidate(" in v[2].feedback and "evaluated to: False" in v[2].feedback


def test_leak_check_needs_a_working_solution(mbpp):
  p = by_id(mbpp, "mbpp/2")
  assert mbpp.leaked(p, f"Just use this:\n```python\n{p.privileged}\n```")
  assert not mbpp.leaked(p, "Your code:\n```python\ndef similar_elements(a, b):\n    return a\n```"
                            "\nreturns the first tuple; think about what both have in common.")
  assert not mbpp.leaked(p, "Think about set intersection.")


def test_verification_imports_no_jax():
  out = subprocess.run(
      [sys.executable, "-c", "import sys; from sml_jax.tasks import code; "
       "t = code.MBPPTask(); p = t.problems('eval', limit=1)[0]; "
       "assert t.verify(p, p.privileged).correct; "
       "print(sorted({'jax', 'tensorflow', 'gemma', 'numpy'} & set(sys.modules)))"],
      capture_output=True, text=True, timeout=60)
  assert out.stdout.strip() == "[]", out


# -- full datasets -----------------------------------------------------------------------------

@pytest.mark.parametrize("every", [pytest.param(1, marks=pytest.mark.slow, id="all"),
                                   pytest.param(8, id="every_8th")])
def test_humaneval_canonical_solutions_pass_and_pass_bodies_fail(humaneval, every):
  """Default: a fixed subset (every 8th problem, 21 of 164); all of them is the `slow` run."""
  problems = humaneval.all_problems()[::every]
  canonical = humaneval.run(problems, [p.privileged for p in problems])
  failed = [p.id for p, r in zip(problems, canonical) if not r.passed]
  assert failed == [], failed
  stubs = humaneval.run(problems, [p.meta["prompt"] + "    pass\n" for p in problems])
  passed = [p.id for p, r in zip(problems, stubs) if r.passed]
  assert passed == [], passed
  print(f"HumanEval: {len(problems) - len(failed)}/{len(problems)} canonical pass, "
        f"{len(passed)}/{len(problems)} stubs pass")


# The data's own errors: 341 and 642 expect a set iteration order CPython does not give, 596 the
# sys.getsizeof values of another Python version.
MBPP_DATA_ERRORS = ["mbpp/341", "mbpp/596", "mbpp/642"]


@pytest.mark.parametrize("every", [pytest.param(1, marks=pytest.mark.slow, id="all"),
                                   pytest.param(31, id="every_31st")])
def test_mbpp_reference_solutions_pass_where_the_data_allows(every):
  """Default: a fixed subset (every 31st problem, 32 of 974, plus the three with data errors);
  all of them is the `slow` run."""
  task = code.MBPPTask(timeout=20.0)  # mbpp/123 alone takes ~3-4 s on a busy core
  problems = task.all_problems()
  problems = [p for i, p in enumerate(problems) if i % every == 0 or p.id in MBPP_DATA_ERRORS]
  reports = task.run(problems, [p.privileged for p in problems])
  failed = {p.id: r.feedback for p, r in zip(problems, reports) if not r.passed}
  print(f"MBPP reference solutions: {len(problems) - len(failed)}/{len(problems)} pass; "
        f"failing: {sorted(failed)}")
  assert sorted(failed) == MBPP_DATA_ERRORS, failed


REWARD_HACKS = {
    "always_equal": ("class Any:\n    def __eq__(self, other):\n        return True\n"
                     "    __hash__ = object.__hash__\n"
                     "def similar_elements(a, b):\n    return Any()\n"),
    "int_subclass": ("class I(tuple):\n    def __eq__(self, other):\n        return True\n"
                     "    __hash__ = tuple.__hash__\n"
                     "def similar_elements(a, b):\n    return I((0,))\n"),
    "int_subclass_lies": ("class I(int):\n    def __eq__(self, o):\n        return True\n"
                          "    def __int__(self):\n        return 3\n"
                          "def similar_elements(a, b):\n    return I(0)\n"),
    "truthy": ("class T:\n    def __bool__(self):\n        return True\n    def __eq__(self, o):\n"
               "        return self\n    def __ne__(self, o):\n        return self\n"
               "def similar_elements(a, b):\n    return T()\n"),
    "patch_isinstance": ("import builtins\nbuiltins.isinstance = lambda *a: True\n"
                         "def similar_elements(a, b):\n    return (0,)\n"),
    "patch_at_call": ("import builtins\ndef similar_elements(a, b):\n"
                      "    builtins.set = lambda *a: {1}\n    return (1,)\n"),
    "patch_exec": ("import builtins\nbuiltins.exec = lambda *a, **k: None\n"
                   "builtins.compile = lambda *a, **k: None\n"
                   "def similar_elements(a, b):\n    return 0\n"),
    "shadow_builtin": ("def set(*a):\n    class A:\n        def __eq__(s, o): return True\n"
                       "    return A()\ndef similar_elements(a, b):\n    return 0\n"),
}


def test_reward_hacks_do_not_pass(mbpp):
  """Programs that fake equality or patch builtins must not pass, through the real sandbox."""
  p = by_id(mbpp, "mbpp/2")
  # A test shaped like HumanEval's: arithmetic and a comparison on the returned value.
  arithmetic = dataclasses.replace(p, tests=("assert abs(similar_elements(1, 2) - 5) < 1e-9",))
  hacks = dict(REWARD_HACKS)
  hacks["fake_sub"] = ("class Z:\n    def __sub__(self, o):\n        return 0\n"
                       "def similar_elements(a, b):\n    return Z()\n")
  problems = [arithmetic if name == "fake_sub" else p for name in hacks]
  verdicts = mbpp.verify_batch(problems, [f"```python\n{c}```" for c in hacks.values()])
  feedback = {name: v.feedback for name, v in zip(hacks, verdicts)}
  assert all(v.attempted for v in verdicts)
  assert not any(v.correct for v in verdicts), feedback
  assert "cannot compare an object of type Any" in feedback["always_equal"]
  assert "replaced builtins.isinstance" in feedback["patch_isinstance"]
  assert "replaced builtins.set" in feedback["patch_at_call"]
  # The honest program still passes, and so do int subclasses with honest values (bool, IntEnum).
  honest = ("import enum\nclass E(enum.IntEnum):\n    A = 3\n"
            "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b)))\n")
  ok = dataclasses.replace(p, tests=p.tests + ("assert E.A == 3 and True == 1",))
  assert mbpp.verify(ok, f"```python\n{honest}```").correct
