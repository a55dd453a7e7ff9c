"""Multi-host (multi-controller) JAX: start the distributed runtime, give each host its data slice.

Every host runs the same program (`python -m sml_jax.main ...` on all TPU VM workers). Before any
other JAX call:

    distributed.maybe_initialize()           # no-op on one process; idempotent

Where the process layout comes from, first match wins:
  1. arguments, else the env vars JAX_COORDINATOR_ADDRESS ("host:port" of process 0),
     JAX_NUM_PROCESSES and JAX_PROCESS_ID (all three, or none); JAX_NUM_PROCESSES=1 is a no-op;
  2. SML_JAX_DISTRIBUTED=auto (the TPU launcher sets it on multi-worker slices):
     `jax.distributed.initialize()` with no arguments, which reads the Cloud TPU metadata;
  3. otherwise a cluster JAX can detect by itself (Cloud TPU VM with several workers, Slurm,
     Open MPI) that reports more than one process. SML_JAX_DISTRIBUTED=off disables 2 and 3.

Data: each host builds only the rows its devices hold, then assembles the global batch:

    mine = host_slice(problems)                   # contiguous block of this host
    batch = global_batch(local_batch, mesh)       # jax.Arrays sharded over ("data", "fsdp")
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Mapping, Sequence, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from sml_jax.parallel import mesh as mesh_lib
from sml_jax.parallel import rules

T = TypeVar("T")
B = TypeVar("B")
ENV_ADDRESS, ENV_NUM, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
ENV_MODE = "SML_JAX_DISTRIBUTED"  # "auto" | "off" | unset


def explicit_layout(coordinator_address: str | None = None, num_processes: int | None = None,
                    process_id: int | None = None,
                    environ: Mapping[str, str] | None = None) -> tuple[str, int, int] | None:
  """(address, num_processes, process_id) from the arguments, else the env vars; None if neither
  gives any. Raises ValueError when only some are given or they are inconsistent."""
  env = os.environ if environ is None else environ
  address = coordinator_address or env.get(ENV_ADDRESS) or None
  num = num_processes if num_processes is not None else _int_env(env, ENV_NUM)
  pid = process_id if process_id is not None else _int_env(env, ENV_ID)
  given = {ENV_ADDRESS: address, ENV_NUM: num, ENV_ID: pid}
  if all(v is None for v in given.values()):
    return None
  if num == 1 and pid in (None, 0):
    return (address or "", 1, 0)
  missing = [k for k, v in given.items() if v is None]
  if missing:
    raise ValueError(f"Multi-process JAX needs {ENV_ADDRESS}, {ENV_NUM} and {ENV_ID} (or the "
                     f"matching arguments); missing: {', '.join(missing)}.")
  if num < 1 or not 0 <= pid < num:
    raise ValueError(f"Need {ENV_NUM} >= 1 and 0 <= {ENV_ID} < {ENV_NUM}, got {num} and {pid}.")
  if ":" not in address:
    raise ValueError(f"{ENV_ADDRESS} must be host:port, got {address!r}.")
  return address, num, pid


def _int_env(env: Mapping[str, str], key: str) -> int | None:
  value = env.get(key)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{key} must be an integer, got {value!r}.") from None


def _detected_cluster_processes() -> int:
  """Process count of a cluster JAX detects itself (Cloud TPU VM, Slurm, MPI), else 1.

  Uses JAX's own detectors (a private module, hence the broad fallback): on a machine that is not
  a TPU VM the TPU detector only reads /sys, it does not query the metadata server.
  """
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    for env in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
      if not env.opt_in_only_method and env.is_env_present():
        return int(env.get_process_count())
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("Cluster auto-detection failed (%s); running single-process.", e)
  return 1


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, *, environ: Mapping[str, str] | None = None,
                     initialization_timeout: int = 300) -> bool:
  """Initializes `jax.distributed` when this is one of several processes; see the module doc.

  Returns True if the distributed runtime is (now or already) initialized, False for a single
  process. Call it before any other JAX computation (JAX fixes its devices at first use).
  """
  if jax.distributed.is_initialized():
    return True
  env = os.environ if environ is None else environ
  layout = explicit_layout(coordinator_address, num_processes, process_id, env)
  if layout is not None:
    address, num, pid = layout
    if num == 1:
      return False
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid,
                               initialization_timeout=initialization_timeout)
    return True
  mode = env.get(ENV_MODE, "").strip().lower()
  if mode not in ("", "auto", "off"):
    raise ValueError(f"{ENV_MODE} must be 'auto', 'off' or unset, got {mode!r}.")
  if mode == "off" or (mode == "" and _detected_cluster_processes() <= 1):
    return False
  jax.distributed.initialize(initialization_timeout=initialization_timeout)
  return True


def host_slice(items: Sequence[T], process_index: int | None = None,
               process_count: int | None = None) -> Sequence[T]:
  """This host's contiguous block of `items` (deterministic: depends only on len(items) and the
  two integers; defaults: `jax.process_index()` / `jax.process_count()`).

  Host p gets items[start_p : start_{p+1}] with the blocks of `np.array_split` (the first
  len % count hosts get one extra). Contiguous blocks match how `global_batch` lays rows out:
  `jax.devices()` lists each process's devices together, so the mesh's batch axes give host p
  the p-th block of rows. For a batch that must be evenly split, pass a multiple of the count.

      host_slice(range(10), 1, 4) -> range(3, 6)
  """
  start, stop = host_range(len(items), process_index, process_count)
  return items[start:stop]


def host_range(n: int, process_index: int | None = None,
               process_count: int | None = None) -> tuple[int, int]:
  """[start, stop) of this host's block of n items (the block `host_slice` returns)."""
  if process_index is None or process_count is None:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"host_range needs 0 <= process_index < process_count, got {process_index} "
                     f"and {process_count}.")
  base, extra = divmod(n, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (process_index < extra)


def global_batch(local_batch: B, mesh) -> B:
  """Per-host numpy rows -> global jax.Arrays, batch dim sharded like `rules.batch_sharding`.

  local_batch: a pytree (e.g. a `training.batching.Batch`) of [B / process_count, ...] arrays
  (this host's `host_slice` of the global batch, same shapes on every host). Returns the same
  pytree of jax.Array [B, ...]. On one process it is just a sharded `device_put`.
  """
  return jax.tree.map(
      lambda v: jax.make_array_from_process_local_data(rules.batch_sharding(mesh, v.ndim), v),
      local_batch)


def sync(name: str) -> None:
  """Barrier across hosts (no-op on one process), e.g. before reading files another host wrote."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def is_primary() -> bool:
  """Process 0 writes the workdir's shared files (metrics, transcripts, evals, report)."""
  return jax.process_index() == 0


def allgather_rows(row) -> np.ndarray:
  """A small int/float vector from every host -> [process_count, len(row)] (process order)."""
  row = np.asarray(row).reshape(1, -1)
  if jax.process_count() == 1:
    return row
  return np.asarray(multihost_utils.process_allgather(row, tiled=True))


def gather_json(items: Sequence[Any]) -> list[Any]:
  """Every host's list of JSON-able items -> one list, hosts in process order, on every host
  (e.g. the transcripts of each host's conversations)."""
  if jax.process_count() == 1:
    return list(items)
  data = np.frombuffer(json.dumps(list(items)).encode(), np.uint8)
  size = int(allgather_rows([data.size]).max())
  padded = np.zeros((1, size), np.uint8)
  padded[0, :data.size] = data
  every = np.asarray(multihost_utils.process_allgather(padded, tiled=True))
  out = []
  for blob in every:   # JSON never contains NUL bytes: the padding is the zeros at the end.
    out.extend(json.loads(bytes(blob).rstrip(b"\0").decode()))
  return out


def broadcast_json(item: Any) -> Any:
  """Process 0's JSON-able `item` on every host (e.g. what it read from the shared workdir, so
  that every host decides the same way: a file another host cannot see yet never splits them)."""
  if jax.process_count() == 1:
    return item
  data = np.frombuffer(json.dumps(item).encode(), np.uint8) if is_primary() else np.zeros(0, np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.asarray(data.size, np.int32)))
  padded = np.zeros(size, np.uint8)
  padded[:data.size] = data
  blob = np.asarray(multihost_utils.broadcast_one_to_all(padded))
  return json.loads(bytes(blob).decode())


def to_local_mesh(tree, local_mesh, dtype=None, *, view=None):
  """Params on the training mesh -> a full copy on this host's `local_mesh`, laid out by the rules
  table (and cast to `dtype`): each host then samples on its own devices with no cross-host
  traffic.

  On device: the arrays are resharded onto `view` (`mesh.hosts_view` of every host's rollout
  mesh; default: built from the processes' devices) with the local mesh's PartitionSpecs, i.e.
  replicated over hosts (device-to-device collectives), and this host's shards are then viewed
  as arrays on `local_mesh` (no copy). Nothing goes through host memory. One process (and no
  `view`): `place` on the same devices. LoRA callers move only the factors.
  """
  if view is None and jax.process_count() == 1:
    return place(tree, local_mesh, dtype)
  if view is None:
    view = mesh_lib.hosts_view([mesh_lib.host_mesh_like(local_mesh, p)
                                for p in range(jax.process_count())])
  specs = jax.tree.map(lambda s: s.spec, rules.param_shardings(tree, local_mesh))
  moved = jax.tree.map(lambda x, s: _reshard(x, NamedSharding(view, s)), _cast(tree, dtype), specs)
  mine = set(local_mesh.devices.flat)
  return jax.tree.map(
      lambda g, s: jax.make_array_from_single_device_arrays(
          g.shape, NamedSharding(local_mesh, s),
          [sh.data for sh in g.addressable_shards if sh.device in mine]), moved, specs)


def place(tree, mesh, dtype=None):
  """`tree` cast to `dtype` (None: kept) and laid out on `mesh` by the rules table; the inputs
  may be sharded any way over the same devices (a no-op for leaves already placed so)."""
  return jax.tree.map(_reshard, _cast(tree, dtype), rules.param_shardings(tree, mesh))


def _reshard(x, sharding):
  """x -> `sharding` on device. Same device order: a jit with `out_shardings` (a plain
  device_put between two shardings of one device list takes a path through host memory);
  another order: device_put, which reorders shards on device."""
  if x.sharding == sharding:
    return x
  if list(x.sharding._device_assignment) == list(sharding._device_assignment):  # pylint: disable=protected-access
    return _identity(sharding)(x)
  return jax.device_put(x, sharding)


@functools.lru_cache(maxsize=None)
def _identity(sharding):
  return jax.jit(lambda x: x, out_shardings=sharding)


def _cast(tree, dtype):
  return tree if dtype is None else jax.tree.map(lambda x: x.astype(dtype), tree)
