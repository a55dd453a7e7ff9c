"""Named random streams: every seed a run uses is derived here, from what it is for.

    seed = rng.stream(config_seed, "rollout", stage=2, step=7)         # problems + dialogue seed
    s = rng.stream(dialogue_seed, "student", turn=t)                    # student turn t's sampling
    u = rng.coin(dialogue_seed, row=1234, turn=2)                       # Q-priming's coin

A stream depends only on its arguments, never on what ran before it, so a resumed run (same
stage and step) and a host that runs a slice of a batch (same global rows: the sampler keys each
row's draws by its global row id) draw exactly what an uninterrupted single-process run draws.

The formulas are the ones the code used before they were named (kept so that transcripts and
params of existing runs stay reproducible): distinct purposes land on distinct integers for
every turn < 500 and stage/step below ~10^4.
"""

from __future__ import annotations

import numpy as np

PURPOSES = ("rollout", "eval_batch", "student", "teacher", "teacher_retry", "qprime")


def stream(seed: int, purpose: str, *, stage: int = 0, step: int = 0, turn: int = 0,
           first_problem: int = 0) -> int:
  """An integer seed for `purpose`:

  rollout        (run seed, stage index, step) -> the seed of a training iteration (its
                 problems and its dialogues)
  eval_batch     (run seed, first problem of the batch) -> the seed of an eval batch's dialogues
  student        (dialogue seed, turn) -> student sampling at student turn `turn`
  teacher        (dialogue seed, turn) -> the LLM teacher's reply after student turn `turn`
  teacher_retry  (dialogue seed, turn) -> a fresh teacher draw replacing a leaking reply
  qprime         (dialogue seed, turn) -> the Q-priming question written at student turn `turn`
  """
  if purpose == "rollout":
    return (seed * 1_000_003 + stage * 10_007 + step) % (1 << 31)
  if purpose == "eval_batch":
    return seed + first_problem
  if purpose == "student":
    return seed * 1000 + 2 * turn
  if purpose == "teacher":
    return seed * 1000 + 2 * turn + 1
  if purpose == "teacher_retry":
    return seed * 1000 + 2 * turn + 1 + 7919
  if purpose == "qprime":
    return seed * 1000 + 999 - turn
  raise ValueError(f"unknown random stream {purpose!r}; known: {', '.join(PURPOSES)}")


def coin(seed: int, row: int, turn: int) -> float:
  """A uniform draw in [0, 1) that depends only on (dialogue seed, global row, turn)."""
  return float(np.random.default_rng((seed, row, turn)).random())
