"""Checkpoints with orbax `CheckpointManager`: every N steps, keep K, save on SIGTERM, exact resume.

    ckpt = Checkpointer(workdir, every=100, keep=3)
    ckpt.install_sigterm_handler()                     # SIGTERM -> save at the next step, stop
    restored = ckpt.restore_latest(state)              # None on a fresh workdir
    if restored:
      state, extra = restored                          # extra: the JSON dict given to save()
    for ...:
      state, metrics = step(state, batch)
      if ckpt.maybe_save(int(state.step), state, {"data_position": pos, "stage": "rl"}):
        break                                          # SIGTERM received: saved, now exit

Saved per step, under `workdir/checkpoints/<step>/`: `state` (the whole `TrainState` pytree:
params, frozen params, optimizer state, step, RNG key data; orbax StandardSave) and `extra` (a
JSON dict for host-side position: data position, stage name, python RNG seeds ...). Restoring
needs a `target` state of the same structure (e.g. a freshly created one): it gives the shapes,
dtypes and shardings, so a sharded run restores onto its mesh. Saves are synchronous:
`save` returns once the step directory is complete on disk, so a SIGKILL right after loses
nothing, and a SIGKILL mid-save leaves only an uncommitted temp dir that orbax ignores.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, workdir: str | os.PathLike, every: int = 100, keep: int | None = 3,
               subdir: str = "checkpoints"):
    if every < 1:
      raise ValueError(f"checkpoint every must be >= 1, got {every}.")
    if keep is not None and keep < 1:
      raise ValueError(f"checkpoint keep must be >= 1 or None (keep all), got {keep}.")
    self.every = every
    self.directory = os.path.abspath(os.path.join(os.fspath(workdir), subdir))
    self.sigterm_received = False
    self._previous_handler = None
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False),
        item_names=("state", "extra"))

  # --- saving -----------------------------------------------------------------------------------

  def save(self, step: int, state: Any, extra: dict | None = None, *, force: bool = True) -> bool:
    """Saves `state` and the JSON-able `extra` at `step` (blocking). Returns True if saved."""
    saved = self.manager.save(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           extra=ocp.args.JsonSave(dict(extra or {}))),
        force=force)
    self.manager.wait_until_finished()
    return bool(saved)

  def maybe_save(self, step: int, state: Any, extra: dict | None = None) -> bool:
    """Saves every `every` steps, and at once after a SIGTERM. Returns True when the caller
    should stop (a SIGTERM was received; the state is saved)."""
    if self.sigterm_received:
      if self.latest_step() != int(step):
        self.save(step, state, extra)
      return True
    if int(step) % self.every == 0 and self.latest_step() != int(step):
      self.save(step, state, extra)
    return False

  def install_sigterm_handler(self) -> None:
    """SIGTERM sets a flag (a handler cannot save safely mid-step: the state may be donated);
    `maybe_save` then saves and tells the loop to stop."""
    def handler(signum, frame):
      del signum, frame
      self.sigterm_received = True
    self._previous_handler = signal.signal(signal.SIGTERM, handler)

  def uninstall_sigterm_handler(self) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  # --- restoring --------------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def restore(self, step: int, target: Any) -> tuple[Any, dict]:
    """-> (state, extra) saved at `step`; `target` gives structure, dtypes and shardings."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = self.manager.restore(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                           extra=ocp.args.JsonRestore()))
    return out.state, dict(out.extra or {})

  def restore_latest(self, target: Any) -> tuple[Any, dict] | None:
    """The newest checkpoint as (state, extra), or None if there is none."""
    step = self.latest_step()
    return None if step is None else self.restore(step, target)

  def close(self) -> None:
    self.uninstall_sigterm_handler()
    self.manager.close()
