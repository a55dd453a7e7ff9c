"""`easy_code`: small generated Python functions with unit tests, easy enough for a 270M model.

Each problem asks for one short function from a family of templates, with a constant that makes
it distinct ("Write a function add_7(x) that returns x plus 7."): arithmetic on an int, a string
repeated or searched, an item of a list. Three asserts per problem; the statement shows the first,
as MBPP's do, so the function's name and call are known; the hint teacher gets the failing test's
output (`CodeTask.verify_batch`: the programs run in the bubblewrap sandbox).

    EasyCodeTask().problems("eval")    # e.g. a problem whose statement is
    # 'Write a function add_82(x) that returns x plus 82.\nYour code should pass this test:\n
    #  assert add_82(3) == 85'   (tests: add_82(3) == 85, add_82(10) == 92, add_82(-4) == 78)

Splits are disjoint by construction: a problem's split is a hash of its family and constant
(80% train, 20% eval), so no eval function is ever a training function. Deterministic, offline.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import string
from typing import Any, Callable

from sml_jax.tasks.base import Problem
from sml_jax.tasks.code import CodeTask

_LETTERS = tuple(string.ascii_lowercase)


@dataclasses.dataclass(frozen=True)
class Family:
  """A template: `signature` / `text` / `body` are formatted with the constant `k`; each test
  calls the function on one of `inputs` (python literals) and expects `expected(k, *args)`."""
  name: str
  constants: tuple
  signature: str                   # "add_{k}(x)"
  text: str                        # "returns x plus {k}"
  body: str                        # "return x + {k}"
  inputs: tuple[str, ...]          # argument lists as source text: "3", "'ab', 2"
  expected: Callable[..., Any]


def _inputs_with(k: str) -> tuple[str, ...]:
  return (f"'{k}{k}b{k}'", "'hello'", f"'{k}'")


FAMILIES: tuple[Family, ...] = (
    Family("add", tuple(range(2, 200)), "add_{k}(x)", "returns x plus {k}", "return x + {k}",
           ("3", "10", "-4"), lambda k, x: x + k),
    Family("sub", tuple(range(2, 200)), "minus_{k}(x)", "returns x minus {k}", "return x - {k}",
           ("3", "100", "-4"), lambda k, x: x - k),
    Family("mul", tuple(range(2, 31)), "times_{k}(x)", "returns x multiplied by {k}",
           "return x * {k}", ("3", "0", "-2"), lambda k, x: x * k),
    Family("square_plus", tuple(range(1, 51)), "square_plus_{k}(x)",
           "returns the square of x plus {k}", "return x * x + {k}", ("3", "0", "-2"),
           lambda k, x: x * x + k),
    Family("multiple", tuple(range(2, 31)), "is_multiple_of_{k}(n)",
           "returns True if n is divisible by {k}, else False", "return n % {k} == 0",
           ("0", "1", "60"), lambda k, n: n % k == 0),
    Family("larger_plus", tuple(range(1, 51)), "larger_plus_{k}(a, b)",
           "returns the larger of a and b, plus {k}", "return max(a, b) + {k}",
           ("3, 8", "10, -1", "5, 5"), lambda k, a, b: max(a, b) + k),
    Family("sum_plus", tuple(range(1, 51)), "sum_plus_{k}(nums)",
           "returns the sum of the numbers in the list nums, plus {k}", "return sum(nums) + {k}",
           ("[1, 2, 3]", "[]", "[10, -4]"), lambda k, nums: sum(nums) + k),
    Family("repeat", tuple(range(2, 10)), "repeat_{k}(s)",
           "returns the string s repeated {k} times", "return s * {k}", ("'ab'", "'x'", "''"),
           lambda k, s: s * k),
    Family("count", _LETTERS, "count_{k}(s)",
           "returns how many times the letter '{k}' appears in the string s",
           "return s.count('{k}')", (), lambda k, s: s.count(k)),
    Family("starts", _LETTERS, "starts_with_{k}(s)",
           "returns True if the string s starts with the letter '{k}', else False",
           "return s.startswith('{k}')", (), lambda k, s: s.startswith(k)),
    Family("item", tuple(range(0, 5)), "item_{k}(items)",
           "returns the item at index {k} of the list items", "return items[{k}]",
           ("[10, 20, 30, 40, 50, 60]", "['a', 'b', 'c', 'd', 'e', 'f']", "[5, 4, 3, 2, 1, 0]"),
           lambda k, items: items[k]),
)
_SPLIT_EVAL = range(80, 100)       # hash buckets of the eval split (20%)


def split_of(family: str, k) -> str:
  """The split of a problem: a function of its family and constant only."""
  bucket = int(hashlib.sha256(f"{family}:{k}".encode()).hexdigest(), 16) % 100
  return "eval" if bucket in _SPLIT_EVAL else "train"


def _problem(f: Family, k) -> Problem:
  signature = f.signature.format(k=k)
  entry = signature.split("(", 1)[0]
  inputs = f.inputs or _inputs_with(k)
  tests = []
  for args in inputs:
    values = ast.literal_eval(f"({args},)")
    tests.append(f"assert {entry}({args}) == {f.expected(k, *values)!r}")
  statement = (f"Write a function {signature} that {f.text.format(k=k)}.\n"
               f"Your code should pass this test:\n{tests[0]}")
  return Problem(id=f"easy_code/{f.name}/{k}", task=EasyCodeTask.name, domain="code",
                 statement=statement, privileged=f"def {signature}:\n    {f.body.format(k=k)}",
                 tests=tuple(tests), entry_point=entry,
                 meta={"family": f.name, "constant": k, "split": split_of(f.name, k)})


class EasyCodeTask(CodeTask):
  """Generated one-line functions (see `FAMILIES`); `families=` keeps a comma-separated subset."""

  name = "easy_code"

  def __init__(self, families: str | None = None, **kwargs):
    super().__init__(**kwargs)
    known = {f.name: f for f in FAMILIES}
    names = [n.strip() for n in families.split(",") if n.strip()] if families else list(known)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
      raise ValueError(f"easy_code families: unknown {unknown or names}; known: {', '.join(known)}")
    self.families = tuple(known[n] for n in names)

  def _load(self) -> list[Problem]:
    return [_problem(f, k) for f in self.families for k in f.constants]

  def _split_of(self, problem: Problem) -> str:
    return problem.meta["split"]
