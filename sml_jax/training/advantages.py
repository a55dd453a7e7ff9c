"""GRPO advantages: rewards normalised within each group of conversations on the same problem.

    A_i = (r_i - mean_group(r)) / (std_group(r) + eps)

`rewards` [N] holds consecutive groups: rows [k*g, (k+1)*g) are the g conversations of problem
k. The rewards are the conversation-level (binary, turn-discounted) rewards computed upstream by
the dialogue code. std is the sample standard deviation (ddof=1, as in tunix and TRL) unless
`ddof=0`; a group whose rewards are all equal gets advantage 0 (no signal), not 0/eps noise.
`scale_by_std=False` gives Dr. GRPO's unscaled advantage r - mean. Pure numpy.

Example: rewards [1, 0, 0, 0] with g = 4: mean 0.25, std (ddof=1) 0.5, A = [1.5, -0.5, -0.5, -0.5]
(with eps = 0).
"""

from __future__ import annotations

import numpy as np


def check_group_size(group_size: int, field: str = "group_size") -> int:
  if not isinstance(group_size, (int, np.integer)) or group_size < 2:
    raise ValueError(f"{field} must be an integer >= 2 for GRPO (advantages are normalised "
                     f"within a group of conversations per problem), got {group_size!r}.")
  return int(group_size)


def grpo_advantages(rewards, group_size: int, eps: float = 1e-6, *, scale_by_std: bool = True,
                    ddof: int = 1) -> np.ndarray:
  """rewards [N] (N a multiple of group_size) -> advantages [N] float32."""
  group_size = check_group_size(group_size)
  r = np.asarray(rewards, np.float64)
  if r.ndim != 1 or r.size % group_size:
    raise ValueError(f"rewards must be a 1-D array whose length is a multiple of group_size="
                     f"{group_size}, got shape {r.shape}.")
  if not np.all(np.isfinite(r)):
    raise ValueError("rewards contain NaN or inf.")
  if eps < 0:
    raise ValueError(f"eps must be >= 0, got {eps}.")
  groups = r.reshape(-1, group_size)
  centred = groups - groups.mean(axis=1, keepdims=True)
  if scale_by_std:
    std = groups.std(axis=1, ddof=ddof, keepdims=True)
    centred = np.divide(centred, std + eps, out=np.zeros_like(centred), where=std > 0)
  return centred.reshape(-1).astype(np.float32)
