"""The generated `easy_code` family (sml_jax/tasks/generated_code.py)."""

import shutil

import pytest

from sml_jax.tasks import generated_code, registry


@pytest.fixture(scope="module")
def task():
  return registry.get_task("easy_code")


def test_splits_are_disjoint_by_construction(task):
  train, ev = task.problems("train"), task.problems("eval")
  assert len(ev) >= 100 and len(train) > 3 * len(ev)
  functions = lambda ps: {(p.meta["family"], p.meta["constant"]) for p in ps}
  assert not functions(train) & functions(ev)
  assert not {p.entry_point for p in train} & {p.entry_point for p in ev}
  assert all(generated_code.split_of(p.meta["family"], p.meta["constant"]) == "eval" for p in ev)
  assert task.problems("eval", limit=5, seed=0) == task.problems("eval", limit=5, seed=0)


def test_statements_show_the_first_test_and_the_expected_values_are_right(task):
  p = next(p for p in task.problems("train") if p.id == "easy_code/count/a")
  assert p.statement.startswith("Write a function count_a(s) that returns how many times the "
                                "letter 'a' appears in the string s.")
  assert p.tests == ("assert count_a('aaba') == 3", "assert count_a('hello') == 0",
                     "assert count_a('a') == 1")
  assert p.tests[0] in p.statement and p.entry_point == "count_a"
  with pytest.raises(ValueError, match="unknown"):
    registry.get_task("easy_code", families="add,nope")
  assert {q.meta["family"] for q in registry.get_task("easy_code", families="add").problems(
      "train")} == {"add"}


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
def test_references_pass_and_a_wrong_program_gets_test_feedback(task):
  ev = task.problems("eval")
  # One problem of every family in the split: each reference solution passes its own tests.
  firsts = list({p.meta["family"]: p for p in ev}.values())
  assert all(r.passed for r in task.run(firsts, [p.privileged for p in firsts]))
  p = ev[0]
  wrong = f"```python\ndef {p.entry_point}(*args):\n    return None\n```"
  v = task.verify(p, wrong)
  assert v.attempted and not v.correct
  assert "Failed: " + p.tests[0] in v.feedback
  right = task.verify(p, f"```python\n{p.privileged}\n```")
  assert right.correct
