"""sml_jax.tasks: problems (public statement + privileged info) and their verifiers.

Import-light: task modules (sympy, reasoning_gym, the code sandbox) load on first use through
`get_task`.
"""

from sml_jax.tasks.base import Problem, Task, Verdict
from sml_jax.tasks.registry import TASK_NAMES, difficulty_curriculum, get_task, sample_problems
from sml_jax.tasks.turns import classify_turn

__all__ = ["Problem", "Task", "Verdict", "TASK_NAMES", "get_task", "sample_problems",
           "difficulty_curriculum", "classify_turn"]
