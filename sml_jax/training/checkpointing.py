"""Checkpoints with orbax `CheckpointManager`: every N steps, keep K, save on SIGTERM, exact resume.

    ckpt = Checkpointer(workdir, every=100, keep=3)
    ckpt.install_sigterm_handler()                     # SIGTERM (any host) -> save, stop
    restored = ckpt.restore_latest(state)              # None on a fresh workdir
    if restored:
      state, extra = restored                          # extra: the JSON dict given to save()
    for ...:
      state, metrics = step(state, batch)
      if ckpt.maybe_save(int(state.step), state, {"data_position": pos, "stage": "rl"}):
        break                                          # SIGTERM received: saved, now exit

`workdir` may be local or `gs://bucket/dir`: every host writes its own shards there (orbax /
tensorstore), so on several hosts it must be shared storage (a bucket). Saved per step, under
`workdir/checkpoints/<step>/`: `state` (the whole `TrainState` pytree:
params, frozen params, optimizer state, step, RNG key data; orbax StandardSave) and `extra` (a
JSON dict for host-side position: data position, stage name, python RNG seeds ...). Restoring
needs a `target` state of the same structure (e.g. a freshly created one): it gives the shapes,
dtypes and shardings, so a sharded run restores onto its mesh. Saves are synchronous:
`save` returns once the step directory is complete on disk, so a SIGKILL right after loses
nothing, and a SIGKILL mid-save leaves only an uncommitted temp dir that orbax ignores.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from sml_jax import paths
from sml_jax.parallel import preemption


class Checkpointer:
  def __init__(self, workdir: str | os.PathLike, every: int = 100, keep: int | None = 3,
               subdir: str = "checkpoints"):
    if every < 1:
      raise ValueError(f"checkpoint every must be >= 1, got {every}.")
    if keep is not None and keep < 1:
      raise ValueError(f"checkpoint keep must be >= 1 or None (keep all), got {keep}.")
    self.every = every
    self.directory = paths.resolve(paths.join(workdir, subdir))
    self.preemption = preemption.Watch()
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
    """Saves every `every` steps, and at once after a preemption notice on any host. Returns
    True when the caller should stop (preempted; the state is saved). On several hosts every
    host must call it at the same point (the decision is a collective, `preemption.Watch.agree`)."""
    if self.preemption.agree():
      self.save_if_new(step, state, extra)
      return True
    if int(step) % self.every == 0:
      self.save_if_new(step, state, extra)
    return False

  def save_if_new(self, step: int, state: Any, extra: dict | None = None) -> None:
    """Saves unless the newest checkpoint already is `step` (e.g. saved at the end of an
    iteration, then preempted before the next one changed anything)."""
    if self.latest_step() != int(step):
      self.save(step, state, extra)

  def install_sigterm_handler(self) -> None:
    """One process: SIGTERM sets a flag (a handler cannot save safely mid-step: the state may be
    donated). Several: JAX's preemption service hears it. Either way `maybe_save` (between steps)
    and `preemption.check()` (inside rollouts) see the notice; see `parallel/preemption.py`."""
    self.preemption.install()

  def uninstall_sigterm_handler(self) -> None:
    self.preemption.uninstall()

  @property
  def sigterm_received(self) -> bool:
    return self.preemption.notice()

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
