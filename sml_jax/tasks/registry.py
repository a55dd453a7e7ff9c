"""Tasks by name, and curricula: weighted mixtures of tasks to sample training problems from.

Task modules are imported on first use, so importing the registry stays cheap (no sympy,
reasoning_gym or sandbox imports).

A curriculum is a sequence of (task name, weight, kwargs) entries, e.g. math-only

    [("gsm8k", 1.0, {})]

a mixed math / code curriculum

    [("gsm8k", 0.5, {}), ("mbpp", 0.5, {"timeout": 5.0})]

or one step of a difficulty schedule for generated math (`difficulty_curriculum(2)`):

    [("arithmetic", 0.75, {"difficulty": 2}), ("arithmetic", 0.125, {"difficulty": 0}), ...]
"""

from __future__ import annotations

import importlib
import json
import random
from typing import Any, Mapping, Sequence

from sml_jax.tasks.base import Problem, Task

# name -> (module, class)
_TASKS: dict[str, tuple[str, str]] = {
    "gsm8k": ("sml_jax.tasks.gsm8k", "GSM8KTask"),
    "arithmetic": ("sml_jax.tasks.generated_math", "ArithmeticTask"),
    "gsm_symbolic": ("sml_jax.tasks.generated_math", "GSMSymbolicTask"),
    "gsm8k_sharded": ("sml_jax.tasks.underspecified", "GSM8KShardedTask"),
    "lic_math": ("sml_jax.tasks.underspecified", "LiCMathTask"),
    "mbpp": ("sml_jax.tasks.code", "MBPPTask"),
    "humaneval": ("sml_jax.tasks.code", "HumanEvalTask"),
    "easy_code": ("sml_jax.tasks.generated_code", "EasyCodeTask"),
    # Your own data: a tfds dataset or a seqio Task, with a field mapping (tasks/external.py).
    "tfds": ("sml_jax.tasks.external", "TfdsTask"),
    "seqio": ("sml_jax.tasks.external", "SeqioTask"),
}
TASK_NAMES: tuple[str, ...] = tuple(_TASKS)

CurriculumEntry = tuple[str, float, Mapping[str, Any]]

_POOLS: dict[tuple[str, str, str], list[Problem]] = {}


def get_task(name: str, **kwargs: Any) -> Task:
  """A task instance by registry name, constructed with `kwargs` (e.g. `path=`, `difficulty=`)."""
  if name not in _TASKS:
    raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASK_NAMES)}")
  module_name, class_name = _TASKS[name]
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ImportError(f"task {name!r} needs module {module_name}, which failed to import: {e}") from e
  cls = getattr(module, class_name, None)
  if cls is None:
    raise ImportError(f"task {name!r}: {module_name} has no class {class_name}")
  try:
    return cls(**kwargs)
  except TypeError as e:  # unexpected / missing keyword arguments
    raise ValueError(f"bad arguments {sorted(kwargs)} for task {name!r}: {e}") from None


def _entries(curriculum: Sequence[Any]) -> list[CurriculumEntry]:
  """Validates a curriculum; entries may omit kwargs: (name, weight)."""
  if not curriculum:
    raise ValueError("empty curriculum")
  entries = []
  for entry in curriculum:
    if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
      raise ValueError(f"curriculum entry {entry!r} is not (task name, weight[, kwargs])")
    name, weight, kwargs = (*entry, {}) if len(entry) == 2 else entry
    if name not in _TASKS:
      raise ValueError(f"unknown task {name!r} in curriculum; valid names: {', '.join(TASK_NAMES)}")
    if not isinstance(weight, (int, float)) or weight < 0:
      raise ValueError(f"curriculum weight for {name!r} must be a number >= 0, got {weight!r}")
    if not isinstance(kwargs, Mapping):
      raise ValueError(f"curriculum kwargs for {name!r} must be a mapping, got {kwargs!r}")
    entries.append((name, float(weight), dict(kwargs)))
  if sum(w for _, w, _ in entries) <= 0:
    raise ValueError("curriculum weights sum to 0")
  return entries


def task_pool(name: str, kwargs: Mapping[str, Any] | None = None, split: str = "train") -> list[Problem]:
  """All problems of task `name` (built with `kwargs`) in `split`, cached per process."""
  kwargs = dict(kwargs or {})
  key = (name, json.dumps(kwargs, sort_keys=True, default=str), split)
  if key not in _POOLS:
    _POOLS[key] = get_task(name, **kwargs).problems(split)
    if not _POOLS[key]:
      raise ValueError(f"task {name!r} {kwargs} has no problems in split {split!r}")
  return _POOLS[key]


def sample_problems(curriculum: Sequence[Any], n: int, rng: random.Random | int,
                    split: str = "train") -> list[Problem]:
  """`n` problems drawn from a weighted mixture of tasks.

  Each draw picks an entry with probability proportional to its weight, then a problem of that
  entry's pool; within one call an entry repeats a problem only after using its whole pool.

  Args:
    curriculum: (task name, weight, kwargs) entries; see the module docstring.
    n: number of problems.
    rng: a `random.Random` (advanced by the call) or an int seed.
    split: the split the pools come from.
  Returns:
    n problems, in draw order.
  """
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  entries = _entries(curriculum)
  rng = random.Random(rng) if isinstance(rng, int) else rng
  picks = rng.choices(range(len(entries)), weights=[w for _, w, _ in entries], k=n)
  queues: dict[int, list[Problem]] = {}
  out = []
  for i in picks:
    if not queues.get(i):  # (re)fill with a fresh permutation of the pool
      name, _, kwargs = entries[i]
      pool = list(task_pool(name, kwargs, split))
      rng.shuffle(pool)
      queues[i] = pool
    out.append(queues[i].pop())
  return out


def difficulty_curriculum(level: int, review: float = 0.25, task: str = "arithmetic") -> list[CurriculumEntry]:
  """Generated-math curriculum at `level`: weight 1 - `review` on it, `review` spread evenly over
  the easier levels (so earlier skills are rehearsed). Level 0 gets all the weight."""
  if task != "arithmetic":
    raise ValueError(f"difficulty_curriculum supports 'arithmetic' levels only, got {task!r}")
  if not isinstance(level, int) or level < 0:
    raise ValueError(f"level must be an int >= 0, got {level!r}")
  if not 0.0 <= review < 1.0:
    raise ValueError(f"review must be in [0, 1), got {review}")
  if level == 0 or review == 0.0:
    return [(task, 1.0, {"difficulty": level})]
  easier = [(task, review / level, {"difficulty": lvl}) for lvl in range(level)]
  return [(task, 1.0 - review, {"difficulty": level}), *easier]
