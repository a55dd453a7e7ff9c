"""Cloud TPU slice types: chips, hosts, HBM per chip, gcloud names. Import-light (no jax).

    t = get_topology("v5p-64")   # Topology(chips=32, hosts=8, hbm_bytes=95 GiB, ...)

Naming follows gcloud's `--accelerator-type`: v4 and v5p count TensorCores (2 per chip), v5e
("v5litepod-N", alias "v5e-N") and v6e count chips. Figures from the Cloud TPU docs (system
architecture pages, 2025): HBM per chip v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e 32 GiB; 4 chips
per host, except single-host v5e / v6e slices of up to 8 chips. `cpu` means this machine's
local JAX devices (resolved by the caller, since it needs jax).
"""

from __future__ import annotations

import dataclasses
import re

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Generation:
  cores_per_chip: int          # what the number in the type name counts: 2 = TensorCores
  hbm_bytes: int               # per chip
  chips_per_host: int          # multi-host slices
  max_single_host_chips: int   # slices up to this many chips are one VM
  sizes: tuple[int, ...]       # accepted numbers in the type name; () = any multiple of 8
  max_size: int                # largest number in the type name
  accelerator_prefix: str      # gcloud --accelerator-type prefix
  runtime_version: str         # gcloud --version for JAX
  aliases: tuple[str, ...] = ()


def _powers(lo: int, hi: int) -> tuple[int, ...]:
  return tuple(1 << i for i in range(lo.bit_length() - 1, hi.bit_length()))


_SMALL = (1, 4, 8) + _powers(16, 256)
GENERATIONS: dict[str, Generation] = {
    "v4": Generation(2, 32 * GiB, 4, 4, (), 4096, "v4", "tpu-ubuntu2204-base"),
    "v5e": Generation(1, 16 * GiB, 4, 8, _SMALL, 256, "v5litepod", "v2-alpha-tpuv5-lite",
                      aliases=("v5litepod",)),
    "v5p": Generation(2, 95 * GiB, 4, 4, (), 12288, "v5p", "v2-alpha-tpuv5"),
    "v6e": Generation(1, 32 * GiB, 4, 8, _SMALL, 256, "v6e", "v2-alpha-tpuv6e"),
}


def _valid_size(gen: Generation, size: int) -> bool:
  return size in gen.sizes if gen.sizes else (size % 8 == 0 and 8 <= size <= gen.max_size)


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str                    # as the user wrote it, canonicalised ("v5p-64")
  generation: str              # "v5p" (or "cpu")
  chips: int                   # devices JAX sees (one per chip on v4+ / megacore)
  hosts: int                   # TPU VM workers = JAX processes
  hbm_bytes: int               # per chip
  accelerator_type: str = ""   # gcloud --accelerator-type ("v5litepod-16" for v5e-16)
  runtime_version: str = ""    # gcloud --version

  @property
  def total_hbm_bytes(self) -> int:
    return self.chips * self.hbm_bytes


def _generation(prefix: str) -> str | None:
  for name, gen in GENERATIONS.items():
    if prefix == name or prefix in gen.aliases:
      return name
  return None


def get_topology(name: str) -> Topology:
  """"v5p-64" / "v5e-16" / "v5litepod-16" / "v6e-8" / "v4-32" -> Topology (else ValueError)."""
  m = re.fullmatch(r"(v\d+[a-z]*(?:pod)?)-(\d+)", name.strip().lower())
  gen_name = _generation(m.group(1)) if m else None
  if gen_name is None:
    raise ValueError(f"Unknown TPU type {name!r}; expected e.g. {', '.join(known_examples())} "
                     "or 'cpu'.")
  gen, size = GENERATIONS[gen_name], int(m.group(2))
  if not _valid_size(gen, size):
    sizes = ", ".join(map(str, gen.sizes)) if gen.sizes else f"multiples of 8 up to {gen.max_size}"
    raise ValueError(f"{name!r}: {gen_name} slices come in sizes {sizes}.")
  chips = max(1, size // gen.cores_per_chip)
  hosts = 1 if chips <= gen.max_single_host_chips else chips // gen.chips_per_host
  return Topology(name=f"{gen_name}-{size}", generation=gen_name, chips=chips, hosts=hosts,
                  hbm_bytes=gen.hbm_bytes, accelerator_type=f"{gen.accelerator_prefix}-{size}",
                  runtime_version=gen.runtime_version)


def known_examples() -> list[str]:
  return ["v4-8", "v4-32", "v5e-16", "v5p-8", "v5p-64", "v6e-8", "v6e-64"]


def table() -> list[Topology]:
  """Common TPU types (powers of two), for `plan --topology=list`."""
  return [get_topology(f"{g}-{s}") for g, gen in GENERATIONS.items()
          for s in (gen.sizes or _powers(8, gen.max_size))]
