"""What this machine can do: measured matmul FLOP/s (bf16, f32) and memory bandwidth, and the
roofline time of a workload from them.

    hw = measure()                       # {"matmul_flops": {...}, "read_bytes_per_s": ..., ...}
    t = roofline_seconds(flops, bytes_moved, hw)

Best-of-N timings (the machine may be shared): the ceiling is what the hardware reached at least
once, so a fraction of roofline computed from it is conservative.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def _best_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))   # compile + warm
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def matmul_flops(dtype=jnp.bfloat16, n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of an n x n x n matmul in `dtype`."""
  a = jnp.ones((n, n), dtype)
  b = jnp.ones((n, n), dtype) * 0.5
  f = jax.jit(lambda x, y: x @ y)
  return 2.0 * n ** 3 / _best_seconds(f, a, b, repeats=repeats)


def matmul_peak_flops(n: int = 2048, dtype="bfloat16", repeats: int = 5) -> float:
  """`matmul_flops` with the dtype by name (what the train benchmark calls)."""
  return matmul_flops(jnp.dtype(dtype), n=n, repeats=repeats)


def memory_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> dict[str, float]:
  """Bytes/s: `read` (a sum over a large array: what streaming weights costs) and `copy`
  (read + write of a large array)."""
  x = jnp.ones((nbytes // 4,), jnp.float32)
  read = nbytes / _best_seconds(jax.jit(jnp.sum), x, repeats=repeats)
  copy = 2 * nbytes / _best_seconds(jax.jit(lambda y: y * 2.0), x, repeats=repeats)
  return {"read": read, "copy": copy}


def measure(repeats: int = 5) -> dict:
  flops = {name: matmul_flops(dt, repeats=repeats)
           for name, dt in (("bfloat16", jnp.bfloat16), ("float32", jnp.float32))}
  bw = memory_bandwidth(repeats=repeats)
  return {"matmul_flops": flops, "peak_flops": max(flops.values()),
          "read_bytes_per_s": bw["read"], "copy_bytes_per_s": bw["copy"],
          "devices": [str(d) for d in jax.devices()][:1], "num_devices": jax.device_count()}


def best_of(a: dict, b: dict) -> dict:
  """The higher of two measurements, field by field: measure before and after a benchmark so
  that a noisy moment during one measurement does not lower the ceiling."""
  flops = {k: max(a["matmul_flops"][k], b["matmul_flops"][k]) for k in a["matmul_flops"]}
  return {**a, "matmul_flops": flops, "peak_flops": max(flops.values()),
          "read_bytes_per_s": max(a["read_bytes_per_s"], b["read_bytes_per_s"]),
          "copy_bytes_per_s": max(a["copy_bytes_per_s"], b["copy_bytes_per_s"])}


def roofline_seconds(flops: float, bytes_moved: float, hw: dict) -> float:
  """The floor for a workload: compute-bound or memory-bound, whichever is slower."""
  return max(flops / hw["peak_flops"], bytes_moved / hw["read_bytes_per_s"])


def describe(hw: dict) -> str:
  f = hw["matmul_flops"]
  return (f"matmul bf16 {f['bfloat16'] / 1e9:.0f} GFLOP/s, f32 {f['float32'] / 1e9:.0f} GFLOP/s; "
          f"memory read {hw['read_bytes_per_s'] / 1e9:.1f} GB/s, copy "
          f"{hw['copy_bytes_per_s'] / 1e9:.1f} GB/s")
