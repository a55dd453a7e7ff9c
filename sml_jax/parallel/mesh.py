"""One device mesh for everything: axes (data, fsdp, tensor); -1 fills with the remaining devices.

    mesh = make_mesh(data=-1, fsdp=1, tensor=1)     # all devices on `data`
    mesh = make_mesh(data=2, fsdp=2, tensor=2)      # 8 devices
"""

from __future__ import annotations

import math

import jax
import numpy as np
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
  return Mesh(np.asarray(devices).reshape(shape), AXES)


def mesh_from_config(cfg) -> Mesh:
  """`cfg` has fields data, fsdp, tensor (e.g. `config.mesh`)."""
  return make_mesh(cfg.data, cfg.fsdp, cfg.tensor)
