"""Preemption: a notice (SIGTERM) on any host stops every host within seconds, at one point.

    watch = preemption.Watch()
    watch.install()
    ...                                      # inside a rollout loop, after every turn:
    watch.check()                            # raises Preempted when any host has a notice
    ...                                      # once per iteration (eval batch), on every host:
    if watch.agree(aborted):                 # a collective: the same answer on every host
      save; exit

One process: a SIGTERM handler sets a flag. Several processes (`jax.distributed`): JAX's
preemption service owns SIGTERM (its C++ notifier; a Python handler would replace it and the
other hosts would never hear of the notice). The host that gets the signal publishes the notice
in the coordination service within about a second; every host reads it there (`notice`, one
small RPC to the coordinator), so a rollout on any host stops at its next turn, not at the end
of the iteration. `agree` then makes the decision common: an all-gather of each host's view,
OR-ed with orbax's cross-host preemption sync (`multihost.reached_preemption`, called with a
counter every host advances in step). A host that finished its rollouts early waits in that
collective; the others join it as soon as they see the notice.
"""

from __future__ import annotations

import signal

import jax
import numpy as np

# Where JAX's preemption sync manager (xla/tsl preemption_sync_manager.cc) publishes a notice.
NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"


class Preempted(Exception):
  """Raised inside a rollout when a host received a preemption notice."""


def _client():
  """The coordination-service client of a multi-process run (None on one process)."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


class Watch:
  """This process's view of preemption notices, and the cross-host decision."""

  def __init__(self):
    self.sigterm_received = False
    self._previous = None
    self._counter = 0          # agree() calls so far: the same on every host (collective).
    self._seen = False

  @property
  def multi_process(self) -> bool:
    return jax.process_count() > 1 and _client() is not None

  def install(self) -> None:
    """One process: SIGTERM sets a flag. Several: nothing (JAX's notifier owns SIGTERM)."""
    if self.multi_process or self._previous is not None:
      return

    def handler(signum, frame):
      del signum, frame
      self.sigterm_received = True
    self._previous = signal.signal(signal.SIGTERM, handler)

  def uninstall(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def notice(self) -> bool:
    """Whether this process knows of a notice on any host (local: no collective)."""
    if self._seen or self.sigterm_received:
      return True
    if self.multi_process:
      try:
        _client().key_value_try_get(NOTICE_KEY)
        self._seen = True
      except Exception:  # pylint: disable=broad-except
        pass             # NOT_FOUND: no notice yet.
    return self._seen

  def check(self) -> None:
    """Raises `Preempted` when a notice is known (call it inside long loops)."""
    if self.notice():
      raise Preempted()

  def agree(self, local: bool = False) -> bool:
    """Collective (every host calls it at the same point): True on every host when any host
    saw a notice (or `local` is True on any host) or orbax's preemption sync point is reached."""
    self._counter += 1
    mine = bool(local) or self.notice()
    if not self.multi_process:
      return mine
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top
    mine = multihost.reached_preemption(self._counter) or mine
    every = multihost_utils.process_allgather(np.asarray([mine], np.int32), tiled=True)
    return bool(np.asarray(every).any())
