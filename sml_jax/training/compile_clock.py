"""Seconds spent tracing, lowering and compiling XLA programs (this process), from JAX's
monitoring events; the training rows' `time_compile_s` (a new batch shape compiles a new step).

    t0 = compile_clock.seconds()
    state, metrics = ...                         # anything that may compile
    compiled_s = compile_clock.seconds() - t0

It counts every thread's compiles, and reads JAX's event names (`EVENTS`, jax 0.12): were they
renamed, it would read 0 (tests/test_micro_batches.py checks that it does not).
"""

from __future__ import annotations

import threading

from jax import monitoring

# The three phases of a compile: jaxpr trace, lowering to MLIR, XLA backend compile.
EVENTS = frozenset({"/jax/core/compile/jaxpr_trace_duration",
                    "/jax/core/compile/jaxpr_to_mlir_module_duration",
                    "/jax/core/compile/backend_compile_duration"})

_lock = threading.Lock()
_total = 0.0
_registered = False


def _listen(event: str, duration: float, **_) -> None:
  global _total
  if event in EVENTS:
    with _lock:
      _total += duration


def seconds() -> float:
  """Total compile seconds since the first call (the listener is registered then)."""
  global _registered
  with _lock:
    if not _registered:
      monitoring.register_event_duration_secs_listener(_listen)
      _registered = True
    return _total
