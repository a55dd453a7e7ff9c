"""One device mesh for everything: axes (data, fsdp, tensor); -1 fills with the remaining devices.

    mesh = make_mesh(data=-1, fsdp=1, tensor=1)     # all devices on `data`
    mesh = make_mesh(data=2, fsdp=2, tensor=2)      # 8 devices

Device order: on TPU, `jax.experimental.mesh_utils` maps the axes onto the physical torus
(so each axis' collectives run over neighbouring chips); on a multi-slice job the
`data` axis spans the slices (slow DCN links carry only the gradient all-reduce). Elsewhere
(CPU, one process or several) devices keep `jax.devices()` order, which lists each process's
devices together, so host p holds the p-th block of batch rows (see `distributed.host_slice`).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # The batch is split over both data-parallel axes.


def resolve_axis_sizes(sizes: tuple[int, ...], num_devices: int) -> tuple[int, ...]:
  """Replaces one -1 by whatever makes the product equal `num_devices`."""
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {dict(zip(AXES, sizes))}.")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
    raise ValueError(f"Mesh axes {dict(zip(AXES, sizes))} do not divide {num_devices} devices.")
  out = tuple(num_devices // known if s == -1 else s for s in sizes)
  if math.prod(out) != num_devices:
    raise ValueError(f"Mesh axes {dict(zip(AXES, out))} use {math.prod(out)} devices, "
                     f"but {num_devices} are available.")
  return out


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = resolve_axis_sizes((data, fsdp, tensor), len(devices))
  return Mesh(device_grid(shape, devices), AXES)


def device_grid(shape: tuple[int, ...], devices: list) -> np.ndarray:
  """Devices arranged as `shape` (data, fsdp, tensor), topology-aware on TPU."""
  if devices[0].platform != "tpu":
    return np.asarray(devices).reshape(shape)
  num_slices = len({getattr(d, "slice_index", 0) for d in devices})
  try:
    if num_slices > 1 and shape[0] % num_slices == 0:
      ici = (shape[0] // num_slices,) + tuple(shape[1:])
      return mesh_utils.create_hybrid_device_mesh(ici, (num_slices, 1, 1), devices,
                                                  allow_split_physical_axes=True)
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    # Shapes the torus mapper cannot place: plain order is correct, only slower.
    return np.asarray(devices).reshape(shape)


def mesh_from_config(cfg) -> Mesh:
  """`cfg` has fields data, fsdp, tensor (e.g. `config.mesh`)."""
  return make_mesh(cfg.data, cfg.fsdp, cfg.tensor)


def host_devices(process_index: int) -> list:
  """The devices of one process, in `jax.devices()` order."""
  return [d for d in jax.devices() if d.process_index == process_index]


def sampling_mesh(cfg, process_index: int | None = None) -> Mesh:
  """The mesh rollouts run on. One process: the training mesh (`mesh_from_config`). Several
  (a pod slice): this host's devices only, so each host samples its own rows with no cross-host
  collectives in the decode loop (batch over `data`, params split over `tensor` when it divides
  the local device count, else replicated). The student's weights reach it on device once per
  RL step (`distributed.to_local_mesh`); the model must fit one host's devices.
  """
  if jax.process_count() == 1 and process_index is None:
    return mesh_from_config(cfg)
  devices = host_devices(jax.process_index() if process_index is None else process_index)
  return make_mesh(-1, 1, sampling_tensor(cfg.tensor, len(devices)), devices=devices)


def sampling_tensor(tensor: int, local_devices: int) -> int:
  """The `tensor` size of a host's rollout mesh: the configured one if it divides the host's
  devices, else 1 (params replicated over the host's chips)."""
  return tensor if tensor > 0 and local_devices % tensor == 0 else 1


def host_mesh_like(local: Mesh, process_index: int) -> Mesh:
  """Host `process_index`'s rollout mesh, shaped like `local` (as `sampling_mesh` builds it)."""
  shape = tuple(local.shape[a] for a in AXES)
  return Mesh(device_grid(shape, host_devices(process_index)), AXES)


def hosts_view(local_meshes: list[Mesh]) -> Mesh:
  """Every host's rollout mesh stacked into one global mesh with a leading `host` axis.

  An array sharded on it with a PartitionSpec that leaves `host` out is, on each host's devices,
  a full copy laid out like that host's mesh: `distributed.to_local_mesh` moves params there on
  device and then views this host's shards as an array on its own mesh.
  """
  grids = [m.devices for m in local_meshes]
  if len({g.shape for g in grids}) != 1:
    raise ValueError("Every host's rollout mesh must have the same shape.")
  return Mesh(np.stack(grids), ("host",) + tuple(local_meshes[0].axis_names))
