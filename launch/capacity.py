"""How the launcher gets a TPU slice: a TPU VM (`tpu-vm create`, on demand or `--spot`) or a queued
resource (`queued-resources create`, how v5p / v6e capacity is usually obtained), and the gcloud
commands to look at it, create it, start it, and delete it after a preemption.

    cap = Capacity(kind="queued", gcloud="gcloud", name="sml-v5p-64", zone=..., project=...,
                   accelerator_type="v5p-64", runtime_version="v2-alpha-tpuv5", spot=True)
    cap.describe().argv        # prints the state: READY / PREEMPTED ... or ACTIVE / SUSPENDED ...
    cap.create(), cap.delete(), cap.start()
    provision(cap, ...)        # reuse / start / create, then wait until ready
    supervise(cap, ...)        # after a preemption: delete, create again, redeploy

Import-light (no jax): the launcher runs wherever gcloud does.
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import time
from typing import Callable

KINDS = ("tpu_vm", "queued")


@dataclasses.dataclass(frozen=True)
class Step:
  what: str
  argv: tuple[str, ...]
  when: str = ""                   # a condition, for the printout ("if no TPU VM exists")

  def shell(self) -> str:
    return shlex.join(self.argv)


@dataclasses.dataclass(frozen=True)
class Capacity:
  kind: str                        # "tpu_vm" | "queued"
  gcloud: str
  name: str                        # the TPU VM (node); a queued resource of the same name holds it
  zone: str
  project: str | None
  accelerator_type: str
  runtime_version: str
  spot: bool

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"capacity kind must be one of {KINDS}, got {self.kind!r}.")

  # States, as `describe --format=value(state[.state])` prints them.
  @property
  def ready_states(self) -> tuple[str, ...]:
    return ("ACTIVE",) if self.kind == "queued" else ("READY",)

  @property
  def waiting_states(self) -> tuple[str, ...]:
    """Being provisioned (or stopping): poll again."""
    if self.kind == "queued":
      return ("ACCEPTED", "PROVISIONING", "WAITING_FOR_RESOURCES", "CREATING", "SUSPENDING")
    return ("CREATING", "STARTING", "RESTARTING", "REPAIRING", "STOPPING")

  @property
  def lost_states(self) -> tuple[str, ...]:
    """Preempted or failed: delete and create again (the run resumes from its workdir)."""
    if self.kind == "queued":
      return ("SUSPENDED", "FAILED")
    return ("PREEMPTED", "TERMINATED")

  def _tail(self) -> tuple[str, ...]:
    return (f"--zone={self.zone}",) + ((f"--project={self.project}",) if self.project else ())

  def tpu_vm(self, *args: str) -> tuple[str, ...]:
    """`gcloud compute tpus tpu-vm <args> --zone=Z [--project=P]` (ssh / scp go to the node)."""
    return (self.gcloud, "compute", "tpus", "tpu-vm") + args + self._tail()

  def _queued(self, *args: str) -> tuple[str, ...]:
    return (self.gcloud, "compute", "tpus", "queued-resources") + args + self._tail()

  def describe(self) -> Step:
    if self.kind == "queued":
      return Step("look for the queued resource", self._queued(
          "describe", self.name, "--format=value(state.state)"))
    return Step("look for an existing TPU VM", self.tpu_vm(
        "describe", self.name, "--format=value(state)"))

  def create(self, when: str = "if describe finds none") -> Step:
    spot = ("--spot",) if self.spot else ()
    if self.kind == "queued":
      return Step("queue a request for the slice (it becomes ACTIVE when capacity is granted)",
                  self._queued("create", self.name, f"--node-id={self.name}",
                               f"--accelerator-type={self.accelerator_type}",
                               f"--runtime-version={self.runtime_version}", *spot), when=when)
    return Step("create the TPU VM", self.tpu_vm(
        "create", self.name, f"--accelerator-type={self.accelerator_type}",
        f"--version={self.runtime_version}", *spot), when=when)

  def start(self) -> Step | None:
    """Restarts a STOPPED TPU VM (queued resources have no stopped state)."""
    if self.kind == "queued":
      return None
    return Step("start the stopped TPU VM", self.tpu_vm("start", self.name),
                when="if describe says STOPPED")

  def delete(self, when: str = "") -> Step:
    if self.kind == "queued":   # --force also deletes the node it holds.
      return Step("delete the queued resource and its slice",
                  self._queued("delete", self.name, "--force", "--quiet"), when=when)
    return Step("delete the TPU VM", self.tpu_vm("delete", self.name, "--quiet"), when=when)


# --- at run time ----------------------------------------------------------------------------------


def print_step(step: Step) -> None:
  print(f"# {step.what}" + (f" ({step.when})" if step.when else ""))
  print(step.shell(), flush=True)


def run_step(step: Step) -> None:
  print_step(step)
  subprocess.run(step.argv, check=True)


def current_state(cap: Capacity) -> str | None:
  """The slice's state, None when it does not exist; raises on any other gcloud failure."""
  step = cap.describe()
  print_step(step)
  found = subprocess.run(step.argv, capture_output=True, text=True)
  if found.returncode == 0:
    return found.stdout.strip()
  if "not found" in found.stderr.lower().replace("_", " "):
    return None
  raise RuntimeError(f"'{step.shell()}' failed (not a missing slice: auth? project? zone?):\n"
                     f"{found.stderr.strip()}")


def wait_ready(cap: Capacity, poll_seconds: float) -> None:
  """Polls until the slice is ready (a queued resource may wait long for capacity)."""
  last = None
  while True:
    state = current_state(cap)
    if state in cap.ready_states:
      return
    if state is None or state not in cap.waiting_states:
      raise RuntimeError(f"{cap.name} is {state or 'gone'} while waiting for it to be ready.")
    if state != last:
      print(f"# {cap.name} is {state}; waiting (every {poll_seconds:g} s)", flush=True)
      last = state
    time.sleep(poll_seconds)


def provision(cap: Capacity, *, recreate_lost: bool, poll_seconds: float) -> None:
  """Reuses the slice if ready, starts it if stopped, creates it if missing; with
  `recreate_lost`, a preempted one is deleted and created again. Returns once it is ready."""
  state = current_state(cap)
  if state is None:
    run_step(cap.create())
  elif state == "STOPPED" and cap.start() is not None:
    run_step(cap.start())
  elif state in cap.ready_states:
    print(f"# reusing {cap.name} ({state})", flush=True)
  elif recreate_lost and state in cap.lost_states:
    run_step(cap.delete(when=f"it is {state}"))
    run_step(cap.create(when="again"))
  elif state not in cap.waiting_states:
    raise RuntimeError(f"{cap.name} is {state}; wait, or delete it ('{cap.delete().shell()}') "
                       "and launch again (or launch with --spot / --queued_resource, which "
                       "recreate a preempted slice).")
  wait_ready(cap, poll_seconds)


def supervise(cap: Capacity, *, finished: Callable[[], bool], deploy: Callable[[], None],
              poll_seconds: float, max_restarts: int) -> int:
  """Until `finished()`: every `poll_seconds` looks at the slice; when it was preempted (or is
  gone), deletes it, creates it again, waits until it is ready and calls `deploy()` (the run
  resumes from its workdir). Returns the number of restarts."""
  restarts = 0
  while True:
    time.sleep(poll_seconds)
    if finished():
      print("# the run has finished", flush=True)
      return restarts
    state = current_state(cap)
    if state in cap.ready_states or state in cap.waiting_states:
      continue
    if state is not None and state not in cap.lost_states:
      raise RuntimeError(f"{cap.name} is {state}: not a state the launcher recovers from.")
    restarts += 1
    if restarts > max_restarts:
      raise RuntimeError(f"{cap.name} was lost {restarts} times (--max_restarts={max_restarts}).")
    print(f"# {cap.name} is {state or 'gone'}: recreating it ({restarts}/{max_restarts})",
          flush=True)
    if state is not None:
      run_step(cap.delete(when=f"it is {state}"))
    run_step(cap.create(when="again"))
    wait_ready(cap, poll_seconds)
    deploy()
