"""Task registry and curricula."""

import collections
import importlib.util
import os
import random
import subprocess
import sys

import pytest

from sml_jax.tasks import registry
from sml_jax.tasks.base import Problem

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "sharded_instructions_sample.json")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATH_TASKS = {
    "gsm8k": {}, "arithmetic": {"difficulty": 1}, "gsm_symbolic": {"max_difficulty": 3},
    "gsm8k_sharded": {}, "lic_math": {"path": FIXTURE, "strict": False},
}


def test_task_names():
  assert set(registry.TASK_NAMES) == {"gsm8k", "arithmetic", "gsm_symbolic", "gsm8k_sharded",
                                      "lic_math", "mbpp", "humaneval", "tfds", "seqio",
                                      "easy_code"}


@pytest.mark.parametrize("name", sorted(MATH_TASKS))
def test_math_tasks_follow_the_protocol(name):
  task = registry.get_task(name, **MATH_TASKS[name])
  assert task.name == name and task.domain == "math"
  split = "eval" if name == "lic_math" else "train"
  problems = task.problems(split, limit=3)
  assert len(problems) >= 2 and all(isinstance(p, Problem) and p.task == name for p in problems)
  p = problems[0]
  assert len({q.id for q in task.problems(split)}) == len(task.problems(split))  # unique ids
  (good, bad) = task.verify_batch([p, p], [f"Final answer: {p.answer}", "I need a hint."])
  assert good.attempted and good.correct and not bad.attempted
  assert task.leaked(p, f"The final answer is {p.answer}.")


def test_code_tasks_are_lazy():
  if importlib.util.find_spec("sml_jax.tasks.code") is None:
    with pytest.raises(ImportError, match="sml_jax.tasks.code"):
      registry.get_task("humaneval")
  else:
    task = registry.get_task("humaneval", allow_unsafe=True)
    assert task.name == "humaneval" and task.domain == "code"


def test_bad_names_and_arguments():
  with pytest.raises(ValueError, match="valid names: gsm8k, arithmetic"):
    registry.get_task("gsm9k")
  with pytest.raises(ValueError, match="bad arguments"):
    registry.get_task("gsm8k", difficulty=2)
  with pytest.raises(ValueError, match="path="):
    registry.get_task("lic_math")
  with pytest.raises(ValueError, match="difficulty"):
    registry.get_task("arithmetic", difficulty=-1)


CURRICULUM = [("arithmetic", 0.8, {"difficulty": 0}), ("arithmetic", 0.2, {"difficulty": 3})]


def test_sample_problems_follows_weights_and_is_deterministic():
  drawn = registry.sample_problems(CURRICULUM, 2000, random.Random(0))
  share = collections.Counter(p.difficulty for p in drawn)[0] / len(drawn)
  assert 0.76 < share < 0.84, share
  assert drawn == registry.sample_problems(CURRICULUM, 2000, 0)  # int seed == Random(seed)
  rng = random.Random(0)
  first, second = registry.sample_problems(CURRICULUM, 20, rng), registry.sample_problems(
      CURRICULUM, 20, rng)
  assert [p.id for p in first] != [p.id for p in second]  # the rng advances


def test_sample_problems_exhausts_a_pool_before_repeating():
  pool = registry.task_pool("lic_math", {"path": FIXTURE, "strict": False}, split="eval")
  drawn = registry.sample_problems([("lic_math", 1, {"path": FIXTURE, "strict": False})],
                                   4 * len(pool), 3, split="eval")
  for i in range(0, len(drawn), len(pool)):
    assert sorted(p.id for p in drawn[i:i + len(pool)]) == sorted(p.id for p in pool)


def test_sample_problems_mixed_and_zero_weight():
  drawn = registry.sample_problems(
      [("gsm8k", 1.0, {}), ("arithmetic", 1.0), ("gsm_symbolic", 0.0, {})], 200, 1)
  tasks = collections.Counter(p.task for p in drawn)
  assert set(tasks) == {"gsm8k", "arithmetic"} and min(tasks.values()) > 60
  assert len({p.id for p in drawn if p.task == "gsm8k"}) == tasks["gsm8k"]
  assert registry.sample_problems(CURRICULUM, 0, 1) == []


@pytest.mark.parametrize("curriculum, message", [
    ([], "empty"),
    ([("nope", 1.0, {})], "unknown task"),
    ([("gsm8k", -1.0, {})], ">= 0"),
    ([("gsm8k", 0.0, {})], "sum to 0"),
    ([("gsm8k",)], "not \\(task name"),
    ([("gsm8k", 1.0, "x")], "mapping"),
])
def test_bad_curricula(curriculum, message):
  with pytest.raises(ValueError, match=message):
    registry.sample_problems(curriculum, 1, 0)


def test_difficulty_curriculum():
  assert registry.difficulty_curriculum(0) == [("arithmetic", 1.0, {"difficulty": 0})]
  c = registry.difficulty_curriculum(3, review=0.3)
  assert c[0] == ("arithmetic", 0.7, {"difficulty": 3})
  assert [kw["difficulty"] for _, _, kw in c[1:]] == [0, 1, 2]
  assert sum(w for _, w, _ in c) == pytest.approx(1.0)
  drawn = registry.sample_problems(c, 300, 0)
  assert collections.Counter(p.difficulty for p in drawn).most_common(1)[0][0] == 3
  with pytest.raises(ValueError):
    registry.difficulty_curriculum(2, task="gsm8k")


def test_tasks_import_light():
  """The registry, GSM8K, sharding and the verifier's fast path load no jax / TF / gemma / sympy."""
  code = ("import sys; import sml_jax.tasks as t; from sml_jax.tasks import underspecified\n"
          "task = t.get_task('gsm8k')\n"
          "from sml_jax.tasks.base import Problem\n"
          "p = Problem(id='p', task='gsm8k', domain='math', statement='s', privileged='', answer='3')\n"
          "assert task.verify(p, 'Final answer: 3').correct\n"
          "print(sorted(m for m in ('jax', 'tensorflow', 'gemma', 'sympy', 'reasoning_gym')"
          " if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout
  assert out.strip() == "[]"
